"""hub.json ``store``: sqlite by default, etcd with endpoints; bad values name file and key."""

from __future__ import annotations

import json

import pytest

from builder.errors import ValidationError
from builder.hub import config as hub_config


def load(tmp_path, store):
    p = tmp_path / "hub.json"
    raw = {"join": {"token": "abcdef.0123456789abcdef"}}
    p.write_text(json.dumps({**raw, "store": store} if store is not None else raw))
    return p, hub_config.load(p)


def test_default_is_sqlite(tmp_path):
    _, cfg = load(tmp_path, None)
    assert cfg.store.kind == "sqlite"


def test_etcd_store_with_tls_paths_relative_to_the_config(tmp_path):
    _, cfg = load(
        tmp_path,
        {
            "kind": "etcd",
            "endpoints": ["https://10.0.0.1:2379", "https://10.0.0.2:2379"],
            "tls": {"ca": "etcd-ca.pem", "cert": "/etc/etcd/c.pem", "key": "k.pem"},
            "prefix": "/x/hub/",
            "name": "cp1",
        },
    )
    s = cfg.store
    assert s.kind == "etcd" and len(s.endpoints) == 2 and s.prefix == "/x/hub"
    assert s.ca == tmp_path / "etcd-ca.pem" and str(s.cert) == "/etc/etcd/c.pem"
    assert s.name == "cp1"


@pytest.mark.parametrize(
    ("store", "key"),
    [
        ({"kind": "zookeeper"}, "store.kind"),
        ({"kind": "etcd"}, "store.endpoints"),
        ({"kind": "etcd", "endpoints": ["10.0.0.1:2379"]}, "store.endpoints"),
        ({"kind": "etcd", "endpoints": ["http://a:1"], "tls": "yes"}, "store.tls"),
        ({"kind": "etcd", "endpoints": ["http://a:1"], "prefix": ""}, "store.prefix"),
        ("etcd", "store.kind"),
    ],
)
def test_bad_store_names_file_and_key(tmp_path, store, key):
    p = tmp_path / "hub.json"
    p.write_text(json.dumps({"store": store}))
    with pytest.raises(ValidationError) as e:
        hub_config.load(p)
    assert f"{p}: {key}:" in str(e.value)
