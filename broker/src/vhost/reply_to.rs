//! Direct reply-to: the `amq.rabbitmq.reply-to` pseudo-queue (RabbitMQ docs/direct-reply-to.md).
//!
//! A channel that consumes from `amq.rabbitmq.reply-to` (no-ack) gets a token; its publishes with
//! `reply_to = amq.rabbitmq.reply-to` carry `amq.rabbitmq.reply-to.<token>` instead, and a message
//! published to the default exchange with that routing key is delivered straight to the channel:
//! no queue, no buffering, at most once.

use std::collections::HashMap;
use std::sync::{Mutex, Weak};

use crate::message::MessageRef;

/// The pseudo-queue name clients consume from and put in `reply_to`.
pub(crate) const REPLY_TO: &str = "amq.rabbitmq.reply-to";
/// Prefix of the per-channel reply address (`amq.rabbitmq.reply-to.<token>`).
pub(crate) const REPLY_TO_PREFIX: &str = "amq.rabbitmq.reply-to.";

/// A channel consuming replies.
pub trait ReplySink: Send + Sync {
    /// Delivers a reply to the channel's reply consumer; false if it is gone.
    fn deliver_reply(&self, message: &MessageRef) -> bool;
}

/// Token → reply consumer, for one vhost.
#[derive(Default)]
pub struct ReplyRegistry {
    sinks: Mutex<HashMap<String, Weak<dyn ReplySink>>>,
}

impl std::fmt::Debug for ReplyRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyRegistry").finish_non_exhaustive()
    }
}

impl ReplyRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Weak<dyn ReplySink>>> {
        crate::sync::lock(&self.sinks)
    }

    /// Registers a reply consumer under `token`.
    pub fn register(&self, token: String, sink: Weak<dyn ReplySink>) {
        self.lock().insert(token, sink);
    }

    /// Removes `token`.
    pub fn unregister(&self, token: &str) {
        self.lock().remove(token);
    }

    /// Whether `token` has a live reply consumer.
    pub fn exists(&self, token: &str) -> bool {
        self.lock().get(token).is_some_and(|s| s.strong_count() > 0)
    }

    /// Delivers `message` to the consumer of `address` (`amq.rabbitmq.reply-to.<token>`); false if
    /// there is none (the message is then unroutable).
    pub fn deliver(&self, address: &str, message: &MessageRef) -> bool {
        let Some(token) = address.strip_prefix(REPLY_TO_PREFIX) else {
            return false;
        };
        let sink = self.lock().get(token).and_then(Weak::upgrade);
        sink.is_some_and(|s| s.deliver_reply(message))
    }
}
