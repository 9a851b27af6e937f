//! AMQP field tables and values (AMQP 0-9-1 §4.2.5.5, with RabbitMQ's type tags) as plugins see them.
//!
//! Tables cross the WIT boundary in wire encoding; [`Table::decode`] turns them into [`Value`]s.

/// One AMQP field value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `t`
    Boolean(bool),
    /// Any integer type (`b` `B` `s` `u` `I` `i` `l`), widened.
    Integer(i64),
    /// `f` or `d`.
    Float(f64),
    /// `D`: (scale, unscaled value).
    Decimal(u8, u32),
    /// `S` or `s`-string, as text (invalid UTF-8 is replaced).
    Text(String),
    /// `x`: a byte array.
    Bytes(Vec<u8>),
    /// `T`: seconds since the Unix epoch.
    Timestamp(u64),
    /// `F`: a nested table.
    Table(Table),
    /// `A`: a field array.
    Array(Vec<Value>),
    /// `V`
    Void,
}

impl Value {
    /// The value as text when it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an integer when it is one.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Integer(n) => Some(*n),
            _ => None,
        }
    }
}

impl From<&str> for Value {
    /// A string value (`S`).
    fn from(s: &str) -> Self {
        Value::Text(s.to_owned())
    }
}

impl From<String> for Value {
    /// A string value (`S`).
    fn from(s: String) -> Self {
        Value::Text(s)
    }
}

impl From<i64> for Value {
    /// An integer value (`l`).
    fn from(n: i64) -> Self {
        Value::Integer(n)
    }
}

impl From<i32> for Value {
    /// An integer value (`I`).
    fn from(n: i32) -> Self {
        Value::Integer(n.into())
    }
}

impl From<bool> for Value {
    /// A boolean value (`t`).
    fn from(b: bool) -> Self {
        Value::Boolean(b)
    }
}

impl From<f64> for Value {
    /// A floating-point value (`d`).
    fn from(n: f64) -> Self {
        Value::Float(n)
    }
}

impl From<Table> for Value {
    /// A nested table (`F`).
    fn from(t: Table) -> Self {
        Value::Table(t)
    }
}

/// A decoded field table: entries in wire order (duplicate keys kept; [`Table::get`] finds the first).
///
/// The broker hands plugins decoded tables; a plugin's tests build their own:
///
/// ```
/// use warren_plugin_sdk::{Table, Value};
///
/// let args = Table::new().with("x-hash-on", "header").with("weight", 3);
/// assert_eq!(args.get("x-hash-on").and_then(Value::as_str), Some("header"));
/// assert_eq!(args.get("weight").and_then(Value::as_i64), Some(3));
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Table {
    entries: Vec<(String, Value)>,
}

impl<K: Into<String>, V: Into<Value>> FromIterator<(K, V)> for Table {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Table {
            entries: iter
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }
}

/// Why a wire-encoded table could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed field table: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

impl Table {
    /// Decodes a table's octets (after its 32-bit length).
    ///
    /// # Errors
    /// [`DecodeError`] on truncated input or an unknown type tag.
    pub fn decode(bytes: &[u8]) -> Result<Table, DecodeError> {
        let mut r = Reader { buf: bytes, pos: 0 };
        let mut entries = Vec::new();
        while r.pos < bytes.len() {
            let len = r.u8()? as usize;
            let key = String::from_utf8_lossy(r.take(len)?).into_owned();
            let value = r.value()?;
            entries.push((key, value));
        }
        Ok(Table { entries })
    }

    /// An empty table.
    pub fn new() -> Table {
        Table::default()
    }

    /// The table with an entry added at the end (builder style, for tests).
    #[must_use]
    pub fn with(mut self, key: impl Into<String>, value: impl Into<Value>) -> Table {
        self.insert(key, value);
        self
    }

    /// Sets `key` to `value`: replaces the first entry of that name, or adds one at the end.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) {
        let (key, value) = (key.into(), value.into());
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((key, value)),
        }
    }

    /// The first entry named `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// All entries in wire order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| DecodeError(format!("truncated at octet {}", self.pos)))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn value(&mut self) -> Result<Value, DecodeError> {
        let tag = self.u8()?;
        Ok(match tag {
            b't' => Value::Boolean(self.u8()? != 0),
            b'b' => Value::Integer(i8::from_be_bytes(self.array()?).into()),
            b'B' => Value::Integer(self.u8()?.into()),
            b's' => Value::Integer(i16::from_be_bytes(self.array()?).into()),
            b'u' => Value::Integer(u16::from_be_bytes(self.array()?).into()),
            b'I' => Value::Integer(i32::from_be_bytes(self.array()?).into()),
            b'i' => Value::Integer(self.u32()?.into()),
            b'l' => Value::Integer(i64::from_be_bytes(self.array()?)),
            b'f' => Value::Float(f32::from_be_bytes(self.array()?).into()),
            b'd' => Value::Float(f64::from_be_bytes(self.array()?)),
            b'D' => {
                let scale = self.u8()?;
                Value::Decimal(scale, self.u32()?)
            }
            b'S' => {
                let len = self.u32()? as usize;
                Value::Text(String::from_utf8_lossy(self.take(len)?).into_owned())
            }
            b'x' => {
                let len = self.u32()? as usize;
                Value::Bytes(self.take(len)?.to_vec())
            }
            b'T' => Value::Timestamp(u64::from_be_bytes(self.array()?)),
            b'F' => {
                let len = self.u32()? as usize;
                Value::Table(Table::decode(self.take(len)?)?)
            }
            b'A' => {
                let len = self.u32()? as usize;
                Value::Array(decode_array(self.take(len)?)?)
            }
            b'V' => Value::Void,
            other => {
                return Err(DecodeError(format!(
                    "unknown field type '{}' at octet {}",
                    char::from(other),
                    self.pos - 1
                )))
            }
        })
    }
}

/// Decodes a field array's octets (after its 32-bit length).
///
/// # Errors
/// [`DecodeError`] on truncated input or an unknown type tag.
pub fn decode_array(bytes: &[u8]) -> Result<Vec<Value>, DecodeError> {
    let mut r = Reader { buf: bytes, pos: 0 };
    let mut values = Vec::new();
    while r.pos < bytes.len() {
        values.push(r.value()?);
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_scalars_nested_tables_and_arrays() {
        let mut b = Vec::new();
        b.extend([1, b'a', b'I']);
        b.extend(7i32.to_be_bytes());
        b.extend([1, b's', b'S']);
        b.extend(2u32.to_be_bytes());
        b.extend(b"hi");
        b.extend([1, b'n', b'F']);
        b.extend(3u32.to_be_bytes());
        b.extend([1, b'k', b'V']);
        b.extend([1, b'l', b'A']);
        b.extend(4u32.to_be_bytes());
        b.extend([b't', 1, b'B', 9]);
        let t = Table::decode(&b).unwrap();
        assert_eq!(t.get("a"), Some(&Value::Integer(7)));
        assert_eq!(t.get("s").and_then(Value::as_str), Some("hi"));
        let mut inner = Table::default();
        inner.entries.push(("k".into(), Value::Void));
        assert_eq!(t.get("n"), Some(&Value::Table(inner)));
        assert_eq!(
            t.get("l"),
            Some(&Value::Array(vec![Value::Boolean(true), Value::Integer(9)]))
        );
    }

    #[test]
    fn truncated_and_unknown_input_is_an_error() {
        assert!(Table::decode(&[1, b'a', b'I', 0]).is_err());
        assert!(Table::decode(&[1, b'a', b'?']).is_err());
        assert!(Table::decode(&[5, b'a']).is_err());
    }
}
