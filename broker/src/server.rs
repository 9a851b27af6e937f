//! The broker's shared state ([`Broker`]) and the accept loop ([`run`]).
//!
//! `run` takes the listeners and a shutdown future, so tests start a broker on `127.0.0.1:0` and stop it
//! when they like. On shutdown it stops accepting, closes every connection with 320 CONNECTION_FORCED and
//! waits (bounded) for the connection tasks to finish.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info};

use crate::config::Config;
use crate::exchange::registry::Registry;
use crate::vhost::VHost;

/// How long shutdown waits for connections to answer connection.close before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Broker-wide state: configuration, exchange type registry, vhosts. Shared by all connections.
#[derive(Debug)]
pub struct Broker {
    /// Effective configuration.
    pub config: Config,
    /// Exchange types (native and, later, plugin types).
    pub registry: Arc<Registry>,
    vhosts: HashMap<String, Arc<VHost>>,
    next_connection: AtomicU64,
}

impl Broker {
    /// A broker with the configured vhosts.
    pub fn new(config: Config) -> Self {
        let registry = Arc::new(Registry::default());
        let vhosts = config
            .vhosts
            .iter()
            .map(|name| (name.clone(), VHost::new(name, Arc::clone(&registry))))
            .collect();
        Broker {
            config,
            registry,
            vhosts,
            next_connection: AtomicU64::new(1),
        }
    }

    /// The vhost named `name`, if configured.
    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.get(name).cloned()
    }

    /// A fresh connection id (owner id of exclusive queues).
    pub fn next_connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }
}

/// Accepts connections on `listeners` until `shutdown` completes, then shuts down gracefully.
pub async fn run(
    listeners: Vec<TcpListener>,
    broker: Arc<Broker>,
    shutdown: impl Future<Output = ()>,
) {
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    for listener in listeners {
        let (broker, cancel_accept, cancel_conn, conns) = (
            Arc::clone(&broker),
            cancel.clone(),
            cancel.clone(),
            tracker.clone(),
        );
        tracker.spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = cancel_accept.cancelled() => break,
                    accepted = listener.accept() => accepted,
                };
                match accepted {
                    Ok((socket, peer)) => {
                        conns.spawn(crate::connection::serve(
                            socket,
                            peer,
                            Arc::clone(&broker),
                            cancel_conn.clone(),
                        ));
                    }
                    Err(e) => {
                        // Typically EMFILE: back off instead of spinning on the error.
                        error!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
    }
    shutdown.await;
    info!("shutting down: closing connections");
    cancel.cancel();
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        error!("connections did not close within {SHUTDOWN_GRACE:?}");
    }
}
