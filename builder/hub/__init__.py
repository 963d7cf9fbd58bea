"""Enrollment hub: the HTTPS service nodes trade a one-time token with for a WireGuard peer.

Modules: ``config`` (hub.json and the hub's one set of defaults), ``pki`` (CA + server cert
for ``hub init``), ``tokens`` (enrollment tokens, node secrets, rate limits), ``store``
(SQLite WAL, the source of truth: schema, tokens, pool, approve/revoke) with ``enroll``
(the enrollment rules), ``writer`` (the single writer: batches into SQLite, peers onto the
interface), ``wg`` (the hub interface via ``wg``/``ip``), ``provider`` (kubeadm join
material), ``wire`` (what the API accepts), ``metrics``, ``dispatch`` (the server's link
to the writer), ``server`` (an asyncio HTTP/1.1 server for a hostile network), ``api``
(the routes). Imports nothing from the rest of ``builder`` but errors/run/fsutil.
"""
