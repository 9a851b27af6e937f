// Warren's management UI: plain JavaScript over the management HTTP API (the same endpoints
// rabbitmqadmin and the other tools call), no build step, no external resources. Pages are chosen
// by the URL fragment (#/overview, #/queues, …); credentials live in sessionStorage.
"use strict";

const state = { auth: sessionStorage.getItem("warren-auth"), timer: null, rates: [] };

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "class") e.className = v;
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function toast(text, error) {
  const t = document.getElementById("toast");
  t.textContent = text;
  t.className = "show" + (error ? " error" : "");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.className = ""; }, 4000);
}

async function api(method, path, body) {
  const headers = { "Authorization": "Basic " + state.auth };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch("/api" + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (r.status === 401 && path === "/whoami") throw new Error("login failed");
  const text = await r.text();
  const data = text ? JSON.parse(text) : null;
  if (!r.ok) throw new Error((data && (data.reason || data.error)) || r.statusText);
  return data;
}
const get = (p) => api("GET", p);
const enc = encodeURIComponent;

function table(columns, rows, empty) {
  if (!rows.length) return el("p", { class: "muted" }, empty || "None.");
  return el("table", {},
    el("thead", {}, el("tr", {}, columns.map(([title, , num]) => el("th", { class: num ? "num" : "" }, title)))),
    el("tbody", {}, rows.map((r) => el("tr", {}, columns.map(([, cell, num]) => el("td", { class: num ? "num" : "" }, cell(r)))))));
}

function field(label, input) { return el("label", {}, label, input); }
function form(onsubmit, ...fields) {
  return el("form", { class: "inline", onsubmit: async (ev) => {
    ev.preventDefault();
    try { await onsubmit(ev.target); } catch (e) { toast(e.message, true); }
  } }, ...fields);
}
const rate = (o, k) => (o && o.message_stats && o.message_stats[k + "_details"] ? o.message_stats[k + "_details"].rate : 0);
const count = (o, k) => (o && o.message_stats ? o.message_stats[k] || 0 : 0);
const bool = (b) => (b ? "yes" : "no");

async function vhostOptions() {
  const vhosts = await get("/vhosts");
  return vhosts.map((v) => el("option", { value: v.name }, v.name));
}

// ---- pages -----------------------------------------------------------------------------------

async function overview(main) {
  const [o, nodes] = await Promise.all([get("/overview"), get("/nodes").catch(() => [])]);
  const node = nodes[0] || {};
  const t = o.object_totals || {}, q = o.queue_totals || {};
  state.rates.push({ at: Date.now(), publish: rate(o, "publish"), deliver: rate(o, "deliver_get"), ack: rate(o, "ack") });
  state.rates = state.rates.slice(-60);
  main.append(
    el("h1", {}, "Overview ", el("span", { class: "muted" }, `${o.product_name} ${o.product_version} on ${o.node}`)),
    el("div", { class: "cards" },
      [["Connections", t.connections], ["Channels", t.channels], ["Exchanges", t.exchanges], ["Queues", t.queues],
       ["Consumers", t.consumers], ["Ready", q.messages_ready], ["Unacked", q.messages_unacknowledged],
       ["Published", count(o, "publish")], ["Delivered", count(o, "deliver_get")]]
        .map(([k, v]) => el("div", { class: "card" }, el("div", { class: "v" }, v === undefined ? "–" : v), el("div", { class: "k" }, k)))),
    el("h2", {}, "Message rates (per second)"),
    el("div", { class: "legend" }, [["publish", "#2f80c0"], ["deliver / get", "#f0a030"], ["ack", "#1e7e34"]]
      .map(([n, c]) => el("span", {}, el("i", { style: `background:${c}` }), n + " " + (n === "publish" ? rate(o, "publish") : n === "ack" ? rate(o, "ack") : rate(o, "deliver_get"))))),
    chart(),
    el("h2", {}, "Alarms"),
    table([["Alarm", (r) => r[0]], ["State", (r) => el("span", { class: r[1] ? "bad" : "ok" }, r[1] ? "in effect" : "ok")]],
      [["memory", node.mem_alarm], ["free disk space", node.disk_free_alarm]]),
    el("h2", {}, "Listeners"),
    table([["Protocol", (l) => l.protocol], ["Address", (l) => l.ip_address], ["Port", (l) => l.port, true]], o.listeners || []));
}

function chart() {
  const c = el("canvas", { width: 900, height: 220, id: "rates" });
  const g = c.getContext("2d");
  const pts = state.rates;
  const max = Math.max(1, ...pts.flatMap((p) => [p.publish, p.deliver, p.ack]));
  g.strokeStyle = "#e3e8ee";
  for (let i = 0; i <= 4; i++) { g.beginPath(); g.moveTo(40, 10 + i * 50); g.lineTo(890, 10 + i * 50); g.stroke(); }
  g.fillStyle = "#5b6b7d"; g.font = "11px sans-serif";
  g.fillText(max.toFixed(1), 2, 14); g.fillText("0", 2, 214);
  [["publish", "#2f80c0"], ["deliver", "#f0a030"], ["ack", "#1e7e34"]].forEach(([k, color]) => {
    g.strokeStyle = color; g.lineWidth = 2; g.beginPath();
    pts.forEach((p, i) => {
      const x = 40 + (850 * i) / Math.max(1, 59), y = 210 - (200 * p[k]) / max;
      if (i) g.lineTo(x, y); else g.moveTo(x, y);
    });
    g.stroke();
  });
  return c;
}

async function connections(main) {
  const list = await get("/connections");
  main.append(el("h1", {}, "Connections"),
    table([["Name", (c) => c.name], ["User", (c) => c.user], ["Vhost", (c) => c.vhost], ["Channels", (c) => c.channels, true],
      ["TLS", (c) => bool(c.ssl)], ["Client", (c) => (c.client_properties && c.client_properties.product) || ""],
      ["", (c) => el("button", { class: "danger", onclick: async () => {
        try { await api("DELETE", "/connections/" + enc(c.name)); toast("Closed " + c.name); route(); } catch (e) { toast(e.message, true); }
      } }, "Close")]], list, "No connections."));
}

async function channels(main) {
  const list = await get("/channels");
  main.append(el("h1", {}, "Channels"),
    table([["Channel", (c) => c.name], ["User", (c) => c.user], ["Vhost", (c) => c.vhost], ["Mode", (c) => (c.confirm ? "confirm " : "") + (c.transactional ? "tx" : "")],
      ["Prefetch", (c) => c.prefetch_count, true], ["Consumers", (c) => c.consumer_count, true], ["Unacked", (c) => c.messages_unacknowledged, true],
      ["Published", (c) => count(c, "publish"), true], ["Delivered", (c) => count(c, "deliver_get"), true], ["Acked", (c) => count(c, "ack"), true]], list, "No channels."));
}

async function exchanges(main, vhost, name) {
  if (name !== undefined) return exchange(main, vhost, name);
  const [list, o] = await Promise.all([get("/exchanges"), get("/overview")]);
  const types = (o.exchange_types || []).map((t) => el("option", { value: t.name }, t.name));
  main.append(el("h1", {}, "Exchanges"),
    table([["Vhost", (x) => x.vhost], ["Name", (x) => el("a", { class: "link", href: `#/exchanges/${enc(x.vhost)}/${enc(x.name || "amq.default")}` }, x.name || "(AMQP default)")],
      ["Type", (x) => x.type], ["Durable", (x) => bool(x.durable)], ["Policy", (x) => x.policy || ""]], list),
    el("h2", {}, "Add an exchange"),
    form(async (f) => {
      await api("PUT", `/exchanges/${enc(f.vhost.value)}/${enc(f.name.value)}`, { type: f.type.value, durable: f.durable.checked, auto_delete: false, internal: false, arguments: {} });
      toast("Declared exchange " + f.name.value); route();
    }, field("Vhost", el("select", { name: "vhost" }, await vhostOptions())), field("Name", el("input", { name: "name", required: true })),
    field("Type", el("select", { name: "type" }, types)), field("Durable", el("input", { type: "checkbox", name: "durable", checked: true })),
    el("button", { type: "submit", id: "add-exchange" }, "Add exchange")));
}

async function exchange(main, vhost, name) {
  const x = await get(`/exchanges/${enc(vhost)}/${enc(name)}`);
  const bindings = name === "amq.default" ? [] : await get(`/exchanges/${enc(vhost)}/${enc(name)}/bindings/source`);
  main.append(el("h1", {}, `Exchange ${x.name || "(AMQP default)"} `, el("span", { class: "muted" }, `${x.type} in ${vhost}`)),
    el("h2", {}, "Bindings"),
    table([["To", (b) => b.destination], ["Type", (b) => b.destination_type], ["Routing key", (b) => b.routing_key], ["Arguments", (b) => JSON.stringify(b.arguments)],
      ["", (b) => el("button", { class: "danger", onclick: async () => {
        try { await api("DELETE", `/bindings/${enc(vhost)}/e/${enc(name)}/${b.destination_type === "queue" ? "q" : "e"}/${enc(b.destination)}/${enc(b.properties_key)}`); route(); } catch (e) { toast(e.message, true); }
      } }, "Unbind")]], bindings),
    name === "amq.default" ? null : form(async (f) => {
      await api("POST", `/bindings/${enc(vhost)}/e/${enc(name)}/q/${enc(f.queue.value)}`, { routing_key: f.key.value, arguments: {} });
      toast("Bound"); route();
    }, field("To queue", el("input", { name: "queue", required: true })), field("Routing key", el("input", { name: "key" })), el("button", { type: "submit" }, "Bind")),
    el("h2", {}, "Publish a message"),
    form(async (f) => {
      const r = await api("POST", `/exchanges/${enc(vhost)}/${enc(name)}/publish`, { routing_key: f.key.value, payload: f.payload.value, payload_encoding: "string", properties: f.persistent.checked ? { delivery_mode: 2 } : {} });
      toast(r.routed ? "Message published." : "Message published but NOT routed.");
    }, field("Routing key", el("input", { name: "key" })), field("Payload", el("input", { name: "payload", size: 40 })),
    field("Persistent", el("input", { type: "checkbox", name: "persistent" })), el("button", { type: "submit", id: "publish" }, "Publish")));
}

async function queues(main, vhost, name) {
  if (name !== undefined) return queue(main, vhost, name);
  const list = await get("/queues");
  main.append(el("h1", {}, "Queues"),
    table([["Vhost", (q) => q.vhost], ["Name", (q) => el("a", { class: "link", href: `#/queues/${enc(q.vhost)}/${enc(q.name)}` }, q.name)],
      ["Durable", (q) => bool(q.durable)], ["Policy", (q) => q.policy || ""], ["Ready", (q) => q.messages_ready, true], ["Unacked", (q) => q.messages_unacknowledged, true],
      ["Consumers", (q) => q.consumers, true], ["In /s", (q) => rate(q, "publish"), true], ["Out /s", (q) => rate(q, "deliver_get"), true]], list, "No queues."),
    el("h2", {}, "Add a queue"),
    form(async (f) => {
      const args = f.args.value.trim() ? JSON.parse(f.args.value) : {};
      await api("PUT", `/queues/${enc(f.vhost.value)}/${enc(f.name.value)}`, { durable: f.durable.checked, auto_delete: false, arguments: args });
      toast("Declared queue " + f.name.value); route();
    }, field("Vhost", el("select", { name: "vhost" }, await vhostOptions())), field("Name", el("input", { name: "name", required: true, id: "queue-name" })),
    field("Durable", el("input", { type: "checkbox", name: "durable", checked: true })), field("Arguments (JSON)", el("input", { name: "args", placeholder: '{"x-max-length": 1000}', size: 30 })),
    el("button", { type: "submit", id: "add-queue" }, "Add queue")));
}

async function queue(main, vhost, name) {
  const q = await get(`/queues/${enc(vhost)}/${enc(name)}`);
  const bindings = await get(`/queues/${enc(vhost)}/${enc(name)}/bindings`);
  const out = el("div", { id: "messages" });
  main.append(el("h1", {}, `Queue ${q.name} `, el("span", { class: "muted" }, `in ${vhost}`)),
    el("div", { class: "cards" }, [["Ready", q.messages_ready], ["Unacked", q.messages_unacknowledged], ["Consumers", q.consumers],
      ["Memory", q.memory], ["Published", count(q, "publish")], ["Delivered", count(q, "deliver_get")], ["Acked", count(q, "ack")]]
      .map(([k, v]) => el("div", { class: "card" }, el("div", { class: "v" }, v), el("div", { class: "k" }, k)))),
    el("h2", {}, "Arguments and policy"), el("pre", {}, JSON.stringify({ arguments: q.arguments, policy: q.policy, durable: q.durable }, null, 2)),
    el("h2", {}, "Bindings"),
    table([["From", (b) => b.source || "(AMQP default)"], ["Routing key", (b) => b.routing_key]], bindings),
    el("h2", {}, "Get messages"),
    form(async (f) => {
      const msgs = await api("POST", `/queues/${enc(vhost)}/${enc(name)}/get`, { count: Number(f.count.value), ackmode: f.ackmode.value, encoding: "auto", truncate: 50000 });
      out.replaceChildren(msgs.length ? table([["Payload", (m) => m.payload], ["Exchange", (m) => m.exchange], ["Routing key", (m) => m.routing_key],
        ["Redelivered", (m) => bool(m.redelivered)], ["Properties", (m) => JSON.stringify(m.properties)]], msgs) : el("p", { class: "muted" }, "Queue is empty."));
    }, field("Messages", el("input", { name: "count", value: 1, size: 4 })),
    field("Ack mode", el("select", { name: "ackmode" }, ["ack_requeue_true", "ack_requeue_false", "reject_requeue_true", "reject_requeue_false"].map((m) => el("option", { value: m }, m)))),
    el("button", { type: "submit", id: "get-messages" }, "Get messages")),
    out,
    el("h2", {}, "Purge or delete"),
    el("div", {}, el("button", { class: "plain", id: "purge", onclick: async () => {
      try { await api("DELETE", `/queues/${enc(vhost)}/${enc(name)}/contents`); toast("Purged"); route(); } catch (e) { toast(e.message, true); }
    } }, "Purge messages"), " ",
    el("button", { class: "danger", id: "delete-queue", onclick: async () => {
      try { await api("DELETE", `/queues/${enc(vhost)}/${enc(name)}`); toast("Deleted queue " + name); location.hash = "#/queues"; } catch (e) { toast(e.message, true); }
    } }, "Delete queue")));
}

async function admin(main) {
  const [vhosts, users, perms, policies] = await Promise.all([get("/vhosts"), get("/users"), get("/permissions"), get("/policies")]);
  const del = (path, what) => el("button", { class: "danger", onclick: async () => {
    try { await api("DELETE", path); toast("Deleted " + what); route(); } catch (e) { toast(e.message, true); }
  } }, "Delete");
  main.append(el("h1", {}, "Admin"),
    el("h2", {}, "Virtual hosts"),
    table([["Name", (v) => v.name], ["Messages", (v) => v.messages, true], ["", (v) => del("/vhosts/" + enc(v.name), v.name)]], vhosts),
    form(async (f) => { await api("PUT", "/vhosts/" + enc(f.name.value), {}); route(); }, field("Name", el("input", { name: "name", required: true })), el("button", { type: "submit" }, "Add vhost")),
    el("h2", {}, "Users"),
    table([["Name", (u) => u.name], ["Tags", (u) => (u.tags || []).join(", ")], ["", (u) => del("/users/" + enc(u.name), u.name)]], users),
    form(async (f) => { await api("PUT", "/users/" + enc(f.name.value), { password: f.password.value, tags: f.tags.value }); route(); },
      field("Name", el("input", { name: "name", required: true })), field("Password", el("input", { name: "password", type: "password", required: true })),
      field("Tags", el("input", { name: "tags", placeholder: "administrator" })), el("button", { type: "submit" }, "Add user")),
    el("h2", {}, "Permissions"),
    table([["User", (p) => p.user], ["Vhost", (p) => p.vhost], ["Configure", (p) => p.configure], ["Write", (p) => p.write], ["Read", (p) => p.read],
      ["", (p) => del(`/permissions/${enc(p.vhost)}/${enc(p.user)}`, "permissions")]], perms),
    form(async (f) => { await api("PUT", `/permissions/${enc(f.vhost.value)}/${enc(f.user.value)}`, { configure: f.configure.value, write: f.write.value, read: f.read.value }); route(); },
      field("User", el("input", { name: "user", required: true })), field("Vhost", el("select", { name: "vhost" }, vhosts.map((v) => el("option", { value: v.name }, v.name)))),
      field("Configure", el("input", { name: "configure", value: ".*" })), field("Write", el("input", { name: "write", value: ".*" })), field("Read", el("input", { name: "read", value: ".*" })),
      el("button", { type: "submit" }, "Set permissions")),
    el("h2", {}, "Policies"),
    table([["Vhost", (p) => p.vhost], ["Name", (p) => p.name], ["Pattern", (p) => p.pattern], ["Apply to", (p) => p["apply-to"]], ["Priority", (p) => p.priority, true],
      ["Definition", (p) => JSON.stringify(p.definition)], ["", (p) => del(`/policies/${enc(p.vhost)}/${enc(p.name)}`, p.name)]], policies),
    form(async (f) => {
      await api("PUT", `/policies/${enc(f.vhost.value)}/${enc(f.name.value)}`, { pattern: f.pattern.value, "apply-to": f.applyto.value, priority: Number(f.priority.value || 0), definition: JSON.parse(f.definition.value || "{}") });
      route();
    }, field("Vhost", el("select", { name: "vhost" }, vhosts.map((v) => el("option", { value: v.name }, v.name)))), field("Name", el("input", { name: "name", required: true })),
    field("Pattern", el("input", { name: "pattern", required: true })), field("Apply to", el("select", { name: "applyto" }, ["all", "queues", "exchanges"].map((a) => el("option", { value: a }, a)))),
    field("Priority", el("input", { name: "priority", value: 0, size: 3 })), field("Definition (JSON)", el("input", { name: "definition", placeholder: '{"max-length": 1000}', size: 30 })),
    el("button", { type: "submit" }, "Add policy")));
}

async function definitions(main) {
  const area = el("textarea", { id: "import-json", placeholder: "Paste a definitions export (RabbitMQ's or Warren's) here" });
  main.append(el("h1", {}, "Definitions"),
    el("h2", {}, "Export"),
    el("button", { id: "export", onclick: async () => {
      try {
        const d = await get("/definitions");
        const a = el("a", { href: URL.createObjectURL(new Blob([JSON.stringify(d, null, 2)], { type: "application/json" })), download: "definitions.json" });
        document.body.append(a); a.click(); a.remove();
      } catch (e) { toast(e.message, true); }
    } }, "Download definitions.json"),
    el("h2", {}, "Import"),
    el("input", { type: "file", accept: "application/json", onchange: async (ev) => { area.value = await ev.target.files[0].text(); } }),
    area,
    el("button", { id: "import", onclick: async () => {
      try { await api("POST", "/definitions", JSON.parse(area.value)); toast("Definitions imported."); } catch (e) { toast(e.message, true); }
    } }, "Import"));
}

async function plugins(main) {
  const list = await get("/warren/plugins");
  main.append(el("h1", {}, "Plugins"),
    table([["Plugin", (p) => p.name], ["Kind", (p) => p.kind], ["Version", (p) => p.version || ""], ["WIT", (p) => (p.package && typeof p.package === "object" ? Object.values(p.package).join(" ") : p.package || "")],
      ["State", (p) => el("span", { class: p.state === "loaded" ? "ok" : "bad" }, p.state)], ["Calls", (p) => p.calls, true],
      ["Traps", (p) => p.traps, true], ["Timeouts", (p) => p.timeouts, true], ["Breaches", (p) => p.breaches, true], ["Reloads", (p) => p.reloads, true],
      ["Memory", (p) => p.memory, true], ["Quarantined entities", (p) => p.entities_quarantined, true],
      ["Used by", (p) => (p.entities || []).map((e) => e.type + " " + (e.name || e.consumer_tag) + (e.queue ? " on " + e.queue : "") + " (" + e.vhost + ")").join(", ")],
      ["", (p) => (p.state === "quarantined" || p.entities_quarantined ? el("button", { onclick: async () => {
        try { await api("DELETE", `/warren/plugins/${p.kind}/${enc(p.name)}/quarantine`); toast("Quarantine lifted"); route(); } catch (e) { toast(e.message, true); }
      } }, "Lift quarantine") : "")]], list, "No plugins loaded."));
}

const pages = { overview, connections, channels, exchanges, queues, admin, definitions, plugins };

async function route() {
  clearTimeout(state.timer);
  const main = document.getElementById("main");
  if (!state.auth) return login(main);
  const [page, ...rest] = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  const name = pages[page] ? page : "overview";
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.getAttribute("href") === "#/" + name));
  const next = el("div", {});
  try {
    await pages[name](next, ...rest);
    main.replaceChildren(next);
  } catch (e) {
    main.replaceChildren(el("p", { class: "bad" }, e.message));
  }
  // Lists refresh every 5 s (the rate sampling interval); pages with forms are left alone.
  if (["overview", "connections", "channels"].includes(name)) {
    state.timer = setTimeout(route, 5000);
  }
}

function login(main) {
  document.getElementById("who").textContent = "";
  main.replaceChildren(el("form", { class: "login", id: "login", onsubmit: async (ev) => {
    ev.preventDefault();
    const f = ev.target;
    state.auth = btoa(f.user.value + ":" + f.password.value);
    try {
      await get("/whoami");
      sessionStorage.setItem("warren-auth", state.auth);
      showWho(); route();
    } catch (e) {
      state.auth = null;
      toast("Login failed", true);
    }
  } }, el("h1", {}, "Warren"), el("label", {}, "Username", el("input", { name: "user", autocomplete: "username", required: true })),
  el("label", {}, "Password", el("input", { name: "password", type: "password", autocomplete: "current-password" })),
  el("button", { type: "submit" }, "Log in")));
}

async function showWho() {
  try {
    const w = await get("/whoami");
    document.getElementById("who").replaceChildren(`${w.name} (${(w.tags || []).join(", ")})`,
      el("button", { class: "plain", onclick: () => { sessionStorage.removeItem("warren-auth"); state.auth = null; route(); } }, "Log out"));
  } catch (e) { /* shown by the page */ }
}

window.addEventListener("hashchange", route);
if (state.auth) showWho();
route();
