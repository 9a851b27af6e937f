//! Expiry: per-queue message TTL and per-message `expiration` (RabbitMQ docs/ttl.md; expired
//! messages are dead-lettered with reason `expired`) and queue expiry (`x-expires`), driven by one
//! task per queue that sleeps until the next deadline.

use std::cmp::Reverse;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::{DeadLetterReason, Letters, Queue, QueueInner, QueuedMessage};

impl Queue {
    /// Dead-letters (or drops) every expired ready message.
    pub(super) fn expire(
        self: &Arc<Self>,
        inner: &mut QueueInner,
        now: Instant,
        letters: &mut Letters,
    ) {
        let mut expired = Vec::new();
        inner
            .ready
            .remove_expired(now, inner.own_expiration > 0, &mut expired);
        self.log_acks(inner, &expired);
        for m in expired {
            self.forget_expiration(inner, &m);
            letters.push((m.message, DeadLetterReason::Expired));
        }
        while inner
            .message_deadlines
            .peek()
            .is_some_and(|Reverse(t)| *t <= now)
        {
            inner.message_deadlines.pop();
        }
    }

    pub(super) fn forget_expiration(&self, inner: &mut QueueInner, m: &QueuedMessage) {
        if m.message.properties.expiration().is_some() && m.expires_at.is_some() {
            inner.own_expiration = inner.own_expiration.saturating_sub(1);
        }
    }

    pub(super) fn ensure_timer(self: &Arc<Self>) {
        let mut inner = self.lock();
        self.ensure_timer_locked(&mut inner);
    }

    /// Starts the expiry task once the queue has something that can expire (message TTLs, `x-expires`).
    pub(super) fn ensure_timer_locked(self: &Arc<Self>, inner: &mut QueueInner) {
        // A proxy expires nothing: its home runs the queue's timers.
        if inner.timer_started || self.remote.is_some() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        inner.timer_started = true;
        runtime.spawn(expiry_task(Arc::downgrade(self)));
    }

    /// The next moment something may expire: a message, or the whole queue.
    pub(super) fn next_deadline(&self, inner: &QueueInner) -> Option<Instant> {
        let messages = [
            inner.ready.head_deadline(),
            inner.message_deadlines.peek().map(|Reverse(t)| *t),
        ]
        .into_iter()
        .flatten()
        .min();
        let queue = inner
            .args
            .expires
            .filter(|_| inner.consumers.is_empty())
            .map(|ms| inner.last_used + Duration::from_millis(ms));
        [messages, queue].into_iter().flatten().min()
    }
}

/// Expires messages (dead-lettering them) and the queue itself (`x-expires`) at their deadlines. Holds
/// only a weak reference: it ends when the queue is dropped or deleted.
pub(super) async fn expiry_task(queue: Weak<Queue>) {
    let Some(timer) = queue.upgrade().map(|q| Arc::clone(&q.timer)) else {
        return;
    };
    loop {
        let Some(q) = queue.upgrade() else { return };
        let deadline = {
            let inner = q.lock();
            if inner.deleted {
                return;
            }
            q.next_deadline(&inner)
        };
        let notified = timer.notified();
        drop(q);
        match deadline {
            Some(d) => {
                tokio::select! {
                    () = tokio::time::sleep_until(d) => {}
                    () = notified => continue,
                }
            }
            None => notified.await,
        }
        let Some(q) = queue.upgrade() else { return };
        let now = Instant::now();
        let mut letters = Letters::new();
        let expire_queue = {
            let mut inner = q.lock();
            if inner.deleted {
                return;
            }
            q.expire(&mut inner, now, &mut letters);
            inner.args.expires.is_some_and(|ms| {
                inner.consumers.is_empty() && now >= inner.last_used + Duration::from_millis(ms)
            })
        };
        q.hand_over(letters);
        if expire_queue {
            if let Some(owner) = q.owner.upgrade() {
                owner.expire_queue(&q);
            }
            return;
        }
    }
}
