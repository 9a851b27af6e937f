//! HTTP Basic authentication against the broker's users, and RabbitMQ's tag rules
//! (docs/management.md "Permissions"): `management` (and every other tag: `policymaker`,
//! `monitoring`, `administrator`) may use the API and sees the vhosts it has permissions in;
//! `monitoring` and `administrator` see every vhost; administration needs `administrator`. A user
//! limited to loopback (`loopback_users`) is limited over HTTP too.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

use super::error::{challenge, ApiError};
use super::Api;

/// Tags that let a user into the management API at all.
const MANAGEMENT_TAGS: [&str; 4] = ["management", "policymaker", "monitoring", "administrator"];

/// The authenticated user of a request.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// User name.
    pub(crate) name: String,
    /// The user's tags.
    pub(crate) tags: Vec<String>,
}

impl Caller {
    fn has(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }

    /// Sees every vhost and every object (`monitoring`, `administrator`).
    pub(crate) fn sees_all(&self) -> bool {
        self.has("administrator") || self.has("monitoring")
    }

    /// May see the objects of `vhost`: with permissions there, or seeing all.
    pub(crate) fn may_see(&self, api: &Api, vhost: &str) -> bool {
        self.sees_all() || api.broker.auth().permission(&self.name, vhost).is_some()
    }

    /// Requires the `administrator` tag.
    ///
    /// # Errors
    /// 401 `Not administrator user`, as RabbitMQ.
    pub(crate) fn administrator(&self) -> Result<(), ApiError> {
        if self.has("administrator") {
            Ok(())
        } else {
            Err(ApiError::forbidden("Not administrator user"))
        }
    }

    /// Requires `policymaker` or `administrator`.
    ///
    /// # Errors
    /// 401 `Not policymaker user`.
    pub(crate) fn policymaker(&self) -> Result<(), ApiError> {
        if self.has("administrator") || self.has("policymaker") {
            Ok(())
        } else {
            Err(ApiError::forbidden("Not policymaker user"))
        }
    }

    /// Requires `monitoring` or `administrator`.
    ///
    /// # Errors
    /// 401 `Not monitor user`, as RabbitMQ.
    pub(crate) fn monitoring(&self) -> Result<(), ApiError> {
        if self.sees_all() {
            Ok(())
        } else {
            Err(ApiError::forbidden("Not monitor user"))
        }
    }
}

/// The user and password of a `Basic` Authorization header.
fn credentials(parts: &Parts) -> Option<(String, String)> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

impl FromRequestParts<Arc<Api>> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<Self, Response> {
        if !parts.headers.contains_key(header::AUTHORIZATION) {
            return Err(challenge());
        }
        let Some((name, password)) = credentials(parts) else {
            return Err(ApiError::unauthorized("Login failed").into_response());
        };
        let from_loopback = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .is_some_and(|ConnectInfo(peer)| peer.ip().is_loopback());
        let user = api
            .broker
            .auth()
            .authenticate(&name, &password, from_loopback)
            .cloned()
            .ok_or_else(|| ApiError::unauthorized("Login failed").into_response())?;
        if !user
            .tags
            .iter()
            .any(|t| MANAGEMENT_TAGS.contains(&t.as_str()))
        {
            return Err(ApiError::unauthorized("Not management user").into_response());
        }
        Ok(Caller {
            name: user.name.clone(),
            tags: user.tags.clone(),
        })
    }
}
