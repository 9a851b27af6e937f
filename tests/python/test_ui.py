"""The web UI in a real headless browser: Debian's chromium driven by Playwright (PyPI) through
`executable_path` (never `playwright install`), against the real binary. Each page loads without
console errors; a queue declared in the UI exists over AMQP (pika); a message published over AMQP is
fetched in the UI; a plugin's counters move after traffic. With WARREN_UI_SCREENSHOTS=DIR the
overview, queues and plugins pages are saved there (the README's pictures come from it)."""
import os
import pathlib
import re

import pika
import pytest

from conftest import EXTERNAL, PLUGINS, Broker

pytestmark = pytest.mark.skipif(bool(EXTERNAL), reason="needs a Warren it starts")

CHROMIUM = "/usr/bin/chromium"
# The flags a root, offline, headless Chromium needs here (no sandbox as root; no background
# connections, which the closed network refuses).
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
PAGES = ["overview", "connections", "channels", "exchanges", "queues", "admin", "definitions", "plugins"]


@pytest.fixture
def browser_page():
    from playwright.sync_api import sync_playwright
    assert os.path.exists(CHROMIUM), "chromium is not installed (scripts/test.sh installs it)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1366, "height": 860})
        errors = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        yield page, errors
        browser.close()


def shot(page, name):
    out = os.environ.get("WARREN_UI_SCREENSHOTS")
    if out:
        pathlib.Path(out).mkdir(parents=True, exist_ok=True)
        page.evaluate("document.getElementById('toast').className = ''")
        page.screenshot(path=str(pathlib.Path(out) / f"{name}.png"), full_page=False)


def test_every_page_and_the_round_trips(browser_page, tmp_path):
    page, errors = browser_page
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "x_consistent_hash.wasm").write_bytes((PLUGINS / "x_consistent_hash.wasm").read_bytes())
    b = Broker(tmp_path=tmp_path, plugin_dir=plugins)
    try:
        base = f"http://127.0.0.1:{b.mgmt_port}/"
        conn = b.connect()
        ch = conn.channel()
        ch.confirm_delivery()
        ch.exchange_declare("ring", "x-consistent-hash")
        ch.queue_declare("ring-q")
        ch.queue_bind("ring-q", "ring", "1")
        # Log in.
        page.goto(base)
        page.fill("input[name=user]", "guest")
        page.fill("input[name=password]", "guest")
        page.click("#login button[type=submit]")
        page.wait_for_selector("h1:has-text('Overview')")
        # Every page loads and shows its heading.
        for name in PAGES:
            page.goto(base + "#/" + name)
            page.wait_for_selector(f"nav a.active[href='#/{name}']")
            page.wait_for_selector(f"main h1:has-text('{name.capitalize()}')")
        assert errors == [], errors
        # A queue declared in the UI exists over AMQP.
        page.goto(base + "#/queues")
        page.fill("#queue-name", "ui-q")
        page.click("#add-queue")
        page.wait_for_selector("a.link:has-text('ui-q')")
        ch.queue_declare("ui-q", passive=True)
        # A message published over AMQP is fetched in the UI.
        ch.basic_publish("", "ui-q", b"from-amqp")
        page.goto(base + "#/queues/%2F/ui-q")
        page.click("#get-messages")
        page.wait_for_selector("#messages td:has-text('from-amqp')")
        # A plugin's counters move after traffic.
        def calls():
            # Through another page, each rendered before the next, so the row read is a fresh one.
            page.goto(base + "#/overview")
            page.wait_for_selector("main h1:has-text('Overview')")
            page.goto(base + "#/plugins")
            page.wait_for_selector("main h1:has-text('Plugins')")
            row = page.wait_for_selector("tr:has(td:text-is('x-consistent-hash'))")
            cells = row.query_selector_all("td")
            return int(cells[5].inner_text())
        before = calls()
        for i in range(20):
            ch.basic_publish("ring", f"k{i}", b"m")
        after = calls()
        assert after >= before + 20, (before, after)
        used_by = page.wait_for_selector("tr:has(td:text-is('x-consistent-hash'))").inner_text()
        assert "exchange ring" in used_by
        assert errors == [], errors
        # Pictures for the README.
        page.goto(base + "#/overview")
        page.wait_for_selector("canvas#rates")
        shot(page, "overview")
        page.goto(base + "#/queues")
        page.wait_for_selector("a.link:has-text('ui-q')")
        shot(page, "queues")
        page.goto(base + "#/plugins")
        page.wait_for_selector("tr:has(td:text-is('x-consistent-hash'))")
        shot(page, "plugins")
        conn.close()
    finally:
        b.stop()
