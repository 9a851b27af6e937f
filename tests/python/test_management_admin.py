"""Run-time administration over the management HTTP API against the real binary: vhosts, users,
permissions and policies created, changed and deleted while the broker runs (RabbitMQ 3.10's status
codes: 201 created, 204 replaced or deleted, 404 unknown, 400 invalid), their effects over AMQP
(pika), their durability across a kill -9, a policy change applied to existing queues and exchanges,
and definitions import."""
import json
import signal
import time

import pika
import pytest

from conftest import EXTERNAL, Broker
from test_management import call, send, _key

pytestmark = pytest.mark.skipif(bool(EXTERNAL), reason="needs a Warren it starts")

SEEDED = """
[[users]]
name = "guest"
password = "guest"
tags = ["administrator"]

[[users]]
name = "seeded"
password = "s"
tags = ["management"]

[[users]]
name = "rules"
password = "r"
tags = ["policymaker"]

[[permissions]]
user = "guest"
vhost = "/"
configure = ".*"
write = ".*"
read = ".*"

[[permissions]]
user = "rules"
vhost = "/"
configure = ".*"
write = ".*"
read = ".*"
"""


def wait_closed(conn, timeout=5):
    """Waits until the broker closes `conn`; returns the close reason pika saw."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            conn.process_data_events(time_limit=0.1)
        except pika.exceptions.ConnectionClosedByBroker as e:
            return e.reply_code, e.reply_text
        except pika.exceptions.AMQPConnectionError as e:
            return None, str(e)
    raise AssertionError("connection was not closed")


def test_users_vhosts_permissions_and_policies_at_run_time_survive_kill_9(tmp_path):
    data = tmp_path / "data"
    b = Broker(SEEDED, tmp_path, data_dir=str(data))
    try:
        assert send(b, "PUT", "/api/vhosts/rt")[0] == 201
        assert send(b, "PUT", "/api/vhosts/rt")[0] == 204
        assert send(b, "PUT", "/api/users/alice", {"password": "pw", "tags": "management,monitoring"})[0] == 201
        assert send(b, "PUT", "/api/users/alice", {"password": "pw2", "tags": ["management"]})[0] == 204
        perm = {"configure": "^a-", "write": ".*", "read": ".*"}
        assert send(b, "PUT", "/api/permissions/rt/alice", perm)[0] == 201
        assert send(b, "PUT", "/api/permissions/rt/alice", perm)[0] == 204
        policy = {"pattern": "^a-", "definition": {"max-length": 5}, "priority": 1, "apply-to": "queues"}
        assert send(b, "PUT", "/api/policies/rt/cap", policy)[0] == 201
        # A user created at run time logs in over AMQP and over HTTP, with the permissions given.
        conn = b.connect(user="alice", password="pw2", vhost="rt")
        ch = conn.channel()
        ch.queue_declare("a-q", durable=True)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            conn.channel().queue_declare("b-q")
        assert e.value.reply_code == 403
        conn.close()
        assert call(b, "/api/whoami", user="alice", password="pw2")[2] == {"name": "alice", "tags": ["management"]}
        assert call(b, "/api/whoami", user="alice", password="pw")[0] == 401
        # A user seeded by the config file and deleted at run time stays deleted.
        assert send(b, "DELETE", "/api/users/seeded")[0] == 204
        assert send(b, "DELETE", "/api/users/seeded")[0] == 404
        assert call(b, "/api/queues/rt/a-q")[2]["policy"] == "cap"
        b.stop(signal.SIGKILL)
        b = Broker(SEEDED, tmp_path, data_dir=str(data))
        assert call(b, "/api/vhosts/rt")[0] == 200
        assert call(b, "/api/users/alice")[2]["tags"] == ["management"]
        assert call(b, "/api/users/seeded")[0] == 404
        assert call(b, "/api/permissions/rt/alice")[2] == {"user": "alice", "vhost": "rt", **perm}
        assert call(b, "/api/policies/rt/cap")[2] == {"vhost": "rt", "name": "cap", **policy}
        q = call(b, "/api/queues/rt/a-q")[2]
        assert (q["durable"], q["policy"]) == (True, "cap")
        b.connect(user="alice", password="pw2", vhost="rt").close()
        with pytest.raises(pika.exceptions.ProbableAuthenticationError):
            b.connect(user="seeded", password="s")
        # Deleting a user closes its connections (320, RabbitMQ's text); deleting a vhost closes
        # its connections and deletes its queues, also after a restart.
        conn = b.connect(user="alice", password="pw2", vhost="rt")
        assert send(b, "DELETE", "/api/users/alice")[0] == 204
        assert wait_closed(conn) == (320, "CONNECTION_FORCED - user 'alice' is deleted")
        assert call(b, "/api/permissions/rt/alice")[0] == 404
        conn = b.connect(vhost="/")
        assert send(b, "PUT", "/api/permissions/rt/guest", {"configure": ".*", "write": ".*", "read": ".*"})[0] == 201
        guest_rt = b.connect(vhost="rt")
        assert send(b, "DELETE", "/api/vhosts/rt")[0] == 204
        assert wait_closed(guest_rt) == (320, "CONNECTION_FORCED - vhost 'rt' is deleted")
        assert conn.is_open, "a connection to another vhost stays"
        conn.close()
        assert call(b, "/api/queues/rt/a-q")[0] == 404
        assert send(b, "DELETE", "/api/vhosts/rt")[0] == 404
        b.stop()
        b = Broker(SEEDED, tmp_path, data_dir=str(data))
        assert call(b, "/api/vhosts/rt")[0] == 404
        assert call(b, "/api/users/alice")[0] == 404
        assert [p for p in call(b, "/api/policies")[2] if p["vhost"] == "rt"] == []
        # Re-created, the vhost is empty: the old durable queue went with the deletion.
        assert send(b, "PUT", "/api/vhosts/rt")[0] == 201
        assert call(b, "/api/queues/rt")[2] == []
    finally:
        b.stop()


def test_invalid_changes_are_refused_with_reasons(tmp_path):
    b = Broker(SEEDED, tmp_path)
    try:
        status, _, body = send(b, "PUT", "/api/users/x", {"password": "a", "password_hash": "b"})
        assert (status, body["reason"]) == (400, "both_password_and_password_hash_are_provided")
        status, _, body = send(b, "PUT", "/api/users/x", {"password_hash": "not base64!"})
        assert status == 400 and "password hash" in body["reason"]
        status, _, body = send(b, "PUT", "/api/permissions/%2F/nobody", {"configure": "", "write": "", "read": ""})
        assert status == 400 and "user 'nobody' not found" in body["reason"]
        assert send(b, "PUT", "/api/users/x", {"password": "a", "tags": ""})[0] == 201
        status, _, body = send(b, "PUT", "/api/permissions/%2F/x", {"configure": "(", "write": "", "read": ""})
        assert status == 400 and "invalid permission pattern" in body["reason"]
        status, _, body = send(b, "PUT", "/api/permissions/%2F/x", {"configure": ".*"})
        assert (status, body["reason"]) == (400, "[{key_missing,write}]")
        status, _, body = send(b, "PUT", "/api/policies/%2F/p", {"pattern": ".*", "definition": {"max-length": -1}})
        assert status == 400 and "'max-length' must be an integer >= 0" in body["reason"]
        status, _, body = send(b, "PUT", "/api/policies/%2F/p", {"pattern": ".*"})
        assert (status, body["reason"]) == (400, "[{key_missing,definition}]")
        assert send(b, "PUT", "/api/policies/nope/p", {"pattern": ".*", "definition": {}})[0] == 404
        assert send(b, "DELETE", "/api/policies/%2F/none")[0] == 404
        assert send(b, "DELETE", "/api/permissions/%2F/nobody")[0] == 404
        # Tags: users, vhosts and permissions need administrator; policies policymaker.
        assert send(b, "PUT", "/api/vhosts/v", user="rules", password="r")[0] == 401
        assert send(b, "PUT", "/api/users/y", {"password": "y"}, user="rules", password="r")[0] == 401
        assert send(b, "PUT", "/api/policies/%2F/ok", {"pattern": "^z", "definition": {"max-length": 1}},
                    user="rules", password="r")[0] == 201
        assert send(b, "PUT", "/api/policies/%2F/ok2", {"pattern": "^z", "definition": {}},
                    user="seeded", password="s")[0] == 401
        # A user without a password (neither given) cannot log in with one.
        assert send(b, "PUT", "/api/users/nopw", {"tags": "administrator"})[0] == 201
        assert call(b, "/api/users/nopw")[2]["password_hash"] == ""
        assert call(b, "/api/whoami", user="nopw", password="")[0] == 401
        assert send(b, "POST", "/api/users/bulk-delete", {"users": ["x", "nopw", "never"]})[0] == 204
        assert call(b, "/api/users/x")[0] == 404
    finally:
        b.stop()


def test_policy_changes_apply_to_existing_queues_and_exchanges(tmp_path):
    b = Broker(SEEDED, tmp_path)
    try:
        conn = b.connect()
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("orders")
        ch.queue_declare("other")
        for i in range(10):
            ch.basic_publish("", "orders", str(i).encode())
            ch.basic_publish("", "other", str(i).encode())
        # Set on the existing queue: drop-head trims it to the new max-length now (RabbitMQ does).
        assert send(b, "PUT", "/api/policies/%2F/cap", {"pattern": "^orders$", "definition": {"max-length": 3},
                                                         "apply-to": "queues"})[0] == 201
        q = call(b, "/api/queues/%2F/orders")[2]
        assert (q["messages"], q["policy"]) == (3, "cap")
        assert call(b, "/api/queues/%2F/other")[2]["messages"] == 10, "a queue the pattern misses keeps all"
        assert [ch.basic_get("orders", auto_ack=True)[2] for _ in range(3)] == [b"7", b"8", b"9"]
        for i in range(5):
            ch.basic_publish("", "orders", str(i).encode())
        assert call(b, "/api/queues/%2F/orders")[2]["messages"] == 3
        # Changed: a higher limit applies to what arrives next.
        assert send(b, "PUT", "/api/policies/%2F/cap", {"pattern": "^orders$", "definition": {"max-length": 4},
                                                         "apply-to": "queues"})[0] == 204
        ch.basic_publish("", "orders", b"x")
        assert call(b, "/api/queues/%2F/orders")[2]["messages"] == 4
        # Deleted: no limit any more.
        assert send(b, "DELETE", "/api/policies/%2F/cap")[0] == 204
        for i in range(6):
            ch.basic_publish("", "orders", b"y")
        q = call(b, "/api/queues/%2F/orders")[2]
        assert (q["messages"], q["policy"]) == (10, None)
        # An alternate exchange given by a policy to an existing exchange.
        ch.exchange_declare("in", "direct")
        ch.queue_declare("lost")
        ch.exchange_declare("ae", "fanout")
        ch.queue_bind("lost", "ae")
        ch.basic_publish("in", "nowhere", b"before")
        assert call(b, "/api/queues/%2F/lost")[2]["messages"] == 0
        assert send(b, "PUT", "/api/policies/%2F/alt", {"pattern": "^in$", "definition": {"alternate-exchange": "ae"},
                                                         "apply-to": "exchanges"})[0] == 201
        assert call(b, "/api/exchanges/%2F/in")[2]["policy"] == "alt"
        ch.basic_publish("in", "nowhere", b"after")
        assert call(b, "/api/queues/%2F/lost")[2]["messages"] == 1
        conn.close()
    finally:
        b.stop()


def test_definitions_import_gives_the_same_state(tmp_path):
    src = Broker(SEEDED, tmp_path)
    try:
        assert send(src, "PUT", "/api/vhosts/imp")[0] == 201
        assert send(src, "PUT", "/api/users/bob", {"password": "b", "tags": "monitoring"})[0] == 201
        assert send(src, "PUT", "/api/permissions/imp/bob", {"configure": "", "write": ".*", "read": ".*"})[0] == 201
        assert send(src, "PUT", "/api/policies/imp/ttl", {"pattern": ".*", "definition": {"message-ttl": 1000}})[0] == 201
        conn = src.connect()
        ch = conn.channel()
        ch.queue_declare("iq", durable=True, arguments={"x-max-length": 7})
        ch.exchange_declare("ix", "topic", durable=True)
        ch.queue_bind("iq", "ix", "k.#")
        conn.close()
        all_ = {"configure": ".*", "write": ".*", "read": ".*"}
        assert send(src, "PUT", "/api/permissions/imp/guest", all_)[0] == 201
        assert send(src, "PUT", "/api/queues/imp/q2", {"durable": True})[0] == 201
        exported = call(src, "/api/definitions")[2]
        per_vhost = call(src, "/api/definitions/imp")[2]
    finally:
        src.stop()
    dst = Broker(tmp_path=tmp_path)
    try:
        status, _, body = send(dst, "POST", "/api/definitions", exported)
        assert status == 204, body
        again = call(dst, "/api/definitions")[2]
        for key in ["vhosts", "permissions", "policies", "queues", "exchanges", "bindings"]:
            assert _key(again[key]) == _key(exported[key]), key
        # The same hash: bob logs in with his password.
        assert call(dst, "/api/whoami", user="bob", password="b")[2]["name"] == "bob"
        # Importing again is idempotent; a per-vhost export imports into another vhost.
        assert send(dst, "POST", "/api/definitions", exported)[0] == 204
        assert send(dst, "PUT", "/api/vhosts/copy")[0] == 201
        assert send(dst, "POST", "/api/definitions/copy", per_vhost)[0] == 204
        assert call(dst, "/api/queues/copy/q2")[2]["durable"] is True
        assert call(dst, "/api/policies/copy/ttl")[0] == 200
        # A bad document is refused with a reason; nothing else is harmed.
        status, _, body = send(dst, "POST", "/api/definitions", {"queues": [{"name": "q"}]})
        assert status == 400 and "vhost" in body["reason"], body
        status, _, body = send(dst, "POST", "/api/definitions", b"[1]")
        assert status == 400
        assert call(dst, "/api/queues/imp/q2")[0] == 200
    finally:
        dst.stop()
