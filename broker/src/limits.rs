//! Resource limits a client cannot exceed, with RabbitMQ's names and answers: vhost limits
//! (`max-connections`, `max-queues`; RabbitMQ docs/vhosts.md "Limits"), user limits
//! (`max-connections`, `max-channels`; docs/user-limits.md), and the per-user usage they are checked
//! against. The broker-wide `connection_max`, the cap on connections still logging in, `channel_max`
//! and `consumer_max_per_channel` are plain settings in [`crate::config::Config`], checked where
//! connections and channels are opened.
//!
//! A limit is `None` when unset; in RabbitMQ's JSON a negative value means "no limit" too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use serde::{Deserialize, Serialize};

use crate::error::AmqpError;

/// A limit from RabbitMQ's JSON or the config file: a negative value means no limit.
fn cap(v: Option<i64>) -> Option<u64> {
    v.and_then(|n| u64::try_from(n).ok())
}

/// Limits of one vhost (RabbitMQ `rabbitmqctl set_vhost_limits`, definitions `vhost-limits`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VhostLimits {
    /// Most client connections to the vhost at once (negative: no limit; 0: none allowed).
    #[serde(
        rename = "max-connections",
        alias = "max_connections",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub max_connections: Option<i64>,
    /// Most queues in the vhost (negative: no limit).
    #[serde(
        rename = "max-queues",
        alias = "max_queues",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub max_queues: Option<i64>,
}

impl VhostLimits {
    /// `max-connections` as a count, `None` for no limit.
    pub fn connections(&self) -> Option<u64> {
        cap(self.max_connections)
    }

    /// `max-queues` as a count, `None` for no limit.
    pub fn queues(&self) -> Option<u64> {
        cap(self.max_queues)
    }
}

/// Limits of one user (RabbitMQ `rabbitmqctl set_user_limits`, definitions `users[].limits`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserLimits {
    /// Most connections the user may have open at once (negative: no limit).
    #[serde(
        rename = "max-connections",
        alias = "max_connections",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub max_connections: Option<i64>,
    /// Most channels the user may have open at once, over all its connections (negative: no limit).
    #[serde(
        rename = "max-channels",
        alias = "max_channels",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub max_channels: Option<i64>,
}

/// Connections and channels one user has open.
#[derive(Debug, Default, Clone, Copy)]
struct UserUsage {
    connections: u64,
    channels: u64,
}

/// Every user's limits and what each has open; shared by all connections.
#[derive(Debug, Default)]
pub struct UserLimiter {
    limits: RwLock<HashMap<String, UserLimits>>,
    usage: Mutex<HashMap<String, UserUsage>>,
}

impl UserLimiter {
    /// Sets (replaces) `user`'s limits; later checks use them, open connections are not closed.
    pub fn set(&self, user: &str, limits: UserLimits) {
        crate::sync::write(&self.limits).insert(user.to_owned(), limits);
    }

    /// `user`'s limits (none set: no limits).
    pub fn get(&self, user: &str) -> UserLimits {
        crate::sync::read(&self.limits)
            .get(user)
            .copied()
            .unwrap_or_default()
    }

    fn with_usage<T>(&self, user: &str, f: impl FnOnce(&mut UserUsage) -> T) -> T {
        let mut usage = crate::sync::lock(&self.usage);
        let u = usage.entry(user.to_owned()).or_default();
        let out = f(u);
        if u.connections == 0 && u.channels == 0 {
            usage.remove(user);
        }
        out
    }

    /// Counts a new connection of `user`, or refuses it at the user's `max-connections`.
    ///
    /// # Errors
    /// 530 NOT_ALLOWED with RabbitMQ's text (rabbit_reader `check_user_connection_limit`).
    pub fn open_connection(&self, user: &str) -> Result<(), AmqpError> {
        let max = cap(self.get(user).max_connections);
        self.with_usage(user, |u| match max {
            Some(max) if u.connections >= max => Err(AmqpError::not_allowed(format!(
                "Connection refused for user '{user}': user connection limit ({max}) is reached"
            ))),
            _ => {
                u.connections += 1;
                Ok(())
            }
        })
    }

    /// Forgets one connection of `user` (counted by [`UserLimiter::open_connection`]).
    pub fn close_connection(&self, user: &str) {
        self.with_usage(user, |u| u.connections = u.connections.saturating_sub(1));
    }

    /// Counts a new channel of `user`, or refuses it at the user's `max-channels`.
    ///
    /// # Errors
    /// 530 NOT_ALLOWED with RabbitMQ's text (rabbit_reader `check_user_channel_limit`).
    pub fn open_channel(&self, user: &str) -> Result<(), AmqpError> {
        let max = cap(self.get(user).max_channels);
        self.with_usage(user, |u| match max {
            Some(max) if u.channels >= max => Err(AmqpError::not_allowed(format!(
                "number of channels opened for user '{user}' has reached the maximum allowed user limit of ({max})"
            ))),
            _ => {
                u.channels += 1;
                Ok(())
            }
        })
    }

    /// Forgets `n` channels of `user`.
    pub fn close_channels(&self, user: &str, n: u64) {
        if n > 0 {
            self.with_usage(user, |u| u.channels = u.channels.saturating_sub(n));
        }
    }

    /// Connections and channels `user` has open.
    pub fn usage(&self, user: &str) -> (u64, u64) {
        let usage = crate::sync::lock(&self.usage);
        usage
            .get(user)
            .map_or((0, 0), |u| (u.connections, u.channels))
    }
}

/// A counter that refuses to go past a limit, without a lock (compare-and-swap).
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Adds one unless that would exceed `max`; whether it did.
    pub fn try_increment(&self, max: Option<u64>) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| match max {
                Some(max) if n >= max => None,
                _ => Some(n + 1),
            })
            .is_ok()
    }

    /// Takes one away.
    pub fn decrement(&self) {
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// The current count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_means_unlimited_and_zero_means_none() {
        let l: VhostLimits =
            serde_json::from_str(r#"{"max-connections": -1, "max-queues": 0}"#).unwrap();
        assert_eq!(l.connections(), None);
        assert_eq!(l.queues(), Some(0));
        let g = Gauge::default();
        assert!(!g.try_increment(Some(0)));
        assert!(g.try_increment(None));
        assert!(!g.try_increment(Some(1)));
        g.decrement();
        g.decrement();
        assert_eq!(g.get(), 0);
    }

    #[test]
    fn user_limits_count_connections_and_channels() {
        let u = UserLimiter::default();
        u.set(
            "bob",
            UserLimits {
                max_connections: Some(1),
                max_channels: Some(2),
            },
        );
        u.open_connection("bob").unwrap();
        let e = u.open_connection("bob").unwrap_err();
        assert_eq!(e.reply_code(), 530);
        assert_eq!(
            e.reply_text(),
            "NOT_ALLOWED - Connection refused for user 'bob': user connection limit (1) is reached"
        );
        u.open_channel("bob").unwrap();
        u.open_channel("bob").unwrap();
        assert!(u.open_channel("bob").is_err());
        u.close_channels("bob", 2);
        u.close_connection("bob");
        assert_eq!(u.usage("bob"), (0, 0));
        u.open_connection("alice").unwrap();
        u.open_connection("alice").unwrap();
    }
}
