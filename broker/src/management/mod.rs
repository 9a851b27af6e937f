//! The management HTTP API: RabbitMQ's `rabbitmq_management` paths, JSON shapes, status codes and
//! error bodies (`../shared/MANAGEMENT.md` §1; RabbitMQ docs/http-api-reference.md), served with
//! axum on `[management] listen` (default `127.0.0.1:15672`), so that operators' tools work
//! unchanged; plus Warren's own `/api/warren/plugins`.
//!
//! This part serves tiers A and B of MANAGEMENT.md, the
//! plugin listing with quarantine lifting, and the web UI:
//!
//! - `auth`: HTTP Basic against the broker's users, RabbitMQ's tag rules;
//! - `error`: RabbitMQ's `{"error", "reason"}` bodies;
//! - `read`: overview, whoami, nodes, vhosts, queues, exchanges (with RabbitMQ's pagination);
//! - `bindings`: bindings in every form, with RabbitMQ's `properties_key`;
//! - `admin`: users, permissions, policies (read);
//! - `admin_write`: vhosts, users, permissions, policies (create, change, delete);
//! - `connections`: client connections (list, close);
//! - `definitions`: definitions import and export in RabbitMQ's format;
//! - `write`: declare, delete and purge queues, exchanges and bindings;
//! - `health`: `/api/health/checks/*`;
//! - `messages`: publish and get for debugging;
//! - `rates`: message rates sampled from the counters of `crate::stats`;
//! - `channels`: channels and consumers;
//! - `plugins`: `/api/warren/plugins`;
//! - `ui`: the embedded web UI at `/`.

mod admin;
mod admin_write;
mod auth;
mod bindings;
mod channels;
mod connections;
mod definitions;
mod error;
mod health;
mod messages;
mod page;
mod plugins;
mod rates;
mod read;
mod ui;
mod write;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::routing::{delete, get, post};
use axum::Router;

use crate::broker::Broker;

/// A listener the node has, as the API reports it (`/api/overview` `listeners`, the listener health
/// checks).
#[derive(Debug, Clone)]
pub struct Listener {
    /// RabbitMQ's protocol name: `amqp`, `amqp/ssl`, `http`.
    pub protocol: &'static str,
    /// Where it listens.
    pub address: SocketAddr,
}

/// What every handler reads.
#[derive(Debug)]
pub(crate) struct Api {
    broker: Arc<Broker>,
    listeners: Vec<Listener>,
    started: Instant,
    node: String,
    rates: Arc<rates::Rates>,
}

impl Api {
    /// The node name, RabbitMQ style: `warren@<host>`.
    fn node(&self) -> &str {
        &self.node
    }
}

/// This node's name: `warren@` and the kernel's host name (RabbitMQ's `rabbit@host` shape).
pub fn node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    format!(
        "warren@{}",
        if host.is_empty() { "localhost" } else { &host }
    )
}

/// The RabbitMQ version Warren's API answers as (`rabbitmq_version`).
pub(crate) use read::RABBITMQ_VERSION;

/// A plugin kind as the API and metrics name it.
pub(crate) fn kind_name(kind: crate::plugin::Kind) -> &'static str {
    match kind {
        crate::plugin::Kind::Exchange => "exchange",
        crate::plugin::Kind::Filter => "filter",
        crate::plugin::Kind::Idempotency => "idempotency",
    }
}

/// The API's routes over `broker`; `listeners` are the node's listeners (AMQP and this API's own).
pub fn router(broker: Arc<Broker>, listeners: Vec<Listener>) -> Router {
    let rates = Arc::new(rates::Rates::default());
    if tokio::runtime::Handle::try_current().is_ok() {
        tokio::spawn(rates::sampler(Arc::clone(&rates), Arc::clone(&broker)));
    }
    let node = broker.node_name();
    let api = Arc::new(Api {
        broker,
        listeners,
        started: Instant::now(),
        node,
        rates,
    });
    Router::new()
        .route("/", get(ui::index))
        .route("/ui/app.js", get(ui::app))
        .route("/ui/style.css", get(ui::style))
        .route("/api/overview", get(read::overview))
        .route("/api/whoami", get(read::whoami))
        .route("/api/nodes", get(read::nodes))
        .route(
            "/api/nodes/{node}",
            get(read::node).delete(admin_write::delete_node),
        )
        .route("/api/vhosts", get(read::vhosts))
        .route(
            "/api/vhosts/{vhost}",
            get(read::vhost)
                .put(admin_write::put_vhost)
                .delete(admin_write::delete_vhost),
        )
        .route(
            "/api/vhosts/{vhost}/permissions",
            get(admin::vhost_permissions),
        )
        .route(
            "/api/vhosts/{vhost}/connections",
            get(connections::in_vhost),
        )
        .route("/api/connections", get(connections::list))
        .route(
            "/api/connections/{name}/channels",
            get(channels::of_connection),
        )
        .route("/api/channels", get(channels::list))
        .route("/api/channels/{name}", get(channels::one))
        .route("/api/vhosts/{vhost}/channels", get(channels::in_vhost))
        .route("/api/consumers", get(channels::consumers))
        .route("/api/consumers/{vhost}", get(channels::consumers_in))
        .route(
            "/api/connections/{name}",
            get(connections::one).delete(connections::close),
        )
        .route("/api/users", get(admin::users))
        .route(
            "/api/users/bulk-delete",
            post(admin_write::bulk_delete_users),
        )
        .route(
            "/api/users/{name}",
            get(admin::user)
                .put(admin_write::put_user)
                .delete(admin_write::delete_user),
        )
        .route(
            "/api/users/{name}/permissions",
            get(admin::user_permissions),
        )
        .route("/api/permissions", get(admin::permissions))
        .route(
            "/api/permissions/{vhost}/{user}",
            get(admin::permission)
                .put(admin_write::put_permission)
                .delete(admin_write::delete_permission),
        )
        .route(
            "/api/definitions",
            get(definitions::export).post(definitions::import),
        )
        .route(
            "/api/definitions/{vhost}",
            get(definitions::export_vhost).post(definitions::import_vhost),
        )
        .route("/api/policies", get(admin::policies))
        .route("/api/policies/{vhost}", get(admin::policies_in))
        .route(
            "/api/policies/{vhost}/{name}",
            get(admin::policy)
                .put(admin_write::put_policy)
                .delete(admin_write::delete_policy),
        )
        .route("/api/queues", get(read::queues))
        .route("/api/queues/{vhost}", get(read::queues_in))
        .route(
            "/api/queues/{vhost}/{name}",
            get(read::queue)
                .put(write::put_queue)
                .delete(write::delete_queue),
        )
        .route(
            "/api/queues/{vhost}/{name}/contents",
            delete(write::purge_queue),
        )
        .route("/api/queues/{vhost}/{name}/get", post(messages::get))
        .route(
            "/api/exchanges/{vhost}/{name}/publish",
            post(messages::publish),
        )
        .route(
            "/api/queues/{vhost}/{name}/bindings",
            get(bindings::of_queue),
        )
        .route("/api/bindings", get(bindings::all))
        .route("/api/bindings/{vhost}", get(bindings::in_vhost))
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{destination}",
            get(bindings::between_list).merge(post(write::post_binding)),
        )
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{destination}/{props}",
            get(bindings::one).delete(write::delete_binding),
        )
        .route("/api/exchanges", get(read::exchanges))
        .route("/api/exchanges/{vhost}", get(read::exchanges_in))
        .route(
            "/api/exchanges/{vhost}/{name}",
            get(read::exchange)
                .put(write::put_exchange)
                .delete(write::delete_exchange),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/{side}",
            get(bindings::of_exchange),
        )
        .route("/api/extensions", get(read::empty_list))
        .route("/api/feature-flags", get(read::empty_list))
        .route("/api/federation-links", get(read::empty_list))
        .route("/api/federation-links/{vhost}", get(read::empty_list))
        .route("/api/aliveness-test/{vhost}", get(health::aliveness))
        .route("/api/health/checks/alarms", get(health::alarms))
        .route("/api/health/checks/local-alarms", get(health::alarms))
        .route("/api/health/checks/virtual-hosts", get(health::ok))
        .route("/api/health/checks/is-in-service", get(health::ok))
        .route("/api/health/checks/ready-to-serve-clients", get(health::ok))
        .route(
            "/api/health/checks/node-is-quorum-critical",
            get(health::ok),
        )
        .route(
            "/api/health/checks/port-listener/{port}",
            get(health::port_listener),
        )
        .route(
            "/api/health/checks/protocol-listener/{protocols}",
            get(health::protocol_listener),
        )
        .route("/api/warren/plugins", get(plugins::list))
        .route(
            "/api/warren/plugins/{kind}/{name}/quarantine",
            delete(plugins::lift_quarantine),
        )
        .fallback(error::not_found_handler)
        .with_state(api)
}

/// Serves the API on `listener` until the process ends.
///
/// # Errors
/// The listener failed (accept errors are retried by axum; this is the server's own end).
pub async fn serve(
    listener: tokio::net::TcpListener,
    broker: Arc<Broker>,
    listeners: Vec<Listener>,
) -> std::io::Result<()> {
    let app = router(broker, listeners);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}
