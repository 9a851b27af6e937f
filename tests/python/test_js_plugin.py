"""The JavaScript recipe of docs/plugins.md, end to end: plugins/js/x-js-direct built with
componentize-js (pinned in plugins/js/package.json, `npm ci` by plugins/js/build.sh) with the flags the
guide gives, loaded by the real broker, routing pika's publishes — one by one and in `route-keys`
batches — under the default per-instance memory cap."""
import pytest

from conftest import EXTERNAL, broker_with_built_plugin, plugin_status

pytestmark = pytest.mark.skipif(EXTERNAL is not None, reason="needs its own broker with the plugin")


@pytest.fixture(scope="module")
def js_broker(tmp_path_factory):
    b = broker_with_built_plugin(tmp_path_factory, "plugins/js/build.sh", "plugins/js/x-js-direct",
                                 "x_js_direct.wasm")
    yield b
    b.stop()


def test_a_javascript_exchange_routes_like_direct(js_broker):
    conn = js_broker.connect()
    ch = conn.channel()
    ch.exchange_declare(exchange="js", exchange_type="x-js-direct")
    for q in ["js-a", "js-b"]:
        ch.queue_declare(queue=q, auto_delete=True)
        ch.queue_bind(queue=q, exchange="js", routing_key=q)
    # A new key for every third message: the per-key cache cannot answer those, the plugin does.
    keys = [["js-a", "js-b", f"nowhere-{n}"][n % 3] for n in range(3000)]
    for n, key in enumerate(keys):
        ch.basic_publish(exchange="js", routing_key=key, body=str(n))
    ch.queue_declare(queue="js-a", passive=True)
    for q in ["js-a", "js-b"]:
        got = []
        while True:
            method, _, body = ch.basic_get(queue=q, auto_ack=True)
            if method is None:
                break
            got.append(int(body))
        assert got == [n for n, k in enumerate(keys) if k == q], q
    status = plugin_status(js_broker, "x-js-direct")
    print(f"x-js-direct: {status['calls']} calls, {status['memory']} memory-cap breaches (cap "
          f"{status['memory_cap']}), {status['traps']} traps, {status['timeouts']} timeouts")
    # The JS engine's heap fits the default cap: no breach, so the cap was never raised.
    assert (status["traps"], status["timeouts"], status["memory"]) == (0, 0, 0), status
    assert status["memory_cap"] == 64 << 20, status
    conn.close()
