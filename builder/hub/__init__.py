"""Enrollment hub: the HTTPS service nodes trade a one-time token with for a WireGuard peer.

Modules: ``config`` (hub.json), ``pki`` (CA + server cert for ``hub init``), ``tokens``
(enrollment tokens, node secrets, rate limits), ``store`` (SQLite WAL, the source of truth),
``wg`` (the hub interface via ``wg``/``ip``), ``provider`` (kubeadm join material), ``api``
(the HTTPS server). Imports nothing from the rest of ``builder`` but errors/run/fsutil.
"""
