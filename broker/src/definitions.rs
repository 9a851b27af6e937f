//! RabbitMQ-format definitions (JSON export of `rabbitmqctl export_definitions` / the management API),
//! loaded at start: vhosts, users, permissions, policies, exchanges, queues, bindings
//! (RabbitMQ docs/definitions.md). Entities are declared through the same vhost calls as live declares.
//! Unknown top-level keys (`rabbit_version`, `parameters`, …) are ignored.

use std::path::Path;

use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use anyhow::Context;
use serde::Deserialize;
use serde_json::Value;

use crate::config::{Permission, Policy};

/// A user entry.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct DefUser {
    /// Name.
    pub name: String,
    /// RabbitMQ password hash (base64).
    #[serde(default)]
    pub password_hash: Option<String>,
    /// Plain password (accepted for hand-written files).
    #[serde(default)]
    pub password: Option<String>,
    /// `rabbit_password_hashing_sha256` (the default when absent) or
    /// `rabbit_password_hashing_sha512`.
    #[serde(default)]
    pub hashing_algorithm: Option<String>,
    /// Tags: an array, or a comma-separated string in older exports.
    #[serde(default)]
    pub tags: Value,
    /// User limits (`max-connections`, `max-channels`); `{}` or absent for none.
    #[serde(default)]
    pub limits: Value,
}

/// Limits from a definitions value: an object of limits, or RabbitMQ's `[]` / `{}` / absent for none.
///
/// # Errors
/// An object with an unknown key or a value that is not an integer.
fn limits_from<T: Default + serde::de::DeserializeOwned>(
    v: &Value,
    what: &str,
) -> anyhow::Result<T> {
    match v {
        Value::Object(o) if !o.is_empty() => serde_json::from_value(v.clone())
            .with_context(|| format!("definitions: limits of {what}")),
        _ => Ok(T::default()),
    }
}

impl DefUser {
    /// The user's limits.
    ///
    /// # Errors
    /// Limits that do not parse, with the user's name.
    pub(crate) fn user_limits(&self) -> anyhow::Result<crate::limits::UserLimits> {
        limits_from(&self.limits, &format!("user '{}'", self.name))
    }

    /// The user's hashing algorithm; SHA-256 when the entry names none.
    ///
    /// # Errors
    /// An algorithm Warren does not implement, named in the message.
    pub(crate) fn algorithm(&self) -> anyhow::Result<crate::auth::HashingAlgorithm> {
        match &self.hashing_algorithm {
            None => Ok(crate::auth::HashingAlgorithm::default()),
            Some(alg) => crate::auth::HashingAlgorithm::from_rabbit_name(alg).ok_or_else(|| {
                anyhow::anyhow!(
                    "definitions: user '{}' uses unsupported hashing algorithm '{alg}' \
                     (supported: rabbit_password_hashing_sha256, rabbit_password_hashing_sha512)",
                    self.name
                )
            }),
        }
    }

    /// Tags as a list.
    pub(crate) fn tag_list(&self) -> Vec<String> {
        match &self.tags {
            Value::Array(a) => a
                .iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect(),
            Value::String(s) => s
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// A vhost entry.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct DefVhost {
    /// Name.
    pub name: String,
    /// Vhost limits as some exports carry them here (`[]` when none).
    #[serde(default)]
    pub limits: Value,
}

/// A runtime parameter entry; Warren reads component `vhost-limits` (RabbitMQ's home of vhost limits
/// in definitions) and ignores the others.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct DefParameter {
    /// Vhost.
    pub vhost: String,
    /// Component, e.g. `vhost-limits`, `shovel`, `federation-upstream`.
    pub component: String,
    /// Parameter name (`limits` for vhost limits): part of the format, not needed to apply the
    /// parameters Warren knows (they are told apart by `component`).
    #[serde(default)]
    #[allow(dead_code)]
    pub name: String,
    /// The value.
    #[serde(default)]
    pub value: Value,
}

/// An exchange entry.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct DefExchange {
    /// Name.
    pub name: String,
    /// Vhost.
    pub vhost: String,
    /// Exchange type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Durable flag.
    #[serde(default)]
    pub durable: bool,
    /// Auto-delete flag.
    #[serde(default)]
    pub auto_delete: bool,
    /// Internal flag.
    #[serde(default)]
    pub internal: bool,
    /// Arguments.
    #[serde(default)]
    pub arguments: serde_json::Map<String, Value>,
}

/// A queue entry.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct DefQueue {
    /// Name.
    pub name: String,
    /// Vhost.
    pub vhost: String,
    /// Durable flag.
    #[serde(default)]
    pub durable: bool,
    /// Auto-delete flag.
    #[serde(default)]
    pub auto_delete: bool,
    /// Arguments.
    #[serde(default)]
    pub arguments: serde_json::Map<String, Value>,
}

/// A binding entry.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct DefBinding {
    /// Source exchange.
    pub source: String,
    /// Vhost.
    pub vhost: String,
    /// Destination name.
    pub destination: String,
    /// `queue` or `exchange`.
    pub destination_type: String,
    /// Binding key.
    #[serde(default)]
    pub routing_key: String,
    /// Arguments.
    #[serde(default)]
    pub arguments: serde_json::Map<String, Value>,
}

/// A definitions file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Definitions {
    /// Users.
    pub users: Vec<DefUser>,
    /// Vhosts.
    pub vhosts: Vec<DefVhost>,
    /// Permissions.
    pub permissions: Vec<Permission>,
    /// Policies.
    pub policies: Vec<Policy>,
    /// Exchanges.
    pub exchanges: Vec<DefExchange>,
    /// Queues.
    pub queues: Vec<DefQueue>,
    /// Bindings.
    pub bindings: Vec<DefBinding>,
    /// Runtime parameters (vhost limits among them).
    pub parameters: Vec<DefParameter>,
}

impl Definitions {
    /// Reads and parses a definitions file.
    ///
    /// # Errors
    /// The file cannot be read or is not valid definitions JSON.
    pub(crate) fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading definitions {}", path.display()))?;
        let value: Value = serde_json::from_str(&text)
            .with_context(|| format!("parsing definitions {}", path.display()))?;
        Self::from_value(value).with_context(|| format!("definitions {}", path.display()))
    }

    /// Parses definitions from JSON (a file, or a body posted to the management API).
    ///
    /// # Errors
    /// Not definitions JSON (the message says which field), an unsupported hashing algorithm, or
    /// limits that do not parse.
    pub(crate) fn from_value(value: Value) -> anyhow::Result<Self> {
        let defs: Definitions = serde_json::from_value(value)?;
        for u in &defs.users {
            u.algorithm()?;
            u.user_limits()?;
        }
        defs.vhost_limits()?;
        Ok(defs)
    }

    /// Vhost limits by vhost: each vhost entry's `limits`, then `vhost-limits` parameters over them.
    ///
    /// # Errors
    /// Limits that do not parse, naming the vhost.
    pub(crate) fn vhost_limits(&self) -> anyhow::Result<Vec<(String, crate::limits::VhostLimits)>> {
        let mut out = Vec::new();
        for v in &self.vhosts {
            out.push((
                v.name.clone(),
                limits_from(&v.limits, &format!("vhost '{}'", v.name))?,
            ));
        }
        for p in self
            .parameters
            .iter()
            .filter(|p| p.component == "vhost-limits")
        {
            out.push((
                p.vhost.clone(),
                limits_from(&p.value, &format!("vhost '{}'", p.vhost))?,
            ));
        }
        Ok(out)
    }
}

/// Converts a JSON value to an AMQP field value (integers as signed 64-bit, as RabbitMQ's import does).
pub(crate) fn amqp_value(v: &Value) -> AMQPValue {
    match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        Value::Array(a) => AMQPValue::FieldArray(FieldArray::from(
            a.iter().map(amqp_value).collect::<Vec<_>>(),
        )),
        Value::Object(o) => AMQPValue::FieldTable(field_table(o)),
    }
}

/// An AMQP value as JSON, the way RabbitMQ's management API shows arguments: numbers as numbers,
/// strings (and byte arrays, lossily) as strings, tables as objects, arrays as arrays, void as null,
/// a timestamp as its seconds.
pub(crate) fn json_value(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::Float(f) => {
            serde_json::Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number)
        }
        AMQPValue::Double(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        AMQPValue::DecimalValue(d) => {
            serde_json::Number::from_f64(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))
                .map_or(Value::Null, Value::Number)
        }
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_owned()),
        AMQPValue::LongString(s) => {
            Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        AMQPValue::ByteArray(b) => {
            Value::String(String::from_utf8_lossy(b.as_slice()).into_owned())
        }
        AMQPValue::Timestamp(t) => Value::from(*t),
        AMQPValue::FieldTable(t) => table_json(t),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(json_value).collect()),
        AMQPValue::Void => Value::Null,
        other => crate::protocol::values::int_value(other)
            .and_then(|n| i64::try_from(n).ok())
            .map_or(Value::Null, Value::from),
    }
}

/// An AMQP table as a JSON object ([`json_value`] for each value).
pub(crate) fn table_json(t: &FieldTable) -> Value {
    Value::Object(
        t.inner()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), json_value(v)))
            .collect(),
    )
}

/// Converts a JSON object to an AMQP table; keys longer than 255 bytes are skipped.
pub(crate) fn field_table(o: &serde_json::Map<String, Value>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in o {
        if let Ok(k) = ShortString::try_new(k.as_str()) {
            t.insert(k, amqp_value(v));
        }
    }
    t
}
