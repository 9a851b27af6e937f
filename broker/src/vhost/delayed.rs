//! The vhost's side of delayed delivery: the delay store of an exchange whose plugin type schedules
//! (`warren:plugin@0.4.0` `schedule`; the store is `crate::delay`), and the task that routes its
//! messages when they fall due.
//!
//! A message routed when due goes through the exchange as it is then — bindings added meanwhile
//! count, removed ones do not (as RabbitMQ's delayed-message exchange) — with `schedule` not asked
//! again, its own routing key and its `CC` header's keys (`BCC` was removed at publish and is not
//! kept), then the alternate exchange if it matched nothing; unroutable then, it is dropped (nobody
//! is left to return it to: a `mandatory` publish is checked for routability at publish instead,
//! see `channel/publish.rs`). Its log record is acked only once the queues it went to have it on
//! disk, so a crash in between delivers it again rather than never. Nothing is routed while the vhost
//! recovers (its bindings come back after its exchanges): messages that fell due while the broker was
//! down are routed once recovery is complete.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use amq_protocol::protocol::AMQPHardError;
use amq_protocol::types::ShortString;
use tracing::{debug, error, info, warn};

use super::routing::Routed;
use super::VHost;
use crate::delay::{DelayStore, Pending};
use crate::error::{AmqpError, AmqpResult};
use crate::exchange::{Destination, Exchange};
use crate::message::{expiration_ms, header_strings, Message};
use crate::queue::Queue;
use crate::store::Durability;
use crate::sync::lock;

/// Most messages routed per wake-up of the due-routing task (then it yields).
const DUE_BATCH: usize = 1024;

/// Longest the due-routing task sleeps without checking the clock (wall-clock changes).
const MAX_SLEEP: Duration = Duration::from_secs(60);

impl VHost {
    /// The delay store of `x`, made (its log opened, its due-routing task started) on first use.
    ///
    /// # Errors
    /// 541 INTERNAL_ERROR when the log of a durable exchange cannot be opened (logged with the
    /// cause).
    pub(crate) fn delay_store(&self, x: &Arc<Exchange>) -> AmqpResult<Arc<DelayStore>> {
        if let Some(d) = x.delays.get() {
            return Ok(Arc::clone(d));
        }
        let _one = lock(&self.delay_init);
        if let Some(d) = x.delays.get() {
            return Ok(Arc::clone(d));
        }
        let store = match (&self.store, x.durable) {
            (Some(store), true) => {
                let opened = store.open_delay_log(&self.name, x.name.as_str()).and_then(
                    |(log, recovered)| Ok(DelayStore::recover(log, &recovered, self.memory)?),
                );
                opened.map_err(|e| {
                    error!(vhost = %self.name, exchange = %x.name, error = %e, "cannot open the exchange's delay log");
                    AmqpError::connection(
                        AMQPHardError::INTERNALERROR,
                        format!("cannot store delayed messages of exchange '{}': {e}", x.name),
                    )
                })?
            }
            _ => DelayStore::new(),
        };
        if store.len() > 0 {
            info!(vhost = %self.name, exchange = %x.name, pending = store.len(), "delayed messages recovered");
        }
        let _ = x.delays.set(Arc::clone(&store));
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(route_when_due(
                    self.me.clone(),
                    x.name.clone(),
                    Arc::clone(&store),
                ));
            }
            Err(_) => {
                warn!(vhost = %self.name, exchange = %x.name, "no runtime: delayed messages are kept but not routed");
            }
        }
        Ok(store)
    }

    /// Keeps `message`, published to `x`, in `x`'s delay store until `due` (ms since the Unix
    /// epoch); a persistent message of a durable exchange is appended to the store's log first.
    /// Returns that append (log, LSN): what a publisher confirm waits for.
    ///
    /// # Errors
    /// As [`VHost::delay_store`].
    pub(crate) fn keep_delayed(
        &self,
        x: &Arc<Exchange>,
        message: &Message,
        due: u64,
    ) -> AmqpResult<Option<crate::store::DurableWait>> {
        Ok(self
            .delay_store(x)?
            .insert(message, due, message.is_persistent())
            .map(|(log, lsn)| (log as Arc<dyn crate::store::Durable>, lsn)))
    }

    /// A durable exchange just recovered: its delay store is opened now when it has a log on disk,
    /// so that messages delayed before the restart fall due without waiting for a new publish.
    pub(super) fn recover_delays(&self, x: &Arc<Exchange>) {
        let Some(store) = &self.store else { return };
        if x.durable && store.delay_dir(&self.name, x.name.as_str()).exists() {
            let _ = self.delay_store(x);
        }
    }

    /// Routes messages that fell due through `exchange` into queues. Returns the log appends the
    /// queues made (to be durable before the delay log forgets the messages) and the positions in
    /// `due` of the messages the exchange's type could not route (plugin not loaded yet, or
    /// failing): those are kept for a retry rather than lost. `None` when the exchange is gone.
    fn route_due(&self, exchange: &ShortString, due: &[Pending]) -> Option<RoutedDue> {
        let mut waits = Vec::new();
        let mut failed = Vec::new();
        let mut queues: Vec<Arc<Queue>> = Vec::new();
        let mut scratch: Vec<Destination> = Vec::new();
        for (i, p) in due.iter().enumerate() {
            queues.clear();
            let Some(message) = p.message.message() else {
                warn!(vhost = %self.name, exchange = %exchange, "delayed message with unreadable properties dropped");
                continue;
            };
            let message = &message;
            let cc = header_strings(message.properties.headers().as_ref(), "CC");
            match self.route(
                exchange.as_str(),
                message,
                &cc,
                &mut queues,
                &mut scratch,
                None,
            ) {
                Ok(Routed::Now(Some(_))) if queues.is_empty() => {
                    failed.push(i);
                    continue;
                }
                Ok(_) => {}
                Err(_) => return None,
            }
            scratch.clear();
            if queues.is_empty() {
                debug!(vhost = %self.name, exchange = %exchange, "delayed message unroutable when due: dropped");
                continue;
            }
            let own_ttl = expiration_ms(&message.properties).ok().flatten();
            for q in queues.drain(..) {
                waits.extend(q.publish_durable(Arc::clone(message), own_ttl).1);
            }
        }
        Some(RoutedDue { waits, failed })
    }
}

/// What [`VHost::route_due`] did with a run of due messages.
struct RoutedDue {
    /// Log appends of the queues they went to.
    waits: Vec<crate::store::DurableWait>,
    /// Positions of the messages the exchange's type failed to route.
    failed: Vec<usize>,
}

/// How often the due-routing task looks whether its vhost finished recovering.
const RECOVERY_POLL: Duration = Duration::from_millis(20);

/// How long a message whose exchange's type failed to route waits before it is tried again.
const RETRY_AFTER_MS: u64 = 1000;

/// Routes `store`'s messages of exchange `name` as they fall due, until the store is closed or the
/// vhost dropped.
async fn route_when_due(vhost: Weak<VHost>, name: ShortString, store: Arc<DelayStore>) {
    loop {
        if store.is_closed() {
            return;
        }
        let now = crate::clock::wall_ms();
        match store.next_due() {
            None => store.wake.notified().await,
            Some(due) if due > now => {
                let wait = Duration::from_millis(due - now).min(MAX_SLEEP);
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = store.wake.notified() => {}
                }
            }
            Some(_) => {
                let Some(v) = vhost.upgrade() else { return };
                if v.recovering.load(Ordering::Acquire) {
                    // Bindings are recovered after exchanges: routing now could find none.
                    drop(v);
                    tokio::time::sleep(RECOVERY_POLL).await;
                    continue;
                }
                let mut batch = store.take_due(now, DUE_BATCH);
                let Some(RoutedDue { waits, failed }) = v.route_due(&name, &batch) else {
                    return;
                };
                if !failed.is_empty() {
                    debug!(vhost = %v.name, exchange = %name, messages = failed.len(), "delayed messages not routable by the exchange's type now: retried later");
                }
                for i in failed.into_iter().rev() {
                    store.retry(batch.swap_remove(i), now + RETRY_AFTER_MS);
                }
                let commits = v.store.as_ref().map(|s| s.commits());
                drop(v);
                if let Some(mut commits) = commits {
                    while waits
                        .iter()
                        .any(|(log, lsn)| log.durability(*lsn) == Durability::Pending)
                    {
                        if commits.changed().await.is_err() {
                            break;
                        }
                    }
                }
                store.routed(&batch);
                tokio::task::yield_now().await;
            }
        }
    }
}
