//! `/api/health/checks/*` (RabbitMQ docs/http-api-reference.md §Health Check Endpoints;
//! `rabbit_mgmt_wm_health_check_*.erl`): 200 `{"status":"ok"}`, or 503
//! `{"status":"failed","reason":…}` with what is missing.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::auth::Caller;
use super::error::ApiError;
use super::Api;

fn failed(body: Value) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

/// Checks with nothing that can fail on a single running node (`virtual-hosts`: every vhost runs;
/// `is-in-service`, `ready-to-serve-clients`, `node-is-quorum-critical`).
pub(crate) async fn ok(_caller: Caller) -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `aliveness-test/{vhost}`: a no-op since RabbitMQ 4.1; ok for an existing vhost.
pub(crate) async fn aliveness(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(vhost): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if api.broker.vhost(&vhost).is_none() || !caller.may_see(&api, &vhost) {
        return Err(ApiError::not_found());
    }
    Ok(Json(json!({ "status": "ok" })))
}

/// `alarms` and `local-alarms`: 503 while the memory or disk alarm is raised.
pub(crate) async fn alarms(State(api): State<Arc<Api>>, _caller: Caller) -> Response {
    let state = *api.broker.alarms.borrow();
    let mut alarms = Vec::new();
    if state.memory {
        alarms.push(json!({ "node": api.node(), "resource": "memory" }));
    }
    if state.disk {
        alarms.push(json!({ "node": api.node(), "resource": "disk" }));
    }
    if alarms.is_empty() {
        Json(json!({ "status": "ok" })).into_response()
    } else {
        failed(json!({
            "status": "failed",
            "reason": "resource alarm(s) in effect in the cluster",
            "alarms": alarms,
        }))
    }
}

/// `port-listener/{port}`: whether the node listens on `port`.
pub(crate) async fn port_listener(
    State(api): State<Arc<Api>>,
    _caller: Caller,
    Path(port): Path<String>,
) -> Result<Response, ApiError> {
    let port: u16 = port
        .parse()
        .map_err(|_| ApiError::bad_request(format!("'{port}' is not a port number")))?;
    let ports: Vec<u16> = api.listeners.iter().map(|l| l.address.port()).collect();
    Ok(if ports.contains(&port) {
        Json(json!({ "status": "ok", "port": port })).into_response()
    } else {
        failed(json!({
            "status": "failed",
            "reason": "No active listener",
            "missing": port,
            "ports": ports,
        }))
    })
}

/// RabbitMQ's names for one protocol (`amqp091` is `amqp`, `amqps` is `amqp/ssl`).
fn canonical(protocol: &str) -> &str {
    match protocol {
        "amqp091" | "amqp0-9-1" => "amqp",
        "amqps" | "amqp091/ssl" => "amqp/ssl",
        other => other,
    }
}

/// `protocol-listener/{protocols}`: whether the node listens for each of the (comma-separated)
/// protocols.
pub(crate) async fn protocol_listener(
    State(api): State<Arc<Api>>,
    _caller: Caller,
    Path(protocols): Path<String>,
) -> Response {
    let active: Vec<&str> = api.listeners.iter().map(|l| l.protocol).collect();
    let missing: Vec<&str> = protocols
        .split(',')
        .map(str::trim)
        .filter(|p| !active.contains(&canonical(p)))
        .collect();
    if missing.is_empty() {
        Json(json!({ "status": "ok", "protocol": protocols })).into_response()
    } else {
        failed(json!({
            "status": "failed",
            "reason": "No active listener",
            "missing": missing.join(","),
            "protocols": active,
        }))
    }
}
