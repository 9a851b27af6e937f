"""The management HTTP API with a real HTTP client (urllib) against the real binary: authentication
and tags, the read endpoints with RabbitMQ 3.10's shapes, `%2F`, pagination, health checks, Warren's
plugin listing. The expected fields are those a RabbitMQ 3.10.8 node (Debian's rabbitmq-server with
rabbitmq_management) answered for the same requests, noted per test."""
import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request

import pika
import pytest

from conftest import EXTERNAL, Broker, PLUGINS

pytestmark = pytest.mark.skipif(bool(EXTERNAL), reason="needs a Warren it starts")


def call(broker, path, user="guest", password="guest", method="GET", auth=True, body=None, headers=None):
    """(status, headers, parsed JSON body or None) of one request; `body` is sent as JSON (bytes as
    they are)."""
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(f"http://127.0.0.1:{broker.mgmt_port}{path}", data=data, method=method)
    if auth:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    if data is not None:
        req.add_header("content-type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
            return r.status, r.headers, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, e.headers, json.loads(raw) if raw else None


CONFIG = """
vhosts = ["/", "other"]
definitions = "DEFS"

[[users]]
name = "guest"
password = "guest"
tags = ["administrator"]

[[users]]
name = "viewer"
password = "v"
tags = ["management"]
limits = { max-connections = 10 }

[[users]]
name = "rules"
password = "r"
tags = ["policymaker"]

[[users]]
name = "plain"
password = "p"
tags = []

[[permissions]]
user = "guest"
vhost = "/"
configure = ".*"
write = ".*"
read = ".*"

[[permissions]]
user = "guest"
vhost = "other"
configure = ".*"
write = ".*"
read = ".*"

[[permissions]]
user = "viewer"
vhost = "other"
configure = ".*"
write = ".*"
read = ".*"

[[permissions]]
user = "rules"
vhost = "other"
configure = ""
write = ""
read = "^r"

[[policies]]
name = "ttl"
vhost = "/"
pattern = "^t"
apply-to = "queues"
priority = 1
definition = { message-ttl = 5 }

[[policies]]
name = "cap"
vhost = "other"
pattern = ".*"
apply-to = "all"
definition = { max-length = 100 }
"""


@pytest.fixture(scope="module")
def mgmt(tmp_path_factory):
    plugin_dir = tmp_path_factory.mktemp("mgmt-plugins")
    src = PLUGINS / "x_consistent_hash.wasm"
    assert src.exists(), f"{src} missing: run `cargo test` (it builds plugins/)"
    (plugin_dir / "x_consistent_hash.wasm").write_bytes(src.read_bytes())
    tmp = tmp_path_factory.mktemp("mgmt")
    # vhost limits come from definitions (RabbitMQ's vhost-limits runtime parameter).
    defs = tmp / "limits.json"
    defs.write_text(json.dumps({"parameters": [
        {"vhost": "other", "component": "vhost-limits", "name": "limits", "value": {"max-queues": 50}}]}))
    b = Broker(CONFIG.replace("DEFS", str(defs)), tmp, plugin_dir=plugin_dir)
    # Plugins load in the background; a declare of the type waits for them.
    conn = b.connect()
    conn.channel().exchange_declare("warm-up", "x-consistent-hash", auto_delete=True)
    conn.close()
    yield b
    if b.proc.poll() is None:
        b.stop()


def test_authentication_and_tags(mgmt):
    # RabbitMQ 3.10.8: no credentials → 401, empty body, the Basic challenge.
    status, headers, body = call(mgmt, "/api/overview", auth=False)
    assert (status, body) == (401, None)
    assert headers["WWW-Authenticate"] == 'Basic realm="RabbitMQ Management"'
    # A wrong password → 401 {"error":"not_authorized","reason":"Login failed"}.
    status, headers, body = call(mgmt, "/api/overview", password="nope")
    assert (status, body) == (401, {"error": "not_authorized", "reason": "Login failed"})
    assert "WWW-Authenticate" in headers
    # A user without a management tag is refused.
    status, _, body = call(mgmt, "/api/overview", user="plain", password="p")
    assert (status, body) == (401, {"error": "not_authorized", "reason": "Not management user"})
    # whoami: {"name":"guest","tags":["administrator"]}.
    status, _, body = call(mgmt, "/api/whoami")
    assert (status, body) == (200, {"name": "guest", "tags": ["administrator"]})
    assert call(mgmt, "/api/whoami", user="viewer", password="v")[2] == {"name": "viewer", "tags": ["management"]}
    # Node and plugin listings need monitoring or administrator.
    status, _, body = call(mgmt, "/api/nodes", user="viewer", password="v")
    assert (status, body["reason"]) == (401, "Not monitor user")
    status, _, body = call(mgmt, "/api/warren/plugins", user="viewer", password="v")
    assert status == 401


def test_overview_and_nodes(mgmt):
    status, _, o = call(mgmt, "/api/overview")
    assert status == 200
    for key in ["management_version", "rabbitmq_version", "product_name", "product_version",
                "cluster_name", "exchange_types", "listeners", "message_stats", "queue_totals",
                "object_totals", "node"]:
        assert key in o, key
    assert o["product_name"] == "Warren"
    assert set(o["object_totals"]) >= {"connections", "consumers", "exchanges", "queues"}
    types = {t["name"] for t in o["exchange_types"]}
    assert {"direct", "fanout", "headers", "topic", "x-consistent-hash"} <= types
    amqp = [l for l in o["listeners"] if l["protocol"] == "amqp"]
    assert amqp and amqp[0]["port"] == mgmt.port and amqp[0]["node"] == o["node"]
    assert any(l["protocol"] == "http" and l["port"] == mgmt.mgmt_port for l in o["listeners"])
    status, _, nodes = call(mgmt, "/api/nodes")
    assert status == 200 and len(nodes) == 1
    node = nodes[0]
    assert node["name"] == o["node"] and node["name"].startswith("warren@")
    assert node["running"] is True and node["mem_alarm"] is False and node["disk_free_alarm"] is False
    assert node["mem_used"] > 1_000_000 and node["mem_limit"] > node["mem_used"]
    assert call(mgmt, f"/api/nodes/{node['name']}")[2]["name"] == node["name"]
    assert call(mgmt, "/api/nodes/rabbit@nowhere")[0] == 404


def test_queues_with_counts_and_the_default_vhost_as_percent_2f(mgmt):
    conn = mgmt.connect()
    ch = conn.channel()
    ch.queue_declare("mq1", durable=True, arguments={"x-max-length": 10})
    for i in range(3):
        ch.basic_publish("", "mq1", b"m")
    ch.basic_qos(prefetch_count=1)
    method, _, _ = next(ch.consume("mq1", auto_ack=False, inactivity_timeout=5))
    assert method is not None  # one delivery now unacked
    status, _, q = call(mgmt, "/api/queues/%2F/mq1")
    assert status == 200
    # RabbitMQ 3.10.8's queue object (GET /api/queues/%2F/q1 after a PUT with x-max-length 10).
    for key in ["name", "vhost", "type", "durable", "auto_delete", "exclusive", "arguments", "node"]:
        assert key in q, key
    assert (q["name"], q["vhost"], q["type"], q["durable"], q["auto_delete"], q["exclusive"]) == \
        ("mq1", "/", "classic", True, False, False)
    assert q["arguments"] == {"x-max-length": 10}
    assert (q["messages"], q["messages_ready"], q["messages_unacknowledged"], q["consumers"]) == (3, 2, 1, 1)
    assert any(x["name"] == "mq1" for x in call(mgmt, "/api/queues")[2])
    assert any(x["name"] == "mq1" for x in call(mgmt, "/api/queues/%2F")[2])
    # Not found: RabbitMQ's {"error":"Object Not Found","reason":"Not Found"}.
    status, _, body = call(mgmt, "/api/queues/%2F/nope")
    assert (status, body) == (404, {"error": "Object Not Found", "reason": "Not Found"})
    assert call(mgmt, "/api/queues/nowhere/mq1")[0] == 404
    assert call(mgmt, "/api/no/such/path")[2] == {"error": "Object Not Found", "reason": "Not Found"}
    conn.close()


def test_pagination(mgmt):
    conn = mgmt.connect()
    ch = conn.channel()
    for i in range(25):
        ch.queue_declare(f"page-{i:02}", auto_delete=False)
    # RabbitMQ's paged shape: filtered_count, item_count, items, page, page_count, page_size, total_count.
    status, _, p = call(mgmt, "/api/queues/%2F?page=2&page_size=10&name=page-")
    assert status == 200
    assert set(p) == {"filtered_count", "item_count", "items", "page", "page_count", "page_size", "total_count"}
    assert (p["page"], p["page_size"], p["page_count"], p["filtered_count"], p["item_count"]) == (2, 10, 3, 25, 10)
    assert p["items"][0]["name"] == "page-10"
    assert p["total_count"] >= 25
    # KEDA's regex mode (pagination=false is ignored, as RabbitMQ does).
    _, _, p = call(mgmt, "/api/queues/%2F?page=1&use_regex=true&pagination=false&name=%5Epage-2%5B0-4%5D%24&page_size=100")
    assert sorted(q["name"] for q in p["items"]) == [f"page-2{i}" for i in range(5)]
    assert call(mgmt, "/api/queues?page=0")[0] == 400
    assert call(mgmt, "/api/queues?page=1&page_size=501")[0] == 400
    assert call(mgmt, "/api/queues?page=1&name=(&use_regex=true")[2]["error"] == "bad_request"
    conn.close()


def test_exchanges_and_vhost_visibility(mgmt):
    conn = mgmt.connect()
    ch = conn.channel()
    ch.exchange_declare("mx", "x-consistent-hash", durable=True)
    _, _, xs = call(mgmt, "/api/exchanges/%2F")
    names = {x["name"] for x in xs}
    assert {"", "amq.direct", "amq.topic", "mx"} <= names
    # RabbitMQ 3.10.8's exchange object (GET /api/exchanges/%2F/amq.direct).
    status, _, x = call(mgmt, "/api/exchanges/%2F/amq.direct")
    assert status == 200
    assert {k: x[k] for k in ["name", "vhost", "type", "durable", "auto_delete", "internal", "arguments"]} == \
        {"name": "amq.direct", "vhost": "/", "type": "direct", "durable": True, "auto_delete": False,
         "internal": False, "arguments": {}}
    assert call(mgmt, "/api/exchanges/%2F/mx")[2]["type"] == "x-consistent-hash"
    assert call(mgmt, "/api/exchanges/%2F/amq.default")[2]["name"] == ""
    assert call(mgmt, "/api/exchanges/%2F/nope")[0] == 404
    # A management user sees the vhosts it has permissions in, and nothing of the others.
    _, _, vhosts = call(mgmt, "/api/vhosts", user="viewer", password="v")
    assert [v["name"] for v in vhosts] == ["other"]
    assert call(mgmt, "/api/queues/%2F", user="viewer", password="v")[0] == 404
    assert all(q["vhost"] == "other" for q in call(mgmt, "/api/queues", user="viewer", password="v")[2])
    _, _, vhosts = call(mgmt, "/api/vhosts")
    assert [v["name"] for v in vhosts] == ["/", "other"]
    # RabbitMQ 3.10.8's vhost object fields.
    _, _, v = call(mgmt, "/api/vhosts/%2F")
    assert set(v) >= {"name", "description", "tags", "metadata", "tracing", "cluster_state", "default_queue_type"}
    conn.close()


def test_health_checks(mgmt):
    # RabbitMQ 3.10.8: {"status":"ok"}; a port or protocol without a listener is 503 with what is missing.
    for check in ["alarms", "local-alarms", "virtual-hosts", "is-in-service", "ready-to-serve-clients",
                  "node-is-quorum-critical"]:
        status, _, body = call(mgmt, f"/api/health/checks/{check}")
        assert (status, body) == (200, {"status": "ok"}), check
    assert call(mgmt, "/api/health/checks/alarms")[2] == {"status": "ok"}
    assert call(mgmt, f"/api/health/checks/port-listener/{mgmt.port}")[2] == {"status": "ok", "port": mgmt.port}
    status, _, body = call(mgmt, "/api/health/checks/port-listener/1")
    assert status == 503
    assert (body["status"], body["reason"], body["missing"]) == ("failed", "No active listener", 1)
    assert mgmt.port in body["ports"]
    assert call(mgmt, "/api/health/checks/port-listener/x")[0] == 400
    assert call(mgmt, "/api/health/checks/protocol-listener/amqp")[2] == {"status": "ok", "protocol": "amqp"}
    status, _, body = call(mgmt, "/api/health/checks/protocol-listener/mqtt")
    assert (status, body["missing"]) == (503, "mqtt")
    assert call(mgmt, "/api/aliveness-test/%2F")[2] == {"status": "ok"}
    assert call(mgmt, "/api/health/checks/alarms", auth=False)[0] == 401


def test_warren_plugins(mgmt):
    conn = mgmt.connect()
    ch = conn.channel()
    ch.exchange_declare("mp", "x-consistent-hash")
    ch.queue_declare("mp-q", auto_delete=True)
    ch.queue_bind("mp-q", "mp", "1")
    ch.basic_publish("mp", "k", b"m")
    status, _, plugins = call(mgmt, "/api/warren/plugins")
    assert status == 200
    p = next(p for p in plugins if p["name"] == "x-consistent-hash")
    assert (p["kind"], p["state"], p["package"]) == ("exchange", "loaded", "warren:plugin@0.4.0")
    for key in ["version", "hash", "file", "loaded_at", "calls", "traps", "timeouts", "memory",
                "memory_cap", "reloads", "breaches", "entities_quarantined", "compiled", "compile_ms"]:
        assert key in p, key
    assert p["calls"] > 0
    assert call(mgmt, "/api/warren/plugins/exchange/x-consistent-hash/quarantine", method="DELETE")[0] == 204
    assert call(mgmt, "/api/warren/plugins/exchange/x-nope/quarantine", method="DELETE")[0] == 404
    assert call(mgmt, "/api/warren/plugins/exchange/x-consistent-hash/quarantine", method="DELETE",
                user="viewer", password="v")[2]["reason"] == "Not administrator user"
    conn.close()


def test_listen_address_and_off_from_the_config_file(tmp_path):
    import socket
    from conftest import free_port

    port = free_port()
    on = Broker(f'[management]\nlisten = "127.0.0.1:{port}"\n', tmp_path, management_flag=False)
    try:
        on.mgmt_port = port
        assert call(on, "/api/overview")[0] == 200
    finally:
        on.stop()
    port = free_port()
    off = Broker(f'[management]\nenabled = false\nlisten = "127.0.0.1:{port}"\n', tmp_path, management_flag=False)
    try:
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
    finally:
        off.stop()


def test_bindings_in_every_form(mgmt):
    conn = mgmt.connect()
    ch = conn.channel()
    ch.queue_declare("mb-q")
    ch.queue_bind("mb-q", "amq.direct", "a b~c")
    ch.queue_bind("mb-q", "amq.headers", "k", arguments={"x-match": "all"})
    ch.exchange_declare("mb-x", "fanout")
    ch.exchange_bind("mb-x", "amq.topic", "t.#")
    # RabbitMQ 3.10.8 answered GET /api/queues/%2F/q1/bindings for the same two bindings with
    # (properties_key of the arguments' binding aside: the hash is each broker's own):
    expected = [
        {"source": "", "vhost": "/", "destination": "mb-q", "destination_type": "queue",
         "routing_key": "mb-q", "arguments": {}, "properties_key": "mb-q"},
        {"source": "amq.direct", "vhost": "/", "destination": "mb-q", "destination_type": "queue",
         "routing_key": "a b~c", "arguments": {}, "properties_key": "a+b%7Ec"},
    ]
    status, _, got = call(mgmt, "/api/queues/%2F/mb-q/bindings")
    assert status == 200
    assert got[:2] == expected
    headers_binding = got[2]
    assert (headers_binding["source"], headers_binding["arguments"]) == ("amq.headers", {"x-match": "all"})
    assert headers_binding["properties_key"].startswith("k~") and len(headers_binding["properties_key"]) == 8
    assert call(mgmt, "/api/exchanges/%2F/amq.direct/bindings/source")[2] == [expected[1]]
    _, _, dest = call(mgmt, "/api/exchanges/%2F/mb-x/bindings/destination")
    assert [(b["source"], b["destination_type"], b["routing_key"]) for b in dest] == [("amq.topic", "exchange", "t.#")]
    assert call(mgmt, "/api/bindings/%2F/e/amq.direct/q/mb-q")[2] == [expected[1]]
    assert call(mgmt, "/api/bindings/%2F/e/amq.direct/q/mb-q/a+b%257Ec")[2] == expected[1]
    assert call(mgmt, "/api/bindings/%2F/e/amq.direct/q/mb-q/nope")[0] == 404
    assert call(mgmt, "/api/bindings/%2F/e/amq.topic/e/mb-x")[2][0]["routing_key"] == "t.#"
    assert any(b["destination"] == "mb-q" for b in call(mgmt, "/api/bindings")[2])
    assert any(b["destination"] == "mb-q" for b in call(mgmt, "/api/bindings/%2F")[2])
    assert call(mgmt, "/api/queues/%2F/nope/bindings")[0] == 404
    conn.close()


def test_users_permissions_and_policies(mgmt):
    # RabbitMQ 3.10.8's user object: name, password_hash, hashing_algorithm, tags (a list), limits.
    status, _, users = call(mgmt, "/api/users")
    assert status == 200
    by_name = {u["name"]: u for u in users}
    assert set(by_name) == {"guest", "viewer", "plain", "rules"}
    guest = by_name["guest"]
    assert set(guest) == {"name", "password_hash", "hashing_algorithm", "tags", "limits"}
    assert guest["hashing_algorithm"] == "rabbit_password_hashing_sha256"
    assert guest["tags"] == ["administrator"] and guest["limits"] == {}
    assert len(base64.b64decode(guest["password_hash"])) == 36
    assert by_name["viewer"]["limits"] == {"max-connections": 10}
    assert call(mgmt, "/api/users/viewer")[2]["tags"] == ["management"]
    assert call(mgmt, "/api/users/nobody")[0] == 404
    assert call(mgmt, "/api/users", user="viewer", password="v")[2]["reason"] == "Not administrator user"
    # Permissions: {"user","vhost","configure","write","read"} as written.
    _, _, perms = call(mgmt, "/api/permissions")
    assert {"user": "rules", "vhost": "other", "configure": "", "write": "", "read": "^r"} in perms
    assert call(mgmt, "/api/permissions/other/viewer")[2] == \
        {"user": "viewer", "vhost": "other", "configure": ".*", "write": ".*", "read": ".*"}
    assert call(mgmt, "/api/permissions/%2F/viewer")[0] == 404
    assert [p["vhost"] for p in call(mgmt, "/api/users/guest/permissions")[2]] == ["/", "other"]
    assert sorted(p["user"] for p in call(mgmt, "/api/vhosts/other/permissions")[2]) == ["guest", "rules", "viewer"]
    # Policies: {"vhost","name","pattern","apply-to","definition","priority"}.
    _, _, policies = call(mgmt, "/api/policies")
    assert {"vhost": "/", "name": "ttl", "pattern": "^t", "apply-to": "queues",
            "definition": {"message-ttl": 5}, "priority": 1} in policies
    assert call(mgmt, "/api/policies/other/cap")[2]["definition"] == {"max-length": 100}
    assert call(mgmt, "/api/policies/%2F/cap")[0] == 404
    # A policymaker sees the policies of its vhosts; a management user may not list them.
    _, _, theirs = call(mgmt, "/api/policies", user="rules", password="r")
    assert [p["name"] for p in theirs] == ["cap"]
    assert call(mgmt, "/api/policies", user="viewer", password="v")[2]["reason"] == "Not policymaker user"


def _key(objects):
    return sorted(json.dumps(o, sort_keys=True) for o in objects)


def test_definitions_export_loads_back_into_a_fresh_warren(mgmt, tmp_path):
    conn = mgmt.connect()
    ch = conn.channel()
    ch.queue_declare("def-q", durable=True, arguments={"x-message-ttl": 60000})
    ch.exchange_declare("def-x", "topic", durable=True)
    ch.queue_bind("def-q", "def-x", "a.#")
    ch.exchange_declare("def-chx", "x-consistent-hash", durable=True)
    ch.queue_bind("def-q", "def-chx", "5")
    ch.queue_declare("", exclusive=True)  # not exported
    # RabbitMQ 3.10.8's export keys.
    status, _, d = call(mgmt, "/api/definitions")
    assert status == 200
    assert set(d) == {"rabbit_version", "rabbitmq_version", "product_name", "product_version", "users",
                      "vhosts", "permissions", "topic_permissions", "parameters", "global_parameters",
                      "policies", "queues", "exchanges", "bindings"}
    assert {"name": "def-q", "vhost": "/", "durable": True, "auto_delete": False,
            "arguments": {"x-message-ttl": 60000}} in d["queues"]
    assert not any(q["name"].startswith("amq.gen") for q in d["queues"]), "exclusive queues left out"
    assert not any(x["name"].startswith("amq.") or x["name"] == "" for x in d["exchanges"])
    assert {"source": "def-x", "vhost": "/", "destination": "def-q", "destination_type": "queue",
            "routing_key": "a.#", "arguments": {}} in d["bindings"]
    assert {"vhost": "other", "component": "vhost-limits", "name": "limits",
            "value": {"max-queues": 50}} in d["parameters"]
    _, _, one = call(mgmt, "/api/definitions/%2F")
    assert set(one) == {"rabbit_version", "parameters", "policies", "queues", "exchanges", "bindings"}
    assert {"name": "def-q", "durable": True, "auto_delete": False, "arguments": {"x-message-ttl": 60000}} in one["queues"]
    assert call(mgmt, "/api/definitions", user="viewer", password="v")[0] == 401
    conn.close()

    path = tmp_path / "export.json"
    path.write_text(json.dumps(d))
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    (plugin_dir / "x_consistent_hash.wasm").write_bytes((PLUGINS / "x_consistent_hash.wasm").read_bytes())
    fresh = Broker(f'definitions = "{path}"\n', tmp_path, plugin_dir=plugin_dir)
    try:
        _, _, again = call(fresh, "/api/definitions")
        for key in ["users", "vhosts", "permissions", "parameters", "policies", "queues", "exchanges", "bindings"]:
            assert _key(again[key]) == _key(d[key]), key
    finally:
        fresh.stop()


def send(broker, method, path, body=None, user="guest", password="guest"):
    return call(broker, path, user=user, password=password, method=method, body=body)


def test_declare_delete_purge_and_bind_over_http(mgmt):
    # Codes and texts as RabbitMQ 3.10.8 answered the same requests.
    assert send(mgmt, "PUT", "/api/queues/%2F/hq", {"durable": True, "arguments": {"x-max-length": 3}})[0] == 201
    assert send(mgmt, "PUT", "/api/queues/%2F/hq", {"durable": True, "arguments": {"x-max-length": 3}})[0] == 204
    status, _, body = send(mgmt, "PUT", "/api/queues/%2F/hq", {"durable": False})
    assert status == 400 and body["error"] == "bad_request" and "inequivalent arg 'durable'" in body["reason"]
    assert send(mgmt, "PUT", "/api/queues/%2F/hq2", b"not json")[2] == {"error": "bad_request", "reason": "not_json"}
    assert send(mgmt, "PUT", "/api/queues/nope/hq", {})[2] == {"error": "not_found", "reason": "vhost_not_found"}
    q = call(mgmt, "/api/queues/%2F/hq")[2]
    assert (q["durable"], q["arguments"]) == (True, {"x-max-length": 3})
    # An empty body: RabbitMQ's defaults (not durable, type direct).
    assert send(mgmt, "PUT", "/api/exchanges/%2F/hx", {})[0] == 201
    x = call(mgmt, "/api/exchanges/%2F/hx")[2]
    assert (x["type"], x["durable"]) == ("direct", False)
    status, _, body = send(mgmt, "PUT", "/api/exchanges/%2F/hx", {"type": "topic"})
    assert status == 400 and "inequivalent arg 'type'" in body["reason"]
    assert send(mgmt, "PUT", "/api/exchanges/%2F/hy", {"type": "nope"})[2] == \
        {"error": "bad_request", "reason": "unknown exchange type 'nope'"}
    assert send(mgmt, "PUT", "/api/exchanges/%2F/amq.foo", {"type": "direct"})[:3:2] == \
        (401, {"error": "not_authorised", "reason": "Access refused."})
    # A plugin type over HTTP.
    assert send(mgmt, "PUT", "/api/exchanges/%2F/hchx", {"type": "x-consistent-hash", "durable": True})[0] == 201
    # Bindings: 201 with Location {destination}/{properties_key}, as Terraform reads it.
    status, headers, _ = send(mgmt, "POST", "/api/bindings/%2F/e/hx/q/hq", {"routing_key": "a b~c"})
    assert status == 201 and headers["Location"] == "hq/a%2Bb%257Ec"
    status, headers, _ = send(mgmt, "POST", "/api/bindings/%2F/e/hchx/q/hq", {"routing_key": "2"})
    assert status == 201 and headers["Location"] == "hq/2"
    status, headers, _ = send(mgmt, "POST", "/api/bindings/%2F/e/amq.topic/e/hx", {"routing_key": "t.*"})
    assert status == 201 and headers["Location"] == "hx/t.%252A"
    assert send(mgmt, "POST", "/api/bindings/%2F/e/hx/q/missing", {"routing_key": "k"})[0] == 404
    # Messages routed through the HTTP-made binding; purge empties the queue.
    conn = mgmt.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_publish("hx", "a b~c", b"m1")
    ch.basic_publish("amq.topic", "t.x", b"m2")
    assert call(mgmt, "/api/queues/%2F/hq")[2]["messages"] == 1, "amq.topic -> hx routes only 'a b~c'"
    assert send(mgmt, "DELETE", "/api/queues/%2F/hq/contents")[0] == 204
    assert call(mgmt, "/api/queues/%2F/hq")[2]["messages"] == 0
    # Unbind by properties key (the one from Location, decoded).
    assert send(mgmt, "DELETE", "/api/bindings/%2F/e/hx/q/hq/a%2Bb%257Ec")[0] == 204
    assert call(mgmt, "/api/bindings/%2F/e/hx/q/hq")[2] == []
    assert send(mgmt, "DELETE", "/api/bindings/%2F/e/hx/q/hq/a%2Bb%257Ec")[0] == 404
    ch.basic_publish("hx", "a b~c", b"m3")
    assert call(mgmt, "/api/queues/%2F/hq")[2]["messages"] == 0
    # Deletes: if-unused refuses an exchange with bindings as a source; 404 once gone.
    assert send(mgmt, "DELETE", "/api/exchanges/%2F/amq.topic?if-unused=true")[0] == 401  # amq.* as RabbitMQ
    assert send(mgmt, "DELETE", "/api/exchanges/%2F/hx")[0] == 204
    assert send(mgmt, "DELETE", "/api/exchanges/%2F/hx")[0] == 404
    assert send(mgmt, "DELETE", "/api/queues/%2F/hq")[0] == 204
    assert send(mgmt, "DELETE", "/api/queues/%2F/hq")[0] == 404
    # Permissions apply: a management user cannot declare in a vhost it has no rights in.
    assert send(mgmt, "PUT", "/api/queues/%2F/nq", {}, user="viewer", password="v")[:3:2] == \
        (401, {"error": "not_authorised", "reason": "Access refused."})
    assert send(mgmt, "PUT", "/api/queues/other/vq", {}, user="viewer", password="v")[0] == 201
    conn.close()


def test_objects_declared_over_http_survive_a_restart(tmp_path):
    data = tmp_path / "data"
    b = Broker(tmp_path=tmp_path, data_dir=str(data))
    try:
        assert send(b, "PUT", "/api/queues/%2F/keep", {"durable": True})[0] == 201
        assert send(b, "PUT", "/api/exchanges/%2F/keep-x", {"type": "fanout", "durable": True})[0] == 201
        assert send(b, "POST", "/api/bindings/%2F/e/keep-x/q/keep", {})[0] == 201
    finally:
        b.stop()
    again = Broker(tmp_path=tmp_path, data_dir=str(data))
    try:
        assert call(again, "/api/queues/%2F/keep")[2]["durable"] is True
        assert call(again, "/api/exchanges/%2F/keep-x")[2]["type"] == "fanout"
        assert call(again, "/api/bindings/%2F/e/keep-x/q/keep")[2][0]["properties_key"] == "~"
    finally:
        again.stop()


def test_connections_listed_and_closed(mgmt):
    conn = mgmt.connect()
    ch1 = conn.channel()
    conn.channel()
    viewer = mgmt.connect(user="viewer", password="v", vhost="other")
    # RabbitMQ 3.10.8's connection fields that rabbitmqadmin and the UI read.
    _, _, conns = call(mgmt, "/api/connections")
    mine = [c for c in conns if c["user"] == "guest" and c["channels"] == 2]
    assert len(mine) == 1, conns
    c = mine[0]
    for key in ["name", "node", "vhost", "user", "state", "channels", "protocol", "peer_host", "peer_port",
                "host", "port", "ssl", "connected_at", "client_properties", "auth_mechanism", "timeout",
                "frame_max", "channel_max"]:
        assert key in c, key
    assert (c["vhost"], c["protocol"], c["port"], c["ssl"], c["auth_mechanism"]) == ("/", "AMQP 0-9-1", mgmt.port, False, "PLAIN")
    assert c["name"] == f"{c['peer_host']}:{c['peer_port']} -> 127.0.0.1:{mgmt.port}"
    assert c["client_properties"]["product"] == "Pika Python Client Library"
    encoded = urllib.parse.quote(c["name"], safe="")
    assert call(mgmt, f"/api/connections/{encoded}")[2]["channels"] == 2
    # A management user sees only its own connections and cannot close others'.
    _, _, theirs = call(mgmt, "/api/connections", user="viewer", password="v")
    assert [x["user"] for x in theirs] == ["viewer"]
    assert call(mgmt, f"/api/connections/{encoded}", user="viewer", password="v")[0] == 404
    assert [x["user"] for x in call(mgmt, "/api/vhosts/other/connections")[2]] == ["viewer"]
    # Closing: 204, then the client sees 320 CONNECTION_FORCED with the reason.
    assert call(mgmt, f"/api/connections/{encoded}", method="DELETE", headers={"X-Reason": "maintenance"})[0] == 204
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
        for _ in range(50):
            ch1.queue_declare("after-close", passive=False)
            conn.sleep(0.1)
    assert closed.value.reply_code == 320 and "maintenance" in closed.value.reply_text
    # Gone from the list once the broker has finished closing it.
    deadline = time.time() + 10
    while call(mgmt, f"/api/connections/{encoded}")[0] != 404:
        assert time.time() < deadline, "closed connection still listed"
        time.sleep(0.05)
    viewer.close()
