//! Users, permissions and policies, read side (RabbitMQ 3.10.8's shapes): users and permissions
//! need `administrator`; policies need `policymaker` (or `administrator`) and show the vhosts the
//! caller may see.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use super::auth::Caller;
use super::error::ApiError;
use super::read::visible_vhost;
use super::Api;
use crate::auth::{Permission, User};

/// A user as RabbitMQ shows it (`/api/users`, definitions).
pub(crate) fn user_json(api: &Api, u: &User) -> Value {
    let limits = serde_json::to_value(api.broker.user_limits.get(&u.name)).unwrap_or_default();
    json!({
        "name": u.name,
        "password_hash": u.password_hash(),
        "hashing_algorithm": u.hashing_algorithm(),
        "tags": u.tags,
        "limits": limits,
    })
}

/// A permission as RabbitMQ shows it (`/api/permissions`, definitions).
pub(crate) fn permission_json(user: &str, vhost: &str, p: &Permission) -> Value {
    let [configure, write, read] = p.patterns();
    json!({
        "user": user,
        "vhost": vhost,
        "configure": configure,
        "write": write,
        "read": read,
    })
}

/// The permissions `keep(user, vhost)` selects, as RabbitMQ lists them.
fn permissions_where(api: &Api, keep: impl Fn(&str, &str) -> bool) -> Json<Value> {
    Json(Value::Array(
        api.broker
            .auth()
            .permissions()
            .into_iter()
            .filter(|(u, v, _)| keep(u, v))
            .map(|(u, v, p)| permission_json(u, v, p))
            .collect(),
    ))
}

/// `GET /api/users`.
pub(crate) async fn users(
    State(api): State<Arc<Api>>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    caller.administrator()?;
    Ok(Json(Value::Array(
        api.broker
            .auth()
            .users()
            .into_iter()
            .map(|u| user_json(&api, u))
            .collect(),
    )))
}

/// `GET /api/users/{name}`.
pub(crate) async fn user(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.administrator()?;
    let u = api
        .broker
        .auth()
        .user(&name)
        .cloned()
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(user_json(&api, &u)))
}

/// `GET /api/users/{name}/permissions`.
pub(crate) async fn user_permissions(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.administrator()?;
    api.broker
        .auth()
        .user(&name)
        .ok_or_else(ApiError::not_found)?;
    Ok(permissions_where(&api, |u, _| u == name))
}

/// `GET /api/permissions`.
pub(crate) async fn permissions(
    State(api): State<Arc<Api>>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    caller.administrator()?;
    Ok(permissions_where(&api, |_, _| true))
}

/// `GET /api/permissions/{vhost}/{user}`.
pub(crate) async fn permission(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    caller.administrator()?;
    let p = api
        .broker
        .auth()
        .permission(&user, &vhost)
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(permission_json(&user, &vhost, &p)))
}

/// `GET /api/vhosts/{vhost}/permissions`.
pub(crate) async fn vhost_permissions(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(vhost): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.administrator()?;
    let v = visible_vhost(&api, &caller, &vhost)?;
    Ok(permissions_where(&api, |_, vh| vh == v.name))
}

/// A vhost's policies as RabbitMQ shows them (`/api/policies`, definitions).
pub(crate) fn policies_json(v: &crate::vhost::VHost) -> Vec<Value> {
    v.policy_list()
        .into_iter()
        .map(|(name, p)| {
            json!({
                "vhost": v.name,
                "name": name,
                "pattern": p.pattern,
                "apply-to": p.apply_to,
                "definition": p.definition,
                "priority": p.priority,
            })
        })
        .collect()
}

fn policies_of(api: &Api, caller: &Caller, only: Option<&str>) -> Vec<Value> {
    api.broker
        .vhost_list()
        .into_iter()
        .filter(|v| caller.may_see(api, &v.name) && only.is_none_or(|o| o == v.name))
        .flat_map(|v| policies_json(&v))
        .collect()
}

/// `GET /api/policies`.
pub(crate) async fn policies(
    State(api): State<Arc<Api>>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    caller.policymaker()?;
    Ok(Json(Value::Array(policies_of(&api, &caller, None))))
}

/// `GET /api/policies/{vhost}`.
pub(crate) async fn policies_in(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(vhost): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.policymaker()?;
    let v = visible_vhost(&api, &caller, &vhost)?;
    Ok(Json(Value::Array(policies_of(
        &api,
        &caller,
        Some(&v.name),
    ))))
}

/// `GET /api/policies/{vhost}/{name}`.
pub(crate) async fn policy(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    caller.policymaker()?;
    let v = visible_vhost(&api, &caller, &vhost)?;
    policies_of(&api, &caller, Some(&v.name))
        .into_iter()
        .find(|p| p["name"] == name.as_str())
        .map(Json)
        .ok_or_else(ApiError::not_found)
}
