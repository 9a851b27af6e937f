//! Definitions import (`POST /api/definitions`, `POST /api/definitions/{vhost}`: 204, or 400 naming
//! the object refused) and export (`GET /api/definitions`, `GET /api/definitions/{vhost}`; both
//! `administrator`), in
//! RabbitMQ 3.10.8's format as its own export shows it: users, vhosts, permissions, vhost limits as
//! `vhost-limits` parameters, policies, and the queues, exchanges and bindings a client declared
//! (not exclusive queues, `amq.*` exchanges, the default exchange or its implicit bindings). It
//! loads back into Warren (`--definitions`) and into RabbitMQ 3.10 (plugin exchange types only where
//! the same type exists there).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::auth::Caller;
use super::error::ApiError;
use super::read::{visible_vhost, RABBITMQ_VERSION};
use super::Api;
use crate::definitions::{table_json, Definitions};
use crate::exchange::Destination;
use crate::vhost::VHost;

/// One vhost's queues, exchanges, bindings, policies and limit parameters; `with_vhost` adds each
/// object's `vhost` field (the whole-broker form).
struct Objects {
    queues: Vec<Value>,
    exchanges: Vec<Value>,
    bindings: Vec<Value>,
    policies: Vec<Value>,
    parameters: Vec<Value>,
}

fn objects(v: &VHost, with_vhost: bool) -> Objects {
    let tag = |mut o: Value| {
        if with_vhost {
            if let Value::Object(m) = &mut o {
                m.insert("vhost".into(), json!(v.name));
            }
        }
        o
    };
    let queues = v
        .queue_list()
        .iter()
        .filter(|q| q.exclusive_owner.is_none())
        .map(|q| {
            tag(json!({
                "name": q.name.as_str(),
                "durable": q.durable,
                "auto_delete": q.auto_delete,
                "arguments": table_json(&q.arguments),
            }))
        })
        .collect();
    let mut exchanges = Vec::new();
    let mut bindings = Vec::new();
    for x in v.exchange_list() {
        for b in x.bindings() {
            let (destination, destination_type) = match &b.destination {
                Destination::Queue(q) if q.exclusive_owner.is_some() => continue,
                Destination::Queue(q) => (q.name.as_str().to_owned(), "queue"),
                Destination::Exchange(e) => (e.as_str().to_owned(), "exchange"),
            };
            bindings.push(tag(json!({
                "source": x.name.as_str(),
                "destination": destination,
                "destination_type": destination_type,
                "routing_key": b.key.as_str(),
                "arguments": table_json(&b.arguments),
            })));
        }
        if x.name.as_str().starts_with("amq.") {
            continue;
        }
        exchanges.push(tag(json!({
            "name": x.name.as_str(),
            "type": x.kind.as_str(),
            "durable": x.durable,
            "auto_delete": x.auto_delete,
            "internal": x.internal,
            "arguments": table_json(&x.arguments),
        })));
    }
    let policies = super::admin::policies_json(v);
    // Vhost limits as RabbitMQ exports them: a `vhost-limits` runtime parameter.
    let parameters = match serde_json::to_value(v.limits()) {
        Ok(Value::Object(value)) if !value.is_empty() => vec![json!({
            "vhost": v.name,
            "component": "vhost-limits",
            "name": "limits",
            "value": value,
        })],
        _ => Vec::new(),
    };
    Objects {
        queues,
        exchanges,
        bindings,
        policies,
        parameters,
    }
}

/// `GET /api/definitions`: the whole broker.
pub(crate) async fn export(
    State(api): State<Arc<Api>>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    caller.administrator()?;
    let auth = api.broker.auth();
    let users: Vec<Value> = auth
        .users()
        .into_iter()
        .map(|u| super::admin::user_json(&api, u))
        .collect();
    let permissions: Vec<Value> = auth
        .permissions()
        .into_iter()
        .map(|(user, vhost, p)| super::admin::permission_json(user, vhost, p))
        .collect();
    let vhosts = api.broker.vhost_list();
    let mut all = Objects {
        queues: Vec::new(),
        exchanges: Vec::new(),
        bindings: Vec::new(),
        policies: Vec::new(),
        parameters: Vec::new(),
    };
    for v in &vhosts {
        let o = objects(v, true);
        all.queues.extend(o.queues);
        all.exchanges.extend(o.exchanges);
        all.bindings.extend(o.bindings);
        all.policies.extend(o.policies);
        all.parameters.extend(o.parameters);
    }
    Ok(Json(json!({
        "rabbit_version": RABBITMQ_VERSION,
        "rabbitmq_version": RABBITMQ_VERSION,
        "product_name": "Warren",
        "product_version": env!("CARGO_PKG_VERSION"),
        "users": users,
        "vhosts": vhosts.iter().map(|v| json!({ "name": v.name })).collect::<Vec<_>>(),
        "permissions": permissions,
        "topic_permissions": [],
        "parameters": all.parameters,
        "global_parameters": [],
        "policies": all.policies,
        "queues": all.queues,
        "exchanges": all.exchanges,
        "bindings": all.bindings,
    })))
}

/// `GET /api/definitions/{vhost}`: one vhost's objects, without `vhost` fields.
pub(crate) async fn export_vhost(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(vhost): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.administrator()?;
    let v = visible_vhost(&api, &caller, &vhost)?;
    let o = objects(&v, false);
    Ok(Json(json!({
        "rabbit_version": RABBITMQ_VERSION,
        "parameters": o.parameters,
        "policies": o.policies,
        "queues": o.queues,
        "exchanges": o.exchanges,
        "bindings": o.bindings,
    })))
}

/// Parses a posted definitions document: JSON, as `rabbitmqadmin import` and the UI send it.
fn posted(body: &Bytes) -> Result<Value, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(ApiError::bad_request("definitions must be a JSON object")),
    }
}

fn import_value(api: &Api, value: Value) -> Result<StatusCode, ApiError> {
    let defs =
        Definitions::from_value(value).map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
    crate::sync::off_worker(|| api.broker.import_definitions(&defs))?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/definitions`: imports a whole-broker export (RabbitMQ's or Warren's).
pub(crate) async fn import(
    State(api): State<Arc<Api>>,
    caller: Caller,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    caller.administrator()?;
    import_value(&api, posted(&body)?)
}

/// `POST /api/definitions/{vhost}`: imports a per-vhost export into `vhost` (its objects carry no
/// `vhost` field; users, vhosts and permissions are not part of it).
pub(crate) async fn import_vhost(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(vhost): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    caller.administrator()?;
    let v = visible_vhost(&api, &caller, &vhost)?;
    let mut value = posted(&body)?;
    if let Value::Object(doc) = &mut value {
        doc.remove("users");
        doc.remove("vhosts");
        doc.remove("permissions");
        for key in ["queues", "exchanges", "bindings", "policies", "parameters"] {
            if let Some(Value::Array(items)) = doc.get_mut(key) {
                for item in items.iter_mut().filter_map(Value::as_object_mut) {
                    item.insert("vhost".to_owned(), Value::String(v.name.clone()));
                }
            }
        }
    }
    import_value(&api, value)
}
