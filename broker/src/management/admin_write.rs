//! Run-time administration over HTTP (RabbitMQ 3.10's answers): `PUT`/`DELETE` of vhosts, users and
//! permissions (`administrator`) and of policies (`policymaker`), `POST /api/users/bulk-delete`. `PUT`
//! answers 201 when it created the object and 204 when it replaced one; `DELETE` answers 204, or 404
//! for an unknown object. The changes themselves, their durability and their effects (connections
//! closed, policies re-applied) are `crate::administration`'s.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::Value;

use super::auth::Caller;
use super::error::ApiError;
use super::read::visible_vhost;
use super::write::object;
use super::Api;
use crate::administration::{AdminError, Credentials};
use crate::auth::HashingAlgorithm;

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::NotFound(_) => ApiError::not_found(),
            AdminError::BadRequest(reason) => ApiError::bad_request(reason),
            AdminError::Io(_) => ApiError::internal(e.to_string()),
            AdminError::Unavailable(reason) => ApiError::unavailable(reason),
        }
    }
}

fn created(created: bool) -> StatusCode {
    if created {
        StatusCode::CREATED
    } else {
        StatusCode::NO_CONTENT
    }
}

/// A string field; `None` when absent or null.
fn string(body: &serde_json::Map<String, Value>, key: &str) -> Result<Option<String>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ApiError::bad_request(format!(
            "'{key}' must be a string, got {other}"
        ))),
    }
}

/// Tags as RabbitMQ takes them: a comma-separated string or an array of strings.
fn tags(body: &serde_json::Map<String, Value>) -> Result<Vec<String>, ApiError> {
    match body.get("tags") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(s
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| {
                t.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| ApiError::bad_request("'tags' must be strings"))
            })
            .collect(),
        Some(other) => Err(ApiError::bad_request(format!(
            "'tags' must be a string or a list, got {other}"
        ))),
    }
}

/// `PUT /api/vhosts/{vhost}` (`description`, `tags` and `default_queue_type` are accepted and not
/// kept).
pub(crate) async fn put_vhost(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(vhost): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    caller.administrator()?;
    object(&body)?;
    let broker = Arc::clone(&api.broker);
    // Recovering what the data directory holds for the vhost reads files: off the worker.
    let made = crate::sync::off_worker(|| broker.put_vhost(&vhost))?;
    Ok(created(made))
}

/// `DELETE /api/vhosts/{vhost}`.
pub(crate) async fn delete_vhost(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(vhost): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.administrator()?;
    let broker = Arc::clone(&api.broker);
    crate::sync::off_worker(|| broker.delete_vhost(&vhost))?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/nodes/{node}` (Warren's; RabbitMQ does this with `rabbitmqctl
/// forget_cluster_node`): removes a stopped member from the cluster, deleting the queues homed on it
/// (`administrator`). 404 for a name that is not a member, 400 for a running node or this one, 503
/// without a majority.
pub(crate) async fn delete_node(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(node): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.administrator()?;
    let Some(cluster) = api.broker.cluster.get().cloned() else {
        return Err(if node == api.node() {
            ApiError::bad_request(format!(
                "node '{node}' is not in a cluster: there is nothing to remove it from"
            ))
        } else {
            ApiError::not_found()
        });
    };
    crate::sync::off_worker(|| cluster.forget(&node))?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /api/users/{name}` with `password` or `password_hash` (+ `hashing_algorithm`) and `tags`.
pub(crate) async fn put_user(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    caller.administrator()?;
    let body = object(&body)?;
    let credentials = match (string(&body, "password")?, string(&body, "password_hash")?) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "both_password_and_password_hash_are_provided",
            ))
        }
        (Some(p), None) => Credentials::Password(p),
        (None, Some(h)) => {
            let algorithm = match string(&body, "hashing_algorithm")? {
                None => HashingAlgorithm::default(),
                Some(a) => HashingAlgorithm::from_rabbit_name(&a).ok_or_else(|| {
                    ApiError::bad_request(format!("unsupported hashing algorithm '{a}'"))
                })?,
            };
            Credentials::Hash(h, algorithm)
        }
        (None, None) => Credentials::None,
    };
    let tags = tags(&body)?;
    Ok(created(api.broker.put_user(&name, credentials, tags)?))
}

/// `DELETE /api/users/{name}`.
pub(crate) async fn delete_user(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.administrator()?;
    api.broker.delete_user(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/users/bulk-delete` with `{"users": [names]}`; unknown names are skipped.
pub(crate) async fn bulk_delete_users(
    State(api): State<Arc<Api>>,
    caller: Caller,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    caller.administrator()?;
    let body = object(&body)?;
    let Some(Value::Array(names)) = body.get("users") else {
        return Err(ApiError::bad_request(
            "'users' must be a list of user names",
        ));
    };
    for n in names.iter().filter_map(Value::as_str) {
        match api.broker.delete_user(n) {
            Ok(()) | Err(AdminError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /api/permissions/{vhost}/{user}` with `configure`, `write`, `read`.
pub(crate) async fn put_permission(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    caller.administrator()?;
    let body = object(&body)?;
    let pattern = |key: &str| {
        string(&body, key)?.ok_or_else(|| ApiError::bad_request(format!("[{{key_missing,{key}}}]")))
    };
    let permission = crate::config::Permission {
        user,
        vhost,
        configure: pattern("configure")?,
        write: pattern("write")?,
        read: pattern("read")?,
    };
    let made = api.broker.put_permission(permission).map_err(|e| match e {
        // RabbitMQ answers a PUT naming an unknown user or vhost with 400.
        AdminError::NotFound(reason) => ApiError::bad_request(reason),
        other => other.into(),
    })?;
    Ok(created(made))
}

/// `DELETE /api/permissions/{vhost}/{user}`.
pub(crate) async fn delete_permission(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.administrator()?;
    api.broker.delete_permission(&vhost, &user)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /api/policies/{vhost}/{name}` with `pattern`, `definition`, `priority`, `apply-to`.
pub(crate) async fn put_policy(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    caller.policymaker()?;
    let v = visible_vhost(&api, &caller, &vhost)?;
    let body = object(&body)?;
    let pattern = string(&body, "pattern")?
        .ok_or_else(|| ApiError::bad_request("[{key_missing,pattern}]"))?;
    let definition = match body.get("definition") {
        Some(Value::Object(o)) => o.clone(),
        _ => return Err(ApiError::bad_request("[{key_missing,definition}]")),
    };
    let priority = match body.get("priority") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) => n
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .ok_or_else(|| ApiError::bad_request("'priority' must be an integer"))?,
        Some(Value::String(s)) => s
            .parse()
            .map_err(|_| ApiError::bad_request("'priority' must be an integer"))?,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "'priority' must be an integer, got {other}"
            )))
        }
    };
    let apply_to = string(&body, "apply-to")?.unwrap_or_else(|| "all".to_owned());
    let policy = crate::config::Policy {
        vhost: v.name.clone(),
        name,
        pattern,
        apply_to,
        definition,
        priority,
    };
    let broker = Arc::clone(&api.broker);
    // Re-applying a policy visits every queue of the vhost: off the worker.
    Ok(created(crate::sync::off_worker(|| {
        broker.put_policy(policy)
    })?))
}

/// `DELETE /api/policies/{vhost}/{name}`.
pub(crate) async fn delete_policy(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.policymaker()?;
    let v = visible_vhost(&api, &caller, &vhost)?;
    let broker = Arc::clone(&api.broker);
    crate::sync::off_worker(|| broker.delete_policy(&v.name, &name))?;
    Ok(StatusCode::NO_CONTENT)
}
