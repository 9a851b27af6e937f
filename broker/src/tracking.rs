//! Connection tracking: what the management API lists of each client connection (RabbitMQ's
//! `rabbit_connection_tracking`), and how it closes one. Each connection registers a
//! [`ConnectionInfo`] when accepted and removes it when it ends; the connection's own task keeps it
//! current (set once at connection.open; the channel count as channels open and close) and watches
//! its `close` token.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use amq_protocol::types::FieldTable;
use tokio_util::sync::CancellationToken;

/// What a connection settled at connection.open.
#[derive(Debug, Clone)]
pub struct Opened {
    /// The user it logged in as.
    pub user: String,
    /// The vhost it opened.
    pub vhost: String,
    /// The client's `client-properties` (product, version, platform, capabilities, …).
    pub client_properties: FieldTable,
    /// SASL mechanism (`PLAIN`, `AMQPLAIN`, `EXTERNAL`).
    pub auth_mechanism: String,
    /// Negotiated heartbeat, seconds.
    pub heartbeat: u16,
    /// Negotiated frame-max, octets.
    pub frame_max: u32,
    /// Negotiated channel-max.
    pub channel_max: u16,
}

/// One client connection, as listed.
#[derive(Debug)]
pub struct ConnectionInfo {
    /// The broker's id of the connection.
    pub id: u64,
    /// The client's address.
    pub peer: SocketAddr,
    /// The listener's address it came in on.
    pub local: SocketAddr,
    /// AMQPS.
    pub tls: bool,
    /// Wall-clock ms at accept.
    pub connected_at: u64,
    /// Set at connection.open (none while in the handshake).
    pub opened: OnceLock<Opened>,
    /// Channels open now, by number (the `/api/channels` listing reads them).
    pub(crate) channels: Mutex<std::collections::BTreeMap<u16, Arc<crate::channel::ChannelShared>>>,
    /// Cancelled to close the connection (320 CONNECTION_FORCED with [`ConnectionInfo::close_reason`]);
    /// a child of the broker's shutdown token, so one future in the connection's loop serves both.
    pub close: CancellationToken,
    close_reason: Mutex<String>,
}

impl ConnectionInfo {
    /// A connection just accepted; `close` is cancelled to close it (pass a child of the broker's
    /// shutdown token).
    pub fn new(
        id: u64,
        peer: SocketAddr,
        local: SocketAddr,
        tls: bool,
        close: CancellationToken,
    ) -> Self {
        ConnectionInfo {
            id,
            peer,
            local,
            tls,
            connected_at: crate::clock::wall_ms(),
            opened: OnceLock::new(),
            channels: Mutex::new(std::collections::BTreeMap::new()),
            close,
            close_reason: Mutex::new(String::new()),
        }
    }

    /// RabbitMQ's connection name: `PEER -> LOCAL` (`127.0.0.1:50000 -> 127.0.0.1:5672`).
    pub fn name(&self) -> String {
        format!("{} -> {}", self.peer, self.local)
    }

    /// Asks the connection to close with `reason` (sent with 320 CONNECTION_FORCED).
    pub fn close_with(&self, reason: &str) {
        reason.clone_into(&mut crate::sync::lock(&self.close_reason));
        self.close.cancel();
    }

    /// Why it was asked to close (empty: the broker is shutting down).
    pub fn close_reason(&self) -> String {
        crate::sync::lock(&self.close_reason).clone()
    }

    /// Channels open now.
    pub fn channel_count(&self) -> u32 {
        u32::try_from(crate::sync::lock(&self.channels).len()).unwrap_or(u32::MAX)
    }

    /// The open channels, by number.
    pub(crate) fn channel_list(&self) -> Vec<Arc<crate::channel::ChannelShared>> {
        crate::sync::lock(&self.channels)
            .values()
            .cloned()
            .collect()
    }
}

/// Every connection of the broker, by id.
#[derive(Debug, Default)]
pub struct ConnectionTable {
    connections: Mutex<HashMap<u64, Arc<ConnectionInfo>>>,
    /// Connections accepted and ended, channels opened and closed, since start
    /// (`rabbitmq_connections_opened_total`, …).
    pub(crate) lifecycle: Lifecycle,
}

/// Connection and channel counts since start (Prometheus counters).
#[derive(Debug, Default)]
pub(crate) struct Lifecycle {
    pub(crate) connections_opened: std::sync::atomic::AtomicU64,
    pub(crate) connections_closed: std::sync::atomic::AtomicU64,
    pub(crate) channels_opened: std::sync::atomic::AtomicU64,
    pub(crate) channels_closed: std::sync::atomic::AtomicU64,
}

impl ConnectionTable {
    /// Registers a connection.
    pub fn insert(&self, info: Arc<ConnectionInfo>) {
        crate::stats::bump(&self.lifecycle.connections_opened, 1);
        crate::sync::lock(&self.connections).insert(info.id, info);
    }

    /// Removes a connection that ended.
    pub fn remove(&self, id: u64) {
        if crate::sync::lock(&self.connections).remove(&id).is_some() {
            crate::stats::bump(&self.lifecycle.connections_closed, 1);
        }
    }

    /// Every connection, oldest first.
    pub fn list(&self) -> Vec<Arc<ConnectionInfo>> {
        let mut v: Vec<Arc<ConnectionInfo>> = crate::sync::lock(&self.connections)
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|c| c.id);
        v
    }
}
