//! Client connections: `GET /api/connections[/{name}]`, `GET /api/vhosts/{vhost}/connections`,
//! `DELETE /api/connections/{name}` (closed with 320 CONNECTION_FORCED and the request's `X-Reason`
//! header, else RabbitMQ's "Closed via management plugin"). A `management` user sees and closes only
//! its own connections; `monitoring` and `administrator` see all, `administrator` closes any
//! (RabbitMQ's rules). Connections still in the handshake are not listed.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};

use super::auth::Caller;
use super::error::ApiError;
use super::page;
use super::Api;
use crate::definitions::table_json;
use crate::tracking::ConnectionInfo;

/// RabbitMQ's reason for a close asked through the API without `X-Reason`.
const DEFAULT_REASON: &str = "Closed via management plugin";

fn connection_json(api: &Api, c: &ConnectionInfo) -> Option<Value> {
    let o = c.opened.get()?;
    Some(json!({
        "name": c.name(),
        "node": api.node(),
        "vhost": o.vhost,
        "user": o.user,
        "state": "running",
        "type": "network",
        "protocol": "AMQP 0-9-1",
        "ssl": c.tls,
        "peer_host": c.peer.ip().to_string(),
        "peer_port": c.peer.port(),
        "host": c.local.ip().to_string(),
        "port": c.local.port(),
        "connected_at": c.connected_at,
        "channels": c.channel_count(),
        "client_properties": table_json(&o.client_properties),
        "auth_mechanism": o.auth_mechanism,
        "timeout": o.heartbeat,
        "frame_max": o.frame_max,
        "channel_max": o.channel_max,
    }))
}

/// The opened connections the caller may see (its own unless it sees all), in `vhost` if given.
pub(super) fn visible(api: &Api, caller: &Caller, vhost: Option<&str>) -> Vec<Arc<ConnectionInfo>> {
    api.broker
        .connection_table
        .list()
        .into_iter()
        .filter(|c| {
            c.opened.get().is_some_and(|o| {
                (caller.sees_all() || o.user == caller.name) && vhost.is_none_or(|v| v == o.vhost)
            })
        })
        .collect()
}

/// `GET /api/connections`.
pub(crate) async fn list(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Query(q): Query<page::Query>,
) -> Result<Json<Value>, ApiError> {
    let items = visible(&api, &caller, None)
        .iter()
        .filter_map(|c| connection_json(&api, c))
        .collect();
    page::respond(items, &q).map(Json)
}

/// `GET /api/vhosts/{vhost}/connections`.
pub(crate) async fn in_vhost(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(vhost): Path<String>,
) -> Result<Json<Value>, ApiError> {
    super::read::visible_vhost(&api, &caller, &vhost)?;
    Ok(Json(Value::Array(
        visible(&api, &caller, Some(&vhost))
            .iter()
            .filter_map(|c| connection_json(&api, c))
            .collect(),
    )))
}

fn find(api: &Api, caller: &Caller, name: &str) -> Result<Arc<ConnectionInfo>, ApiError> {
    visible(api, caller, None)
        .into_iter()
        .find(|c| c.name() == name)
        .ok_or_else(ApiError::not_found)
}

/// `GET /api/connections/{name}`.
pub(crate) async fn one(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let c = find(&api, &caller, &name)?;
    connection_json(&api, &c)
        .map(Json)
        .ok_or_else(ApiError::not_found)
}

/// `DELETE /api/connections/{name}`: 204; the connection closes with 320 and the reason.
pub(crate) async fn close(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let c = find(&api, &caller, &name)?;
    let own = c.opened.get().is_some_and(|o| o.user == caller.name);
    if !own {
        caller.administrator()?;
    }
    let reason = headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .filter(|r| !r.is_empty())
        .unwrap_or(DEFAULT_REASON);
    c.close_with(reason);
    Ok(StatusCode::NO_CONTENT)
}
