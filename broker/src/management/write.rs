//! Run-time changes of queues, exchanges and bindings (RabbitMQ 3.10.8's answers, checked against
//! a running node): `PUT` declares (201 created, 204 when an equivalent one exists, 400 with the
//! AMQP reason for an inequivalent one or an unknown type), `DELETE` deletes (204, 404), purge,
//! binding `POST` (201 with a `Location` whose last segment is the binding's `properties_key`) and
//! `DELETE` by that key. Each goes through the vhost's own declare, bind and delete (the AMQP
//! methods' code: same checks, persistence, policies) and needs the caller's AMQP permissions
//! (configure for declare/delete/purge, write on the destination and read on the source for a
//! binding), as RabbitMQ checks them.

use std::sync::Arc;

use amq_protocol::types::{FieldTable, ShortString};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;

use super::auth::Caller;
use super::bindings::{find, quote_segment};
use super::error::ApiError;
use super::Api;
use crate::auth::Access;
use crate::definitions::field_table;
use crate::error::AmqpError;
use crate::exchange::ExchangeFlags;
use crate::vhost::{BindingChange, QueueFlags, VHost};

/// An AMQP refusal as the API answers it: 404 for a missing object, 401 for access refused,
/// otherwise 400 `bad_request` with the AMQP reason (RabbitMQ's own texts).
fn refused(e: &AmqpError) -> ApiError {
    match e.reply_code() {
        404 => ApiError::not_found(),
        403 => ApiError::unauthorized_as("not_authorised", "Access refused."),
        _ => ApiError::bad_request(e.detail()),
    }
}

/// The vhost `name`, or 404 `vhost_not_found` (RabbitMQ's answer to a declare in a missing vhost).
pub(super) fn vhost_of(api: &Api, name: &str) -> Result<Arc<VHost>, ApiError> {
    api.broker
        .vhost(name)
        .ok_or_else(|| ApiError::not_found_as("not_found", "vhost_not_found"))
}

/// Whether the caller's permissions in `vhost` allow `access` to `resource`.
pub(super) fn allowed(
    api: &Api,
    caller: &Caller,
    vhost: &str,
    access: Access,
    resource: &str,
) -> Result<(), ApiError> {
    let ok = api
        .broker
        .auth()
        .permission(&caller.name, vhost)
        .is_some_and(|p| p.allows(access, resource));
    if ok {
        Ok(())
    } else {
        Err(ApiError::unauthorized_as(
            "not_authorised",
            "Access refused.",
        ))
    }
}

pub(super) fn object(body: &Bytes) -> Result<serde_json::Map<String, Value>, ApiError> {
    if body.is_empty() {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(ApiError::bad_request("not_json")),
    }
}

fn flag(body: &serde_json::Map<String, Value>, key: &str) -> Result<bool, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s == "true" || s == "false" => Ok(s == "true"),
        Some(other) => Err(ApiError::bad_request(format!(
            "'{key}' must be a boolean, got {other}"
        ))),
    }
}

fn arguments(body: &serde_json::Map<String, Value>) -> Result<FieldTable, ApiError> {
    match body.get("arguments") {
        None | Some(Value::Null) => Ok(FieldTable::default()),
        Some(Value::Object(o)) => Ok(field_table(o)),
        Some(other) => Err(ApiError::bad_request(format!(
            "'arguments' must be an object, got {other}"
        ))),
    }
}

fn name(s: &str) -> Result<ShortString, ApiError> {
    ShortString::try_new(s).map_err(|_| ApiError::bad_request("name longer than 255 octets"))
}

/// A fresh connection id: the API owns no exclusive queue.
fn conn_id(api: &Api) -> u64 {
    api.broker.next_connection_id()
}

/// `PUT /api/queues/{vhost}/{name}` with `{durable, auto_delete, arguments}`.
pub(crate) async fn put_queue(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((vhost, queue)): Path<(String, String)>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let body = object(&body)?;
    let v = vhost_of(&api, &vhost)?;
    allowed(&api, &caller, &v.name, Access::Configure, &queue)?;
    let existed = v.find_queue(&queue, 0).ok().flatten().is_some();
    let flags = QueueFlags {
        durable: flag(&body, "durable")?,
        exclusive: false,
        auto_delete: flag(&body, "auto_delete")?,
    };
    let (q, arguments) = (name(&queue)?, arguments(&body)?);
    // An idempotency plugin may still be loading at start: off the worker.
    crate::sync::off_worker(|| v.queue_declare(&q, false, flags, &arguments, conn_id(&api)))
        .map_err(|e| refused(&e))?;
    Ok(if existed {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::CREATED
    })
}

/// `if-empty` / `if-unused` of a delete.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct DeleteQuery {
    #[serde(rename = "if-empty")]
    if_empty: Option<String>,
    #[serde(rename = "if-unused")]
    if_unused: Option<String>,
}

/// `DELETE /api/queues/{vhost}/{name}` (`?if-empty=true`, `?if-unused=true`).
pub(crate) async fn delete_queue(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((vhost, queue)): Path<(String, String)>,
    Query(q): Query<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    let v = vhost_of(&api, &vhost)?;
    allowed(&api, &caller, &v.name, Access::Configure, &queue)?;
    if v.find_queue(&queue, 0).ok().flatten().is_none() {
        return Err(ApiError::not_found());
    }
    v.queue_delete(
        &queue,
        q.if_unused.as_deref() == Some("true"),
        q.if_empty.as_deref() == Some("true"),
        conn_id(&api),
    )
    .map_err(|e| refused(&e))?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/queues/{vhost}/{name}/contents`: purge.
pub(crate) async fn purge_queue(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((vhost, queue)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let v = vhost_of(&api, &vhost)?;
    allowed(&api, &caller, &v.name, Access::Read, &queue)?;
    v.queue_purge(&queue, conn_id(&api))
        .map_err(|e| refused(&e))?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /api/exchanges/{vhost}/{name}` with `{type, durable, auto_delete, internal, arguments}`.
pub(crate) async fn put_exchange(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((vhost, exchange)): Path<(String, String)>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let body = object(&body)?;
    let v = vhost_of(&api, &vhost)?;
    allowed(&api, &caller, &v.name, Access::Configure, &exchange)?;
    let kind = match body.get("type") {
        None | Some(Value::Null) => "direct".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "'type' must be a string, got {other}"
            )))
        }
    };
    let existed = v.find_exchange(&exchange).is_some();
    let flags = ExchangeFlags {
        durable: flag(&body, "durable")?,
        auto_delete: flag(&body, "auto_delete")?,
        internal: flag(&body, "internal")?,
    };
    let arguments = arguments(&body)?;
    let x = name(&exchange)?;
    // A plugin type may compile or call its plugin: off the worker.
    crate::sync::off_worker(|| v.exchange_declare(&x, &kind, false, flags, &arguments))
        .map_err(|e| refused(&e))?;
    Ok(if existed {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::CREATED
    })
}

/// `DELETE /api/exchanges/{vhost}/{name}` (`?if-unused=true`).
pub(crate) async fn delete_exchange(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((vhost, exchange)): Path<(String, String)>,
    Query(q): Query<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    let v = vhost_of(&api, &vhost)?;
    allowed(&api, &caller, &v.name, Access::Configure, &exchange)?;
    if v.find_exchange(&exchange).is_none() {
        return Err(ApiError::not_found());
    }
    v.exchange_delete(&exchange, q.if_unused.as_deref() == Some("true"))
        .map_err(|e| refused(&e))?;
    Ok(StatusCode::NO_CONTENT)
}

/// The destination kind of a binding path segment (`q` or `e`).
fn is_queue(kind: &str) -> Result<bool, ApiError> {
    match kind {
        "q" => Ok(true),
        "e" => Ok(false),
        _ => Err(ApiError::not_found()),
    }
}

/// `POST /api/bindings/{vhost}/e/{source}/{q|e}/{destination}` with `{routing_key, arguments}`:
/// 201 and `Location: {destination}/{properties_key}`.
pub(crate) async fn post_binding(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((vhost, source, kind, destination)): Path<(String, String, String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let to_queue = is_queue(&kind)?;
    let body = object(&body)?;
    let v = vhost_of(&api, &vhost)?;
    allowed(&api, &caller, &v.name, Access::Write, &destination)?;
    allowed(&api, &caller, &v.name, Access::Read, &source)?;
    let key = match body.get("routing_key") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "'routing_key' must be a string, got {other}"
            )))
        }
    };
    let arguments = arguments(&body)?;
    let key_short = name(&key)?;
    let done = crate::sync::off_worker(|| {
        if to_queue {
            v.queue_bind(
                &destination,
                &source,
                &key_short,
                &arguments,
                conn_id(&api),
                BindingChange::Bind,
            )
        } else {
            v.exchange_bind(
                &destination,
                &source,
                &key_short,
                &arguments,
                BindingChange::Bind,
            )
        }
    });
    done.map_err(|e| refused(&e))?;
    let props = super::bindings::properties_key(&key, &arguments);
    let location = format!("{}/{}", quote_segment(&destination), quote_segment(&props));
    Ok((StatusCode::CREATED, [(header::LOCATION, location)]).into_response())
}

/// `DELETE /api/bindings/{vhost}/e/{source}/{q|e}/{destination}/{props}`.
pub(crate) async fn delete_binding(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((vhost, source, kind, destination, props)): Path<(String, String, String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let to_queue = is_queue(&kind)?;
    let v = vhost_of(&api, &vhost)?;
    allowed(&api, &caller, &v.name, Access::Write, &destination)?;
    allowed(&api, &caller, &v.name, Access::Read, &source)?;
    let b = find(&v, &source, to_queue, &destination, &props).ok_or_else(ApiError::not_found)?;
    let done = crate::sync::off_worker(|| {
        if to_queue {
            v.queue_bind(
                &destination,
                &source,
                &b.key,
                &b.arguments,
                conn_id(&api),
                BindingChange::Unbind,
            )
        } else {
            v.exchange_bind(
                &destination,
                &source,
                &b.key,
                &b.arguments,
                BindingChange::Unbind,
            )
        }
    });
    done.map_err(|e| refused(&e))?;
    Ok(StatusCode::NO_CONTENT)
}
