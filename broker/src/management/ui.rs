//! The web UI: plain HTML, CSS and JavaScript embedded in the binary (no build step, no external
//! resources), served by the API listener at `/` (as RabbitMQ's UI is) and `/ui/*`. Everything it
//! shows and changes goes through the API itself; pages: overview (rates chart, alarms, listeners),
//! connections (close), channels, exchanges (declare incl. plugin types, bindings, publish), queues
//! (declare, get, purge, delete), admin (vhosts, users, permissions, policies), definitions
//! (export, import) and plugins (state, counters, faults, quarantine, entities using each).

use axum::http::header;
use axum::response::IntoResponse;

const INDEX: &str = include_str!("ui/index.html");
const APP: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/style.css");

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

/// `GET /`: the UI's page.
pub(crate) async fn index() -> impl IntoResponse {
    asset("text/html; charset=utf-8", INDEX)
}

/// `GET /ui/app.js`.
pub(crate) async fn app() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", APP)
}

/// `GET /ui/style.css`.
pub(crate) async fn style() -> impl IntoResponse {
    asset("text/css; charset=utf-8", STYLE)
}
