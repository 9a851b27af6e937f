//! Helpers over AMQP field values (AMQP 0-9-1 §4.2.5.5), shared by argument validation and the headers
//! exchange.

use amq_protocol::types::AMQPValue;

/// Erlang-side type name of a field value, as RabbitMQ prints it in errors.
pub(crate) fn type_name(v: &AMQPValue) -> &'static str {
    match v {
        AMQPValue::Boolean(_) => "bool",
        AMQPValue::ShortShortInt(_) => "byte",
        AMQPValue::ShortShortUInt(_) => "unsignedbyte",
        AMQPValue::ShortInt(_) => "short",
        AMQPValue::ShortUInt(_) => "unsignedshort",
        AMQPValue::LongInt(_) => "signedint",
        AMQPValue::LongUInt(_) => "unsignedint",
        AMQPValue::LongLongInt(_) => "long",
        AMQPValue::Float(_) => "float",
        AMQPValue::Double(_) => "double",
        AMQPValue::DecimalValue(_) => "decimal",
        AMQPValue::ShortString(_) => "shortstr",
        AMQPValue::LongString(_) => "longstr",
        AMQPValue::FieldArray(_) => "array",
        AMQPValue::Timestamp(_) => "timestamp",
        AMQPValue::FieldTable(_) => "table",
        AMQPValue::ByteArray(_) => "binary",
        AMQPValue::Void => "void",
    }
}

/// An integer of any AMQP integer width.
pub(crate) fn int_value(v: &AMQPValue) -> Option<i128> {
    Some(match v {
        AMQPValue::ShortShortInt(n) => (*n).into(),
        AMQPValue::ShortShortUInt(n) => (*n).into(),
        AMQPValue::ShortInt(n) => (*n).into(),
        AMQPValue::ShortUInt(n) => (*n).into(),
        AMQPValue::LongInt(n) => (*n).into(),
        AMQPValue::LongUInt(n) => (*n).into(),
        AMQPValue::LongLongInt(n) => (*n).into(),
        _ => return None,
    })
}

/// A string value (long or short string) as UTF-8.
pub(crate) fn str_value(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// A field table in wire encoding, with its 32-bit length prefix (AMQP 0-9-1 §4.2.5.5).
pub(crate) fn encode_table(t: &amq_protocol::types::FieldTable) -> Vec<u8> {
    amq_protocol::types::generation::gen_field_table(t)(amq_protocol::frame::WriteContext::from(
        Vec::new(),
    ))
    .map(|ctx| ctx.write)
    .unwrap_or_default()
}

/// A field array in wire encoding, with its 32-bit length prefix.
pub(crate) fn encode_array(a: &amq_protocol::types::FieldArray) -> Vec<u8> {
    amq_protocol::types::generation::gen_field_array(a)(amq_protocol::frame::WriteContext::from(
        Vec::new(),
    ))
    .map(|ctx| ctx.write)
    .unwrap_or_default()
}
