//! A vhost's durable definitions (exchanges, queues, bindings): the state they form
//! ([`DefinitionsState`], applied one [`DefinitionChange`] at a time), and that state as one JSON
//! document ([`StoredDefinitions`]), the snapshot the definitions log (`definitions_log`) compacts
//! into and the vhost replays through its declare/bind calls at start.
//!
//! Arguments are kept in their AMQP wire encoding (base64 of a field table), so a redeclare after a
//! restart compares equal type for type.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use amq_protocol::types::parsing::parse_field_table;
use amq_protocol::types::FieldTable;
use anyhow::{bail, Context};
use base64::Engine;
use serde::{Deserialize, Serialize};

/// Version of this document's layout. 2 added `last_index` (the definitions log's last record the
/// snapshot holds); a version 1 document is read as a snapshot at index 0.
pub(crate) const DEFINITIONS_VERSION: u32 = 2;

/// A durable exchange.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct StoredExchange {
    /// Name.
    pub name: String,
    /// Type name.
    #[serde(rename = "type")]
    pub kind: String,
    /// Auto-delete flag.
    pub auto_delete: bool,
    /// Internal flag.
    pub internal: bool,
    /// Arguments, base64 of their AMQP encoding.
    pub arguments: String,
}

/// A durable queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct StoredQueue {
    /// Name.
    pub name: String,
    /// Auto-delete flag.
    pub auto_delete: bool,
    /// Arguments, base64 of their AMQP encoding.
    pub arguments: String,
    /// In a cluster, the queue's home node when it is another node (this node keeps a proxy);
    /// absent for a queue homed here (and in every single-node data directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<String>,
}

/// A binding between durable entities.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct StoredBinding {
    /// Source exchange.
    pub source: String,
    /// Destination queue or exchange.
    pub destination: String,
    /// `queue` or `exchange`.
    pub destination_type: String,
    /// Binding key.
    pub routing_key: String,
    /// Arguments, base64 of their AMQP encoding.
    pub arguments: String,
}

/// The document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct StoredDefinitions {
    /// [`DEFINITIONS_VERSION`] when written.
    pub format_version: u32,
    /// Index of the last definitions-log record this snapshot holds (0: none); replay skips records
    /// up to it.
    #[serde(default)]
    pub last_index: u64,
    /// Exchanges (not the pre-declared `amq.*` ones).
    pub exchanges: Vec<StoredExchange>,
    /// Queues.
    pub queues: Vec<StoredQueue>,
    /// Bindings.
    pub bindings: Vec<StoredBinding>,
}

/// One change to a vhost's durable definitions: a record of the definitions log. Applying the same
/// changes in the same order to the same state gives the same state ([`DefinitionsState::apply`]),
/// which is what a replicated state machine needs of its commands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum DefinitionChange {
    /// A durable exchange was declared.
    PutExchange(StoredExchange),
    /// A durable exchange was deleted, with every binding from or to it.
    DeleteExchange {
        /// Its name.
        name: String,
    },
    /// A durable queue was declared.
    PutQueue(StoredQueue),
    /// A durable queue was deleted, with every binding to it.
    DeleteQueue {
        /// Its name.
        name: String,
    },
    /// A binding between durable entities was made.
    PutBinding(StoredBinding),
    /// A binding between durable entities was removed.
    DeleteBinding(StoredBinding),
}

/// A vhost's durable definitions in memory, indexed so that every [`DefinitionChange`] costs O(1)
/// (bindings by source and by destination, so deleting an entity finds its bindings directly).
#[derive(Debug, Default, Clone)]
pub(crate) struct DefinitionsState {
    exchanges: HashMap<String, StoredExchange>,
    queues: HashMap<String, StoredQueue>,
    by_source: HashMap<String, HashSet<StoredBinding>>,
    by_destination: HashMap<(String, String), HashSet<StoredBinding>>,
    bindings: usize,
}

impl DefinitionsState {
    /// The state a snapshot holds.
    pub(crate) fn from_document(d: &StoredDefinitions) -> Self {
        let mut s = DefinitionsState::default();
        for x in &d.exchanges {
            s.apply(DefinitionChange::PutExchange(x.clone()));
        }
        for q in &d.queues {
            s.apply(DefinitionChange::PutQueue(q.clone()));
        }
        for b in &d.bindings {
            s.apply(DefinitionChange::PutBinding(b.clone()));
        }
        s
    }

    /// Exchanges, queues and bindings held.
    pub(crate) fn len(&self) -> usize {
        self.exchanges.len() + self.queues.len() + self.bindings
    }

    /// Applies one change.
    pub(crate) fn apply(&mut self, change: DefinitionChange) {
        match change {
            DefinitionChange::PutExchange(x) => {
                self.exchanges.insert(x.name.clone(), x);
            }
            DefinitionChange::DeleteExchange { name } => {
                self.exchanges.remove(&name);
                for b in self.by_source.remove(&name).unwrap_or_default() {
                    self.bindings -= 1;
                    self.forget(&b, false);
                }
                let to = ("exchange".to_owned(), name);
                for b in self.by_destination.remove(&to).unwrap_or_default() {
                    self.forget(&b, true);
                }
            }
            DefinitionChange::PutQueue(q) => {
                self.queues.insert(q.name.clone(), q);
            }
            DefinitionChange::DeleteQueue { name } => {
                self.queues.remove(&name);
                let to = ("queue".to_owned(), name);
                for b in self.by_destination.remove(&to).unwrap_or_default() {
                    self.forget(&b, true);
                }
            }
            DefinitionChange::PutBinding(b) => {
                let to = (b.destination_type.clone(), b.destination.clone());
                if self
                    .by_source
                    .entry(b.source.clone())
                    .or_default()
                    .insert(b.clone())
                {
                    self.bindings += 1;
                }
                self.by_destination.entry(to).or_default().insert(b);
            }
            DefinitionChange::DeleteBinding(b) => {
                let removed = self
                    .by_source
                    .get_mut(&b.source)
                    .is_some_and(|set| set.remove(&b));
                if removed {
                    self.bindings -= 1;
                    self.forget(&b, false);
                }
            }
        }
    }

    /// Removes `b` from the index it was not taken out of already (`from_source`: the source's).
    fn forget(&mut self, b: &StoredBinding, from_source: bool) {
        if from_source {
            if let Some(set) = self.by_source.get_mut(&b.source) {
                if set.remove(b) {
                    self.bindings -= 1;
                }
                if set.is_empty() {
                    self.by_source.remove(&b.source);
                }
            }
        } else {
            let to = (b.destination_type.clone(), b.destination.clone());
            if let Some(set) = self.by_destination.get_mut(&to) {
                set.remove(b);
                if set.is_empty() {
                    self.by_destination.remove(&to);
                }
            }
            if self.by_source.get(&b.source).is_some_and(HashSet::is_empty) {
                self.by_source.remove(&b.source);
            }
        }
    }

    /// The state as a snapshot at log index `last_index`, sorted so that equal states give equal
    /// documents.
    pub(crate) fn to_document(&self, last_index: u64) -> StoredDefinitions {
        let mut d = StoredDefinitions {
            format_version: DEFINITIONS_VERSION,
            last_index,
            exchanges: self.exchanges.values().cloned().collect(),
            queues: self.queues.values().cloned().collect(),
            bindings: self.by_source.values().flatten().cloned().collect(),
        };
        d.sort();
        d
    }
}

/// Encodes a table for [`StoredDefinitions`].
pub(crate) fn encode_table(t: &FieldTable) -> String {
    let bytes = crate::protocol::values::encode_table(t);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decodes a table written by [`encode_table`].
///
/// # Errors
/// Not base64, or not an AMQP field table.
pub(crate) fn decode_table(s: &str) -> anyhow::Result<FieldTable> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .context("arguments are not base64")?;
    match parse_field_table(&bytes[..]) {
        Ok((_, t)) => Ok(t),
        Err(e) => bail!("arguments are not an AMQP table: {e}"),
    }
}

impl StoredDefinitions {
    /// Reads the document; `Ok(None)` if there is none.
    ///
    /// # Errors
    /// Unreadable or malformed, or written by a newer version.
    pub(crate) fn load(path: &Path) -> anyhow::Result<Option<Self>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let defs: StoredDefinitions =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if defs.format_version > DEFINITIONS_VERSION {
            bail!(
                "{} was written by a newer Warren (definitions format {}); refusing to start",
                path.display(),
                defs.format_version
            );
        }
        Ok(Some(defs))
    }

    /// Sorts the lists, so that equal definitions give equal documents.
    pub(crate) fn sort(&mut self) {
        self.exchanges.sort_by(|a, b| a.name.cmp(&b.name));
        self.queues.sort_by(|a, b| a.name.cmp(&b.name));
        self.bindings.sort_by(|a, b| {
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
    }

    /// Writes the document atomically.
    ///
    /// # Errors
    /// Any I/O error (the previous document stays).
    pub(crate) fn save(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        super::write_atomic(path, &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::{AMQPValue, ShortString};

    #[test]
    fn tables_keep_their_types() {
        let mut t = FieldTable::default();
        t.insert(ShortString::from("x-max-length"), AMQPValue::ShortInt(5));
        t.insert(
            ShortString::from("x-message-ttl"),
            AMQPValue::LongLongInt(10),
        );
        assert_eq!(decode_table(&encode_table(&t)).unwrap(), t);
    }
}
