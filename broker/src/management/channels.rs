//! Channels and consumers (RabbitMQ 3.10.8's shapes): `GET /api/channels`, `/api/channels/{name}`,
//! `/api/vhosts/{vhost}/channels`, `/api/connections/{name}/channels`, `/api/consumers`,
//! `/api/consumers/{vhost}`. A channel is named `CONNECTION (NUMBER)`; the same visibility as
//! connections applies (a `management` user sees its own). Channel `message_stats` come from the
//! channel's counters, with rates.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::Json;
use serde_json::{json, Value};

use super::auth::Caller;
use super::connections::visible;
use super::error::ApiError;
use super::page;
use super::rates::Key;
use super::Api;
use crate::channel::ChannelShared;
use crate::definitions::table_json;
use crate::tracking::ConnectionInfo;

fn channel_name(c: &ConnectionInfo, number: u16) -> String {
    format!("{} ({number})", c.name())
}

fn channel_json(api: &Api, c: &ConnectionInfo, ch: &ChannelShared) -> Value {
    let o = c.opened.get();
    let relaxed = std::sync::atomic::Ordering::Relaxed;
    json!({
        "name": channel_name(c, ch.id),
        "node": api.node(),
        "number": ch.id,
        "user": o.map(|o| o.user.as_str()),
        "vhost": o.map(|o| o.vhost.as_str()),
        "state": "running",
        "connection_details": {
            "name": c.name(),
            "peer_host": c.peer.ip().to_string(),
            "peer_port": c.peer.port(),
        },
        "consumer_count": ch.consumer_list().len(),
        "messages_unacknowledged": ch.unacked_count(),
        "messages_unconfirmed": 0,
        "messages_uncommitted": 0,
        "acks_uncommitted": 0,
        "prefetch_count": ch.prefetch_count.load(relaxed),
        "global_prefetch_count": ch.global_prefetch_count(),
        "confirm": ch.confirm.load(relaxed),
        "transactional": ch.transactional.load(relaxed),
        "message_stats": api.rates.message_stats_json(&Key::Channel(c.id, ch.id), &ch.stats.snapshot()),
    })
}

fn channels_of(api: &Api, conns: &[Arc<ConnectionInfo>]) -> Vec<Value> {
    conns
        .iter()
        .flat_map(|c| {
            c.channel_list()
                .into_iter()
                .map(|ch| channel_json(api, c, &ch))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `GET /api/channels`.
pub(crate) async fn list(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Query(q): Query<page::Query>,
) -> Result<Json<Value>, ApiError> {
    page::respond(channels_of(&api, &visible(&api, &caller, None)), &q).map(Json)
}

/// `GET /api/vhosts/{vhost}/channels`.
pub(crate) async fn in_vhost(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(q): Query<page::Query>,
) -> Result<Json<Value>, ApiError> {
    super::read::visible_vhost(&api, &caller, &vhost)?;
    page::respond(channels_of(&api, &visible(&api, &caller, Some(&vhost))), &q).map(Json)
}

/// `GET /api/connections/{name}/channels`.
pub(crate) async fn of_connection(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let conns: Vec<Arc<ConnectionInfo>> = visible(&api, &caller, None)
        .into_iter()
        .filter(|c| c.name() == name)
        .collect();
    if conns.is_empty() {
        return Err(ApiError::not_found());
    }
    Ok(Json(Value::Array(channels_of(&api, &conns))))
}

/// `GET /api/channels/{name}`.
pub(crate) async fn one(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    for c in visible(&api, &caller, None) {
        for ch in c.channel_list() {
            if channel_name(&c, ch.id) == name {
                return Ok(Json(channel_json(&api, &c, &ch)));
            }
        }
    }
    Err(ApiError::not_found())
}

fn consumers_of(api: &Api, conns: &[Arc<ConnectionInfo>]) -> Vec<Value> {
    let mut out = Vec::new();
    for c in conns {
        let Some(o) = c.opened.get() else { continue };
        for ch in c.channel_list() {
            for (consumer, queue) in ch.consumer_list() {
                out.push(json!({
                    "consumer_tag": consumer.tag.as_str(),
                    "queue": { "name": queue.name.as_str(), "vhost": o.vhost },
                    "channel_details": {
                        "name": channel_name(c, ch.id),
                        "number": ch.id,
                        "node": api.node(),
                        "connection_name": c.name(),
                        "peer_host": c.peer.ip().to_string(),
                        "peer_port": c.peer.port(),
                        "user": o.user,
                    },
                    "ack_required": !consumer.no_ack,
                    "exclusive": consumer.exclusive,
                    "prefetch_count": consumer.prefetch,
                    "arguments": table_json(&consumer.arguments),
                    "active": true,
                    "activity_status": "up",
                }));
            }
        }
    }
    out
}

/// `GET /api/consumers`.
pub(crate) async fn consumers(State(api): State<Arc<Api>>, caller: Caller) -> Json<Value> {
    Json(Value::Array(consumers_of(
        &api,
        &visible(&api, &caller, None),
    )))
}

/// `GET /api/consumers/{vhost}`.
pub(crate) async fn consumers_in(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(vhost): Path<String>,
) -> Result<Json<Value>, ApiError> {
    super::read::visible_vhost(&api, &caller, &vhost)?;
    Ok(Json(Value::Array(consumers_of(
        &api,
        &visible(&api, &caller, Some(&vhost)),
    ))))
}
