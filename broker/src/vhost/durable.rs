//! A vhost's durable side: the definitions document (durable exchanges, queues, bindings) written
//! after every change to a durable entity, recovery from the data directory at start, and opening a
//! durable queue's log and idempotency-key record (ARCHITECTURE.md, "Durability: storage design").

use std::sync::atomic::Ordering;

use amq_protocol::protocol::AMQPHardError;
use amq_protocol::types::{FieldTable, ShortString};
use anyhow::Context;
use tracing::{error, info};

use super::{BindingChange, ExchangeFlags, QueueFlags, VHost};
use crate::error::{AmqpError, AmqpResult};
use crate::exchange::Destination;
use crate::queue::{plugins, QueueStorage};
use crate::store::definitions::{
    decode_table, encode_table, StoredBinding, StoredDefinitions, StoredExchange, StoredQueue,
    DEFINITIONS_VERSION,
};
use crate::sync::{lock, read};

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

    /// The durable definitions as they stand, sorted so that equal states compare equal. A binding is
    /// durable when its source and destination are.
    pub(super) fn snapshot(&self) -> StoredDefinitions {
        let exchanges = read(&self.exchanges);
        let queues = read(&self.queues);
        let mut d = StoredDefinitions {
            format_version: DEFINITIONS_VERSION,
            ..StoredDefinitions::default()
        };
        for x in exchanges.values().filter(|x| x.durable) {
            if !x.name.as_str().starts_with("amq.") {
                d.exchanges.push(StoredExchange {
                    name: x.name.to_string(),
                    kind: x.kind.to_string(),
                    auto_delete: x.auto_delete,
                    internal: x.internal,
                    arguments: encode_table(&x.arguments),
                });
            }
            for b in x.bindings() {
                let (destination_type, durable) = match &b.destination {
                    Destination::Queue(q) => ("queue", q.durable && q.exclusive_owner.is_none()),
                    Destination::Exchange(n) => (
                        "exchange",
                        exchanges.get(n.as_str()).is_some_and(|x| x.durable),
                    ),
                };
                if durable {
                    d.bindings.push(StoredBinding {
                        source: x.name.to_string(),
                        destination: b.destination.name().to_owned(),
                        destination_type: destination_type.to_owned(),
                        routing_key: b.key.to_string(),
                        arguments: encode_table(&b.arguments),
                    });
                }
            }
        }
        for q in queues
            .values()
            .filter(|q| q.durable && q.exclusive_owner.is_none())
        {
            d.queues.push(StoredQueue {
                name: q.name.to_string(),
                auto_delete: q.auto_delete,
                arguments: encode_table(&q.arguments),
            });
        }
        d.exchanges.sort_by(|a, b| a.name.cmp(&b.name));
        d.queues.sort_by(|a, b| a.name.cmp(&b.name));
        d.bindings.sort_by(|a, b| {
            (
                &a.source,
                &a.destination,
                &a.destination_type,
                &a.routing_key,
                &a.arguments,
            )
                .cmp(&(
                    &b.source,
                    &b.destination,
                    &b.destination_type,
                    &b.routing_key,
                    &b.arguments,
                ))
        });
        d
    }

    /// Writes the durable definitions if they changed. Called after every change to a durable entity,
    /// before the client gets its reply.
    pub(super) fn persist(&self) {
        let Some(store) = &self.store else { return };
        if self.recovering.load(Ordering::Acquire) || self.deleted.load(Ordering::Acquire) {
            return;
        }
        let mut last = lock(&self.persisted);
        let snapshot = self.snapshot();
        if last.as_ref() == Some(&snapshot) {
            return;
        }
        match snapshot.save(&store.vhost_dir(&self.name).join("definitions.json")) {
            Ok(()) => *last = Some(snapshot),
            Err(e) => error!(vhost = %self.name, error = %e, "cannot write durable definitions"),
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
        let path = store.vhost_dir(&self.name).join("definitions.json");
        let defs = StoredDefinitions::load(&path)?.unwrap_or_default();
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
            let r = decode_table(&q.arguments).and_then(|arguments| {
                Ok(self.apply(Definition::Queue {
                    name: &q.name,
                    flags,
                    arguments,
                })?)
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
        self.recovering.store(false, Ordering::Release);
        store.remove_orphan_logs(&self.name, defs.queues.iter().map(|q| q.name.as_str()));
        *lock(&self.persisted) = Some(self.snapshot());
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
