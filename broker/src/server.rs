//! The accept loop ([`run`]) and its [`Listener`]s; the shared state they serve is [`Broker`]
//! (`broker.rs`).
//!
//! `run` takes the listeners and a shutdown future, so tests start a broker on `127.0.0.1:0` and stop it
//! when they like. On shutdown it stops accepting, closes every connection with 320 CONNECTION_FORCED and
//! waits (bounded) for the connection tasks to finish.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info};

use crate::broker::Broker;
use crate::tls::TlsAcceptor;

/// How long shutdown waits for connections to answer connection.close before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A bound listener: plain AMQP, or AMQPS with the TLS acceptor its connections go through.
pub struct Listener {
    /// The bound socket.
    pub tcp: TcpListener,
    /// TLS for every connection accepted on it (AMQPS), or none (AMQP).
    pub tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("tcp", &self.tcp)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl From<TcpListener> for Listener {
    fn from(tcp: TcpListener) -> Self {
        Listener { tcp, tls: None }
    }
}

/// Accepts connections on `listeners` until `shutdown` completes, then shuts down gracefully.
pub async fn run<L: Into<Listener>>(
    listeners: Vec<L>,
    broker: Arc<Broker>,
    shutdown: impl Future<Output = ()>,
) {
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    for listener in listeners {
        let Listener { tcp: listener, tls } = listener.into();
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
                            tls.clone(),
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
    tracker.spawn(crate::alarm::monitor(
        broker.alarm_limits.clone(),
        broker.memory,
        Arc::clone(&broker.alarms),
        broker.store.clone(),
        cancel.clone(),
    ));
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
    broker.plugins.flush_kv();
    if let Some(store) = &broker.store {
        store.shutdown();
    }
}
