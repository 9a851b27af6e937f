//! A vhost's durable side: recording every change to a durable exchange, queue or binding in the
//! definitions log (`store/definitions_log.rs`) and waiting for it to be on disk before the reply,
//! recovery from the data directory at start, and opening a durable queue's log and idempotency-key
//! record (ARCHITECTURE.md, "Durability: storage design").

use std::sync::atomic::Ordering;
use std::sync::Arc;

use amq_protocol::protocol::AMQPHardError;
use amq_protocol::types::{FieldTable, ShortString};
use anyhow::Context;
use tracing::{error, info};

use super::{BindingChange, ExchangeFlags, QueueFlags, VHost};
use crate::error::{AmqpError, AmqpResult};
use crate::exchange::{Binding, Destination, Exchange};
use crate::queue::{plugins, Queue, QueueStorage, ScratchSpace};
use crate::store::definitions::{
    decode_table, encode_table, DefinitionChange, StoredBinding, StoredExchange, StoredQueue,
};
#[cfg(test)]
use crate::store::definitions::{StoredDefinitions, DEFINITIONS_VERSION};
use crate::store::Durability;
use crate::sync::read;

/// A durable exchange as the definitions log records it.
pub(super) fn stored_exchange(x: &Exchange) -> StoredExchange {
    StoredExchange {
        name: x.name.to_string(),
        kind: x.kind.to_string(),
        auto_delete: x.auto_delete,
        internal: x.internal,
        arguments: encode_table(&x.arguments),
    }
}

/// A durable queue as the definitions log records it.
/// A durable queue as the definitions log records it; `home`: its home node's name in a cluster when
/// that is another node (this one holds a proxy).
pub(super) fn stored_queue(q: &Queue, home: Option<String>) -> StoredQueue {
    StoredQueue {
        name: q.name.to_string(),
        auto_delete: q.auto_delete,
        arguments: encode_table(&q.arguments),
        home,
    }
}

/// A binding from `source` as the definitions log records it.
pub(super) fn stored_binding(source: &str, b: &Binding) -> StoredBinding {
    let destination_type = match &b.destination {
        Destination::Queue(_) => "queue",
        Destination::Exchange(_) => "exchange",
    };
    StoredBinding {
        source: source.to_owned(),
        destination: b.destination.name().to_owned(),
        destination_type: destination_type.to_owned(),
        routing_key: b.key.to_string(),
        arguments: encode_table(&b.arguments),
    }
}

/// One durable entity to declare: what a definitions file (RabbitMQ's JSON, at start) and the data
/// directory (recovery) hold. Both replay through [`VHost::apply`].
#[derive(Debug, Clone)]
pub enum Definition<'a> {
    /// An exchange.
    Exchange {
        /// Its name.
        name: &'a str,
        /// Its type.
        kind: &'a str,
        /// exchange.declare's flags.
        flags: ExchangeFlags,
        /// Its arguments.
        arguments: FieldTable,
    },
    /// A queue.
    Queue {
        /// Its name.
        name: &'a str,
        /// queue.declare's flags (never exclusive).
        flags: QueueFlags,
        /// Its arguments.
        arguments: FieldTable,
    },
    /// A binding.
    Binding {
        /// The source exchange.
        source: &'a str,
        /// The destination queue or exchange.
        destination: &'a str,
        /// `queue` or `exchange` (the management API's `destination_type`).
        destination_type: &'a str,
        /// The binding key.
        routing_key: &'a str,
        /// The binding arguments.
        arguments: FieldTable,
    },
}

/// Why a definition could not be applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// A name or key longer than 255 octets.
    #[error("name '{0}' is longer than 255 octets")]
    Name(String),
    /// A binding's `destination_type` is neither `queue` nor `exchange`.
    #[error("binding destination_type '{0}' is not queue or exchange")]
    DestinationType(String),
    /// The declare or bind was refused (its AMQP error).
    #[error("{0}")]
    Refused(#[from] AmqpError),
}

fn short(s: &str) -> Result<ShortString, ApplyError> {
    ShortString::try_new(s).map_err(|_| ApplyError::Name(s.to_owned()))
}

impl VHost {
    /// Declares one durable entity through the live code paths (exchange.declare, queue.declare,
    /// queue.bind / exchange.bind, not passive): the single apply path of start-up definitions and
    /// on-disk recovery (LavinMQ's definitions replay).
    ///
    /// # Errors
    /// [`ApplyError`]: a bad name or destination type, or the declare's own error.
    pub fn apply(&self, definition: Definition<'_>) -> Result<(), ApplyError> {
        match definition {
            Definition::Exchange {
                name,
                kind,
                flags,
                arguments,
            } => self.exchange_declare(&short(name)?, kind, false, flags, &arguments)?,
            Definition::Queue {
                name,
                flags,
                arguments,
            } => {
                self.queue_declare(&short(name)?, false, flags, &arguments, 0)?;
            }
            Definition::Binding {
                source,
                destination,
                destination_type,
                routing_key,
                arguments,
            } => {
                let key = short(routing_key)?;
                match destination_type {
                    "queue" => self.queue_bind(
                        destination,
                        source,
                        &key,
                        &arguments,
                        0,
                        BindingChange::Bind,
                    )?,
                    "exchange" => self.exchange_bind(
                        destination,
                        source,
                        &key,
                        &arguments,
                        BindingChange::Bind,
                    )?,
                    other => return Err(ApplyError::DestinationType(other.to_owned())),
                }
            }
        }
        Ok(())
    }

    /// The log (and what it recovered) of queue `name` when it is `persisted` (durable, not exclusive)
    /// and the broker has a data directory.
    ///
    /// # Errors
    /// 541 INTERNAL_ERROR when the log cannot be opened (logged with the cause).
    pub(super) fn queue_storage(
        &self,
        name: &ShortString,
        persisted: bool,
    ) -> AmqpResult<Option<QueueStorage>> {
        let Some(store) = self.store.as_ref().filter(|_| persisted) else {
            return Ok(None);
        };
        let (log, recovered) = store
            .open_queue_log(&self.name, name.as_str())
            .map_err(|e| {
                error!(vhost = %self.name, queue = %name, error = %e, "cannot open the queue log");
                AmqpError::connection(
                    AMQPHardError::INTERNALERROR,
                    format!("cannot store queue '{name}': {e}"),
                )
            })?;
        Ok(Some(QueueStorage {
            log,
            recovered,
            clean_start: store.clean_start,
            memory_limit: store.queue_memory_bytes,
        }))
    }

    /// Where a queue that is not `persisted` pages out its tail (the broker's data directory, if any).
    pub(super) fn scratch_space(&self, persisted: bool) -> Option<ScratchSpace> {
        let store = self.store.as_ref().filter(|_| !persisted)?;
        Some(ScratchSpace {
            store: Arc::clone(store),
            vhost: self.name.clone(),
        })
    }

    /// `idempotency` with its record of acked keys on disk when queue `name` is `persisted` and the
    /// broker has a data directory (keys recorded before a restart come back).
    ///
    /// # Errors
    /// 541 INTERNAL_ERROR when the record cannot be opened (logged with the cause).
    pub(super) fn durable_idempotency(
        &self,
        name: &ShortString,
        idempotency: Option<plugins::Idempotency>,
        persisted: bool,
    ) -> AmqpResult<Option<plugins::Idempotency>> {
        match (idempotency, &self.store, persisted) {
            (Some(i), Some(store), true) => {
                let (log, keys) = store.open_key_log(&self.name, name.as_str()).map_err(|e| {
                    error!(vhost = %self.name, queue = %name, error = %e, "cannot open the idempotency key record");
                    AmqpError::connection(
                        AMQPHardError::INTERNALERROR,
                        format!("cannot store the idempotency keys of queue '{name}': {e}"),
                    )
                })?;
                Ok(Some(i.with_key_log(log, keys)))
            }
            (i, _, _) => Ok(i),
        }
    }

    /// The durable definitions as the live tables hold them (a binding is durable when its source and
    /// destination are), for tests that check the definitions log against them.
    #[cfg(test)]
    pub(crate) fn snapshot(&self) -> StoredDefinitions {
        let exchanges = read(&self.exchanges);
        let queues = read(&self.queues);
        let mut d = StoredDefinitions {
            format_version: DEFINITIONS_VERSION,
            ..StoredDefinitions::default()
        };
        for x in exchanges.values().filter(|x| x.durable) {
            if !x.name.as_str().starts_with("amq.") {
                d.exchanges.push(stored_exchange(x));
            }
            for b in x.bindings() {
                let durable = match &b.destination {
                    Destination::Queue(q) => q.durable && q.exclusive_owner.is_none(),
                    Destination::Exchange(n) => {
                        exchanges.get(n.as_str()).is_some_and(|x| x.durable)
                    }
                };
                if durable {
                    d.bindings.push(stored_binding(x.name.as_str(), &b));
                }
            }
        }
        for q in queues
            .values()
            .filter(|q| q.durable && q.exclusive_owner.is_none())
        {
            d.queues.push(stored_queue(q, None));
        }
        d.sort();
        d
    }

    /// The durable definitions the definitions log holds, for tests.
    #[cfg(test)]
    pub(crate) fn logged_definitions(&self) -> Option<StoredDefinitions> {
        self.definitions.get().map(|log| {
            let mut d = log.document();
            d.last_index = 0;
            d
        })
    }

    /// Appends a change to a durable definition to the definitions log; returns the index to pass to
    /// [`VHost::synced`] once the caller's locks are released (0: nothing to wait for). Called in the
    /// same critical section as the change itself, so the log's order is the tables' order. Nothing
    /// is recorded while the vhost recovers (it replays what the log holds) or once it is deleted.
    pub(super) fn record(&self, change: DefinitionChange) -> u64 {
        if self.recovering.load(Ordering::Acquire) || self.deleted.load(Ordering::Acquire) {
            return 0;
        }
        self.definitions.get().map_or(0, |log| log.append(change))
    }

    /// Waits until the definitions log's record `index` is on disk (the group commit shares one fsync
    /// among the changes made meanwhile), off the Tokio worker: a declare's reply is sent only once
    /// its definition is durable. A failed write is logged (the entity stays declared in memory; the
    /// committer retries the write).
    pub(super) fn synced(&self, index: u64) {
        let Some(log) = self.definitions.get().filter(|_| index > 0) else {
            return;
        };
        if crate::sync::wait_off_worker(|| log.wait(index)) == Durability::Failed {
            error!(vhost = %self.name, index, "durable definition not yet written (disk alarm); retrying");
        }
    }

    /// Loads what the data directory holds for this vhost: durable exchanges, queues (with their
    /// messages) and bindings, replayed through the same calls as live declares. An entity that cannot
    /// be recreated (e.g. an exchange type no longer available) is logged and left out.
    ///
    /// # Errors
    /// The definitions document or a queue log cannot be read, or was written by a newer Warren.
    pub fn recover(&self) -> anyhow::Result<()> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let (log, defs) = store.open_definitions_log(&self.name)?;
        self.recovering.store(true, Ordering::Release);
        let mut messages = 0u64;
        let mut failed = 0;
        for x in &defs.exchanges {
            let flags = ExchangeFlags {
                durable: true,
                auto_delete: x.auto_delete,
                internal: x.internal,
            };
            let r = decode_table(&x.arguments).and_then(|arguments| {
                Ok(self.apply(Definition::Exchange {
                    name: &x.name,
                    kind: &x.kind,
                    flags,
                    arguments,
                })?)
            });
            if let Err(e) = r {
                failed += 1;
                error!(vhost = %self.name, exchange = %x.name, error = %e, "durable exchange not recovered");
            }
        }
        for q in &defs.queues {
            let flags = QueueFlags {
                durable: true,
                exclusive: false,
                auto_delete: q.auto_delete,
            };
            // A proxy of a queue homed on another cluster node comes back as a proxy.
            let home = q
                .home
                .as_deref()
                .and_then(|h| self.cluster.get().and_then(|c| c.id_of(h)));
            let r = decode_table(&q.arguments).and_then(|arguments| {
                let declare = || {
                    self.apply(Definition::Queue {
                        name: &q.name,
                        flags,
                        arguments,
                    })
                };
                Ok(match home {
                    Some(origin) => crate::cluster::command::with_applying(origin, declare),
                    None => declare(),
                }?)
            });
            if let Err(e) = r {
                self.recovering.store(false, Ordering::Release);
                return Err(e).with_context(|| {
                    format!("recovering queue '{}' in vhost '{}'", q.name, self.name)
                });
            }
            if let Some(queue) = read(&self.queues).get(q.name.as_str()) {
                messages += u64::from(queue.counts().messages);
            }
        }
        for b in &defs.bindings {
            let r = decode_table(&b.arguments).and_then(|arguments| {
                Ok(self.apply(Definition::Binding {
                    source: &b.source,
                    destination: &b.destination,
                    destination_type: &b.destination_type,
                    routing_key: &b.routing_key,
                    arguments,
                })?)
            });
            if let Err(e) = r {
                failed += 1;
                error!(vhost = %self.name, source = %b.source, destination = %b.destination, error = %e, "durable binding not recovered");
            }
        }
        let _ = self.definitions.set(log);
        self.recovering.store(false, Ordering::Release);
        store.remove_orphan_logs(&self.name, defs.queues.iter().map(|q| q.name.as_str()));
        info!(
            vhost = %self.name,
            exchanges = defs.exchanges.len(),
            queues = defs.queues.len(),
            bindings = defs.bindings.len(),
            messages,
            failed,
            "durable state recovered"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use amq_protocol::types::{FieldTable, ShortString};

    use super::super::{BindingChange, ExchangeFlags, QueueFlags, VHost};
    use crate::exchange::registry::Registry;
    use crate::store::Store;

    fn flags(durable: bool, auto_delete: bool) -> (ExchangeFlags, QueueFlags) {
        (
            ExchangeFlags {
                durable,
                auto_delete,
                internal: false,
            },
            QueueFlags {
                durable,
                exclusive: false,
                auto_delete: false,
            },
        )
    }

    /// A new data directory named after `test`, its store, and vhost `/` on it.
    fn fresh(test: &str) -> (std::path::PathBuf, Arc<Store>, Arc<VHost>) {
        let dir = std::env::temp_dir().join(format!("warren-vhost-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (store, v) = open(&dir);
        (dir, store, v)
    }

    /// Checks that the definitions log holds what the live tables do and that a restart recovers
    /// exactly that; removes `dir`; returns the definitions.
    fn logged_as_live_and_recovered(
        dir: &std::path::Path,
        store: Arc<Store>,
        v: Arc<VHost>,
    ) -> crate::store::definitions::StoredDefinitions {
        let live = v.snapshot();
        assert_eq!(v.logged_definitions(), Some(live.clone()));
        drop(v);
        store.shutdown();
        let (store, v) = open(dir);
        assert_eq!(v.snapshot(), live);
        store.shutdown();
        std::fs::remove_dir_all(dir).unwrap();
        live
    }

    /// The store in `dir` and vhost `/` recovered from it.
    fn open(dir: &std::path::Path) -> (Arc<Store>, Arc<VHost>) {
        let store = Store::open(dir, 1 << 20, 1 << 20).unwrap();
        let v = VHost::new(
            "/",
            Arc::new(Registry::default()),
            Some(store.clone()),
            &crate::memory::TEST_MEMORY,
        );
        v.recover().unwrap();
        (store, v)
    }

    /// Declares, binds, unbinds and deletes (with the cascades: a deleted queue's bindings, an
    /// auto-delete exchange that lost its last binding, an exchange-to-exchange binding to it) and
    /// checks the definitions log against the live tables, then across a restart.
    #[test]
    fn the_definitions_log_follows_every_change_and_survives_a_restart() {
        let (dir, store, v) = fresh("defs");
        let none = FieldTable::default();
        let (durable_x, durable_q) = flags(true, false);
        let (auto_x, _) = flags(true, true);
        let (_, transient_q) = flags(false, false);
        v.exchange_declare(&"x1".into(), "direct", false, durable_x, &none)
            .unwrap();
        v.exchange_declare(&"ad".into(), "fanout", false, auto_x, &none)
            .unwrap();
        v.exchange_bind("ad", "x1", &"e2e".into(), &none, BindingChange::Bind)
            .unwrap();
        v.queue_declare(&"t".into(), false, transient_q, &none, 1)
            .unwrap();
        v.queue_bind("t", "x1", &"t".into(), &none, 1, BindingChange::Bind)
            .unwrap();
        for i in 0..1500 {
            let q = format!("q{i}");
            v.queue_declare(&q.as_str().into(), false, durable_q, &none, 1)
                .unwrap();
            for x in ["amq.direct", "x1"] {
                v.queue_bind(&q, x, &q.as_str().into(), &none, 1, BindingChange::Bind)
                    .unwrap();
            }
        }
        v.queue_bind("q1", "ad", &"".into(), &none, 1, BindingChange::Bind)
            .unwrap();
        assert_eq!(v.logged_definitions(), Some(v.snapshot()));
        // q1's deletion empties `ad`, which goes, taking x1 → ad with it.
        v.queue_delete("q1", false, false, 1).unwrap();
        assert!(v.find_exchange("ad").is_none());
        v.queue_bind("q2", "x1", &"q2".into(), &none, 1, BindingChange::Unbind)
            .unwrap();
        for i in (3..1500).step_by(3) {
            v.queue_delete(&format!("q{i}"), false, false, 1).unwrap();
        }
        v.exchange_declare(&"x2".into(), "topic", false, durable_x, &none)
            .unwrap();
        v.queue_bind("q4", "x2", &"#".into(), &none, 1, BindingChange::Bind)
            .unwrap();
        v.exchange_delete("x1", false).unwrap();
        let live = logged_as_live_and_recovered(&dir, store, v);
        assert_eq!(live.exchanges.len(), 1);
        assert_eq!(live.queues.len(), 1000);
    }

    /// Four threads declare, bind, unbind and delete the same durable queue and exchanges at once,
    /// round after round (a barrier starts each round; a round's names are never touched again, so a
    /// change logged out of order would stay visible): the log must end up as the tables are,
    /// because each change is recorded in the critical section that makes it.
    #[test]
    fn concurrent_changes_are_logged_in_the_tables_order() {
        use rand::{Rng, SeedableRng};
        let (dir, store, v) = fresh("race");
        let none = FieldTable::default();
        let (durable_x, durable_q) = flags(true, false);
        let (auto_x, _) = flags(true, true);
        let rounds = 300;
        let barrier = std::sync::Barrier::new(4);
        std::thread::scope(|scope| {
            for t in 0..4u64 {
                let (v, none, barrier) = (&v, &none, &barrier);
                scope.spawn(move || {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(t);
                    for round in 0..rounds {
                        barrier.wait();
                        let q = format!("q{round}");
                        let (x, auto) = (format!("x{round}"), format!("a{round}"));
                        let key = ShortString::from(format!("k{}", rng.gen_range(0..2)));
                        // Errors (an entity deleted meanwhile) are part of the race.
                        for _ in 0..3 {
                            match rng.gen_range(0..9) {
                                0 => {
                                    let _ = v.queue_declare(
                                        &q.as_str().into(),
                                        false,
                                        durable_q,
                                        none,
                                        1,
                                    );
                                }
                                1 => {
                                    let _ = v.queue_delete(&q, false, false, 1);
                                }
                                2 => {
                                    let _ = v.exchange_declare(
                                        &x.as_str().into(),
                                        "direct",
                                        false,
                                        durable_x,
                                        none,
                                    );
                                }
                                3 => {
                                    let _ = v.exchange_delete(&x, false);
                                }
                                4 => {
                                    let _ = v.exchange_declare(
                                        &auto.as_str().into(),
                                        "fanout",
                                        false,
                                        auto_x,
                                        none,
                                    );
                                }
                                5 => {
                                    let _ =
                                        v.queue_bind(&q, &x, &key, none, 1, BindingChange::Bind);
                                }
                                6 => {
                                    let _ =
                                        v.queue_bind(&q, &x, &key, none, 1, BindingChange::Unbind);
                                }
                                7 => {
                                    let _ =
                                        v.queue_bind(&q, &auto, &key, none, 1, BindingChange::Bind);
                                }
                                _ => {
                                    let _ =
                                        v.exchange_bind(&auto, &x, &key, none, BindingChange::Bind);
                                }
                            }
                        }
                    }
                });
            }
        });
        logged_as_live_and_recovered(&dir, store, v);
    }
}
