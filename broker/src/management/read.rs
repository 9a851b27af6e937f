//! The read side: overview, whoami, nodes, vhosts, queues and exchanges, in RabbitMQ 3.10's shapes
//! (fields checked against a running 3.10.8). Objects of vhosts the caller has no permissions in
//! are left out unless it sees all (`monitoring`, `administrator`). Message rates and per-object
//! message stats are not served yet (`message_stats` is empty).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::Json;
use serde_json::{json, Value};

use super::auth::Caller;
use super::error::ApiError;
use super::page;
use super::rates::Key;
use super::Api;
use crate::cluster::MemberState;
use crate::cluster::QueueFigures;
use crate::definitions::table_json;
use crate::exchange::Exchange;
use crate::queue::Queue;
use crate::vhost::VHost;

/// The API level Warren's answers follow (tools read `rabbitmq_version` for feature checks).
pub(crate) const RABBITMQ_VERSION: &str = "3.10.8";

/// The native exchange types, as `/api/overview` lists them.
const NATIVE_TYPES: [&str; 4] = ["direct", "fanout", "headers", "topic"];

fn visible(api: &Api, caller: &Caller) -> Vec<Arc<VHost>> {
    api.broker
        .vhost_list()
        .into_iter()
        .filter(|v| caller.may_see(api, &v.name))
        .collect()
}

/// The vhost `name` if it exists and the caller may see it (404 otherwise, as RabbitMQ).
pub(crate) fn visible_vhost(
    api: &Api,
    caller: &Caller,
    name: &str,
) -> Result<Arc<VHost>, ApiError> {
    api.broker
        .vhost(name)
        .filter(|v| caller.may_see(api, &v.name))
        .ok_or_else(ApiError::not_found)
}

/// The figures of the queues homed on other cluster nodes among `queues`, asked of their homes (an
/// empty map on a single node, or when none is homed elsewhere).
async fn home_figures<'a>(api: &Api, queues: impl IntoIterator<Item = &'a Arc<Queue>>) -> Homes {
    let Some(cluster) = api.broker.cluster.get() else {
        return HashMap::new();
    };
    let homes: BTreeSet<u64> = queues.into_iter().filter_map(|q| q.home()).collect();
    if homes.is_empty() {
        return HashMap::new();
    }
    cluster.home_figures(homes).await
}

/// What [`home_figures`] answered, by (vhost, queue name).
type Homes = HashMap<(String, String), QueueFigures>;

/// A queue's figures, node name and state wherever it lives: its own for a local queue; for a queue
/// homed on another cluster node, what that node answered in `homes`, the home's name, and `down`
/// (zeros) when the home did not answer.
fn figures(
    api: &Api,
    vhost: &str,
    q: &Queue,
    homes: &Homes,
) -> (QueueFigures, String, &'static str) {
    match q.home() {
        None => (QueueFigures::of(vhost, q), api.node().to_owned(), "running"),
        Some(home) => {
            let name = api
                .broker
                .cluster
                .get()
                .map_or_else(String::new, |c| c.name_of(home));
            match homes.get(&(vhost.to_owned(), q.name.to_string())) {
                Some(f) => (f.clone(), name, "running"),
                None => (QueueFigures::default(), name, "down"),
            }
        }
    }
}

/// A queue as RabbitMQ shows it (figures from [`figures`]).
fn queue_json(api: &Api, vhost: &str, q: &Queue, homes: &Homes) -> Value {
    let (f, node, state) = figures(api, vhost, q, homes);
    let stats = api.rates.message_stats_json(
        &Key::Queue(vhost.to_owned(), q.name.as_str().to_owned()),
        &q.stats().snapshot(),
    );
    let mut quorum = None;
    let mut node = node;
    if let (true, Some(c)) = (q.is_replicated(), api.broker.cluster.get()) {
        let (voters, leader, commit, term) = c.quorum.status();
        let names: Vec<String> = voters.iter().map(|id| c.name_of(*id)).collect();
        let online: Vec<String> = voters
            .iter()
            .filter(|id| **id == c.me() || c.links.is_up(**id))
            .map(|id| c.name_of(*id))
            .collect();
        node = leader.map_or_else(String::new, |l| c.name_of(l));
        quorum = Some(json!({
            "leader": node,
            "members": names,
            "online": online,
            "raft": {"commit_index": commit, "term": term},
        }));
    }
    let mut v = json!({
        "name": q.name.as_str(),
        "vhost": vhost,
        "type": if quorum.is_some() { "quorum" } else { "classic" },
        "durable": q.durable,
        "auto_delete": q.auto_delete,
        "exclusive": q.exclusive_owner.is_some(),
        "arguments": table_json(&q.arguments),
        "node": node,
        "state": state,
        "messages": u64::from(f.messages) + u64::from(f.unacked),
        "messages_ready": f.messages,
        "messages_unacknowledged": f.unacked,
        "consumers": f.consumers,
        "policy": q.policy().map(|p| p.to_string()),
        "message_bytes": f.message_bytes,
        "memory": f.memory,
        "idle_since": f.idle_since.map(idle_text),
        "message_stats": stats,
    });
    if let (Some(Value::Object(extra)), Some(o)) = (quorum, v.as_object_mut()) {
        o.extend(extra);
    }
    v
}

fn exchange_json(
    api: &Api,
    vhost: &str,
    x: &Exchange,
    stats: &HashMap<String, (u64, u64)>,
) -> Value {
    let n = stats.get(x.name.as_str()).copied().unwrap_or_default();
    let mut v = json!({
        "message_stats": api.rates.exchange_stats_json(vhost, x.name.as_str(), n),
        "name": x.name.as_str(),
        "vhost": vhost,
        "type": x.kind.as_str(),
        "durable": x.durable,
        "auto_delete": x.auto_delete,
        "internal": x.internal,
        "arguments": table_json(&x.arguments),
        "policy": x.policy().map(|p| p.to_string()),
    });
    // Plugin types: messages waiting in the delay store (the field RabbitMQ's delayed-message
    // exchange reports) and the entries of the type's key-value store (Warren's own).
    if let Some(entries) = x.kv_entries() {
        v["messages_delayed"] = json!(x.messages_delayed());
        v["plugin_store_entries"] = json!(entries);
    }
    v
}

/// The default exchange, which RabbitMQ lists with an empty name (and finds as `amq.default`).
fn default_exchange_json(api: &Api, vhost: &str, stats: &HashMap<String, (u64, u64)>) -> Value {
    let n = stats.get("").copied().unwrap_or_default();
    json!({
        "message_stats": api.rates.exchange_stats_json(vhost, "", n),
        "name": "",
        "vhost": vhost,
        "type": "direct",
        "durable": true,
        "auto_delete": false,
        "internal": false,
        "arguments": {},
    })
}

/// Ready and unacknowledged messages of `queues`.
fn totals(api: &Api, vhost: &str, queues: &[Arc<Queue>], homes: &Homes) -> (u64, u64, u64) {
    queues
        .iter()
        .fold((0, 0, 0), |(ready, unacked, consumers), q| {
            let c = figures(api, vhost, q, homes).0;
            (
                ready + u64::from(c.messages),
                unacked + u64::from(c.unacked),
                consumers + u64::from(c.consumers),
            )
        })
}

/// `GET /api/overview`.
pub(crate) async fn overview(State(api): State<Arc<Api>>, caller: Caller) -> Json<Value> {
    let vhosts = visible(&api, &caller);
    let message_stats = if caller.sees_all() {
        api.rates
            .message_stats_json(&Key::Node, &api.broker.message_stats(None))
    } else {
        let mut total = crate::stats::MessageStats::default();
        for v in &vhosts {
            total += api.broker.message_stats(Some(&v.name));
        }
        // No node-wide rates for a user who sees only some vhosts.
        api.rates
            .message_stats_json(&Key::Vhost(String::new()), &total)
    };
    let (mut ready, mut unacked, mut consumers, mut queues, mut exchanges) = (0, 0, 0, 0, 0);
    let lists: Vec<Vec<Arc<Queue>>> = vhosts.iter().map(|v| v.queue_list()).collect();
    let homes = home_figures(&api, lists.iter().flatten()).await;
    for (v, qs) in vhosts.iter().zip(lists) {
        let (r, u, c) = totals(&api, &v.name, &qs, &homes);
        (ready, unacked, consumers) = (ready + r, unacked + u, consumers + c);
        queues += qs.len();
        exchanges += v.exchange_list().len() + 1; // and the default exchange
    }
    let mut exchange_types: Vec<Value> = NATIVE_TYPES
        .iter()
        .map(|t| json!({ "name": t, "description": format!("AMQP {t} exchange, as per the AMQP specification"), "enabled": true }))
        .collect();
    for p in api.broker.plugins.snapshot() {
        if p.kind == crate::plugin::Kind::Exchange && p.state != "unavailable" {
            exchange_types.push(json!({ "name": p.name, "description": format!("Warren plugin {}", p.file.as_deref().map(|f| f.display().to_string()).unwrap_or_default()), "enabled": p.state == "loaded" }));
        }
    }
    let listeners: Vec<Value> = api
        .listeners
        .iter()
        .map(|l| json!({ "node": api.node(), "protocol": l.protocol, "ip_address": l.address.ip().to_string(), "port": l.address.port() }))
        .collect();
    Json(json!({
        "management_version": RABBITMQ_VERSION,
        "rabbitmq_version": RABBITMQ_VERSION,
        "product_name": "Warren",
        "product_version": env!("CARGO_PKG_VERSION"),
        "rates_mode": "basic",
        "cluster_name": cluster_name(&api),
        "node": api.node(),
        "warren_cluster": members(&api).iter().map(|m| json!({
            "name": m.name, "running": m.running, "leader": m.leader, "voter": m.voter,
        })).collect::<Vec<_>>(),
        "exchange_types": exchange_types,
        "listeners": listeners,
        "message_stats": message_stats,
        "queue_totals": {
            "messages": ready + unacked,
            "messages_ready": ready,
            "messages_unacknowledged": unacked,
        },
        "object_totals": {
            "connections": api.broker.connections.get(),
            "channels": api
                .broker
                .connection_table
                .list()
                .iter()
                .map(|c| u64::from(c.channel_count()))
                .sum::<u64>(),
            "consumers": consumers,
            "exchanges": exchanges,
            "queues": queues,
        },
    }))
}

/// `GET /api/whoami`.
pub(crate) async fn whoami(caller: Caller) -> Json<Value> {
    Json(json!({ "name": caller.name, "tags": caller.tags }))
}

fn node_json(api: &Api) -> Value {
    let alarms = *api.broker.alarms.borrow();
    json!({
        "name": api.node(),
        "type": "disc",
        "running": true,
        "os_pid": std::process::id().to_string(),
        "uptime": u64::try_from(api.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "processors": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "mem_alarm": alarms.memory,
        "disk_free_alarm": alarms.disk,
        "mem_limit": api.broker.alarm_limits.process_bytes,
        "mem_used": crate::memory::resident_bytes(),
        "disk_free_limit": api.broker.alarm_limits.disk_free_bytes,
        "partitions": [],
    })
}

/// The cluster's members; this node alone when it is not in a cluster.
fn members(api: &Api) -> Vec<MemberState> {
    match api.broker.cluster.get() {
        Some(c) => c.member_states(),
        None => vec![MemberState {
            name: api.node().to_owned(),
            running: true,
            leader: true,
            voter: true,
        }],
    }
}

/// RabbitMQ's default cluster name: the first node's name (here: the first in sorted order).
fn cluster_name(api: &Api) -> String {
    let mut names: Vec<String> = members(api).into_iter().map(|m| m.name).collect();
    names.sort();
    names
        .into_iter()
        .next()
        .unwrap_or_else(|| api.node().to_owned())
}

/// A cluster member other than this node, as far as this node knows it.
fn peer_json(name: &str, running: bool) -> Value {
    json!({ "name": name, "type": "disc", "running": running, "partitions": [] })
}

/// `GET /api/nodes` (every cluster member, this node first; `monitoring` or `administrator`).
pub(crate) async fn nodes(
    State(api): State<Arc<Api>>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    caller.monitoring()?;
    let list: Vec<Value> = members(&api)
        .into_iter()
        .map(|m| {
            if m.name == api.node() {
                node_json(&api)
            } else {
                peer_json(&m.name, m.running)
            }
        })
        .collect();
    Ok(Json(Value::Array(list)))
}

/// `GET /api/nodes/{node}`.
pub(crate) async fn node(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.monitoring()?;
    if name == api.node() {
        return Ok(Json(node_json(&api)));
    }
    match members(&api).into_iter().find(|m| m.name == name) {
        Some(m) => Ok(Json(peer_json(&m.name, m.running))),
        None => Err(ApiError::not_found()),
    }
}

fn vhost_json(api: &Api, v: &VHost, queues: &[Arc<Queue>], homes: &Homes) -> Value {
    let (ready, unacked, _) = totals(api, &v.name, queues, homes);
    let stats = api.rates.message_stats_json(
        &Key::Vhost(v.name.clone()),
        &api.broker.message_stats(Some(&v.name)),
    );
    json!({
        "name": v.name,
        "description": "",
        "tags": [],
        "metadata": { "description": "", "tags": [] },
        "default_queue_type": "classic",
        "tracing": false,
        "cluster_state": { api.node(): "running" },
        "messages": ready + unacked,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
        "message_stats": stats,
    })
}

/// RabbitMQ's `idle_since` text for wall-clock `ms` (UTC): `2024-03-19 9:45:38`.
fn idle_text(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year}-{month:02}-{day:02} {}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `GET /api/vhosts`.
pub(crate) async fn vhosts(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Query(q): Query<page::Query>,
) -> Result<Json<Value>, ApiError> {
    let vhosts = visible(&api, &caller);
    let lists: Vec<Vec<Arc<Queue>>> = vhosts.iter().map(|v| v.queue_list()).collect();
    let homes = home_figures(&api, lists.iter().flatten()).await;
    let items = vhosts
        .iter()
        .zip(&lists)
        .map(|(v, qs)| vhost_json(&api, v, qs, &homes))
        .collect();
    page::respond(items, &q).map(Json)
}

/// `GET /api/vhosts/{vhost}`.
pub(crate) async fn vhost(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let v = visible_vhost(&api, &caller, &name)?;
    let queues = v.queue_list();
    let homes = home_figures(&api, &queues).await;
    Ok(Json(vhost_json(&api, &v, &queues, &homes)))
}

async fn queues_of(api: &Api, vhosts: &[Arc<VHost>]) -> Vec<Value> {
    let lists: Vec<(&str, Vec<Arc<Queue>>)> = vhosts
        .iter()
        .map(|v| (v.name.as_str(), v.queue_list()))
        .collect();
    let homes = home_figures(api, lists.iter().flat_map(|(_, qs)| qs)).await;
    lists
        .iter()
        .flat_map(|(vhost, qs)| qs.iter().map(|q| queue_json(api, vhost, q, &homes)))
        .collect()
}

/// `GET /api/queues`.
pub(crate) async fn queues(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Query(q): Query<page::Query>,
) -> Result<Json<Value>, ApiError> {
    page::respond(queues_of(&api, &visible(&api, &caller)).await, &q).map(Json)
}

/// `GET /api/queues/{vhost}`.
pub(crate) async fn queues_in(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(q): Query<page::Query>,
) -> Result<Json<Value>, ApiError> {
    let v = visible_vhost(&api, &caller, &vhost)?;
    page::respond(queues_of(&api, &[v]).await, &q).map(Json)
}

/// `GET /api/queues/{vhost}/{name}`.
pub(crate) async fn queue(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let v = visible_vhost(&api, &caller, &vhost)?;
    let q = v
        .queue_list()
        .into_iter()
        .find(|q| q.name.as_str() == name)
        .ok_or_else(ApiError::not_found)?;
    let homes = home_figures(&api, [&q]).await;
    Ok(Json(queue_json(&api, &v.name, &q, &homes)))
}

fn exchanges_of(api: &Api, vhosts: &[Arc<VHost>]) -> Vec<Value> {
    vhosts
        .iter()
        .flat_map(|v| {
            let stats = api.broker.exchange_stats(&v.name);
            std::iter::once(default_exchange_json(api, &v.name, &stats))
                .chain(
                    v.exchange_list()
                        .iter()
                        .map(|x| exchange_json(api, &v.name, x, &stats)),
                )
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `GET /api/exchanges`.
pub(crate) async fn exchanges(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Query(q): Query<page::Query>,
) -> Result<Json<Value>, ApiError> {
    page::respond(exchanges_of(&api, &visible(&api, &caller)), &q).map(Json)
}

/// `GET /api/exchanges/{vhost}`.
pub(crate) async fn exchanges_in(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(q): Query<page::Query>,
) -> Result<Json<Value>, ApiError> {
    let v = visible_vhost(&api, &caller, &vhost)?;
    page::respond(exchanges_of(&api, &[v]), &q).map(Json)
}

/// `GET /api/exchanges/{vhost}/{name}` (`amq.default` is the default exchange).
pub(crate) async fn exchange(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let v = visible_vhost(&api, &caller, &vhost)?;
    if name == "amq.default" {
        return Ok(Json(default_exchange_json(
            &api,
            &v.name,
            &api.broker.exchange_stats(&v.name),
        )));
    }
    let x = v.find_exchange(&name).ok_or_else(ApiError::not_found)?;
    Ok(Json(exchange_json(
        &api,
        &v.name,
        &x,
        &api.broker.exchange_stats(&v.name),
    )))
}

/// Listings of features Warren does not have (`extensions`, `feature-flags`, `federation-links`):
/// empty, as RabbitMQ without the plugin.
pub(crate) async fn empty_list(_caller: Caller) -> Json<Value> {
    Json(json!([]))
}
