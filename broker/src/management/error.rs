//! RabbitMQ's error bodies: `{"error": …, "reason": …}` with the status code
//! (`rabbit_mgmt_util.erl` `bad_request`, `not_found`, `not_authorised`).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// The realm RabbitMQ names in `WWW-Authenticate`.
const REALM: &str = "Basic realm=\"RabbitMQ Management\"";

/// An API error as RabbitMQ sends it.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    error: &'static str,
    reason: String,
}

impl ApiError {
    /// 404 `Object Not Found`, as RabbitMQ answers any unknown object or path.
    pub(crate) fn not_found() -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            error: "Object Not Found",
            reason: "Not Found".into(),
        }
    }

    /// 400 `bad_request` with `reason`.
    pub(crate) fn bad_request(reason: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            error: "bad_request",
            reason: reason.into(),
        }
    }

    /// 500 `internal_server_error` with `reason` (a change that could not be made durable).
    pub(crate) fn internal(reason: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            error: "internal_server_error",
            reason: reason.into(),
        }
    }

    /// 503 `service_unavailable` with `reason` (a cluster change that could not be committed).
    pub(crate) fn unavailable(reason: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error: "service_unavailable",
            reason: reason.into(),
        }
    }

    /// 404 with RabbitMQ's other spelling of not found (`{"error":"not_found","reason":"vhost_not_found"}`).
    pub(crate) fn not_found_as(error: &'static str, reason: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            error,
            reason: reason.into(),
        }
    }

    /// 401 with the given `error` (RabbitMQ says `not_authorised` for a refused resource access).
    pub(crate) fn unauthorized_as(error: &'static str, reason: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            error,
            reason: reason.into(),
        }
    }

    /// 401 `not_authorized` with `reason` (`Login failed`, `Not management user`).
    pub(crate) fn unauthorized(reason: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            error: "not_authorized",
            reason: reason.into(),
        }
    }

    /// 401 `not_authorized`: the user lacks the tag the resource needs (RabbitMQ answers 401 here
    /// too, e.g. "Not administrator user").
    pub(crate) fn forbidden(reason: impl Into<String>) -> Self {
        Self::unauthorized(reason)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(serde_json::json!({ "error": self.error, "reason": self.reason })),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(REALM));
        }
        response
    }
}

/// 401 without a body, as RabbitMQ answers a request without credentials.
pub(crate) fn challenge() -> Response {
    let mut response = StatusCode::UNAUTHORIZED.into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(REALM));
    response
}

/// Any path the API does not serve.
pub(crate) async fn not_found_handler() -> ApiError {
    ApiError::not_found()
}
