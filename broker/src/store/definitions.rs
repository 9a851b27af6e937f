//! A vhost's durable definitions (exchanges, queues, bindings) as one JSON document, replaced atomically
//! after every change to them and replayed through the vhost's declare/bind calls at start.
//!
//! Arguments are kept in their AMQP wire encoding (base64 of a field table), so a redeclare after a
//! restart compares equal type for type.

use std::path::Path;

use amq_protocol::types::parsing::parse_field_table;
use amq_protocol::types::FieldTable;
use anyhow::{bail, Context};
use base64::Engine;
use serde::{Deserialize, Serialize};

/// Version of this document's layout.
pub(crate) const DEFINITIONS_VERSION: u32 = 1;

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
}

/// A binding between durable entities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Exchanges (not the pre-declared `amq.*` ones).
    pub exchanges: Vec<StoredExchange>,
    /// Queues.
    pub queues: Vec<StoredQueue>,
    /// Bindings.
    pub bindings: Vec<StoredBinding>,
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
