//! Warren's own: `/api/warren/plugins`, every plugin the host knows with its state and counters
//! ([`crate::plugin::PluginStatus`]), and `DELETE /api/warren/plugins/{kind}/{name}/quarantine`
//! (administrator) to lift a quarantine without touching the file.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::Value;

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
    serde_json::to_value(api.broker.plugins.snapshot())
        .map(Json)
        .map_err(|e| ApiError::bad_request(e.to_string()))
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
