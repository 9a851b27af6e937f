//! Warren's own: `/api/warren/plugins`, every plugin the host knows with its state and counters
//! ([`crate::plugin::PluginStatus`]), and `DELETE /api/warren/plugins/{kind}/{name}/quarantine`
//! (administrator) to lift a quarantine without touching the file. Each plugin lists the
//! `entities` using it: exchanges of its type, queues naming it in `x-idempotency`, consumers naming
//! it in `x-filter`.

use std::collections::HashMap;
use std::sync::Arc;

use amq_protocol::types::AMQPValue;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::auth::Caller;
use super::error::ApiError;
use super::Api;
use crate::plugin::Kind;

/// `GET /api/warren/plugins` (`monitoring` or `administrator`).
pub(crate) async fn list(
    State(api): State<Arc<Api>>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    caller.monitoring()?;
    let mut list = serde_json::to_value(api.broker.plugins.snapshot())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let users = entities(&api);
    if let Value::Array(items) = &mut list {
        for item in items.iter_mut() {
            let key = (
                item["kind"].as_str().unwrap_or_default().to_owned(),
                item["name"].as_str().unwrap_or_default().to_owned(),
            );
            let found = users.get(&key).cloned().unwrap_or_default();
            if let Value::Object(o) = item {
                o.insert("entities".to_owned(), Value::Array(found));
            }
        }
    }
    Ok(Json(list))
}

/// The entities using each plugin, by (kind, name).
fn entities(api: &Api) -> HashMap<(String, String), Vec<Value>> {
    let mut out: HashMap<(String, String), Vec<Value>> = HashMap::new();
    let mut add = |kind: &str, name: &str, v: Value| {
        out.entry((kind.to_owned(), name.to_owned()))
            .or_default()
            .push(v);
    };
    for v in api.broker.vhost_list() {
        for x in v.exchange_list() {
            add(
                "exchange",
                x.kind.as_str(),
                json!({ "type": "exchange", "vhost": v.name, "name": x.name.as_str() }),
            );
        }
        for q in v.queue_list() {
            if let Some(name) = q
                .arguments
                .inner()
                .get("x-idempotency")
                .and_then(|a| match a {
                    AMQPValue::LongString(s) => {
                        std::str::from_utf8(s.as_bytes()).ok().map(str::to_owned)
                    }
                    AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
                    _ => None,
                })
            {
                add(
                    "idempotency",
                    &name,
                    json!({ "type": "queue", "vhost": v.name, "name": q.name.as_str() }),
                );
            }
        }
    }
    for c in api.broker.connection_table.list() {
        let vhost = c.opened.get().map(|o| o.vhost.clone()).unwrap_or_default();
        for ch in c.channel_list() {
            for (consumer, queue) in ch.consumer_list() {
                if let Some(f) = &consumer.filter {
                    add(
                        "filter",
                        f.plugin(),
                        json!({ "type": "consumer", "vhost": vhost, "queue": queue.name.as_str(), "consumer_tag": consumer.tag.as_str() }),
                    );
                }
            }
        }
    }
    out
}

/// `DELETE /api/warren/plugins/{kind}/{name}/quarantine`: 204, or 404 for a plugin not loaded.
pub(crate) async fn lift_quarantine(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((kind, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.administrator()?;
    let kind = match kind.as_str() {
        "exchange" => Kind::Exchange,
        "filter" => Kind::Filter,
        "idempotency" => Kind::Idempotency,
        _ => return Err(ApiError::not_found()),
    };
    if api
        .broker
        .plugins
        .lift_quarantine(kind, &name, &caller.name)
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found())
    }
}
