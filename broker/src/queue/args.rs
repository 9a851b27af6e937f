//! Queue and consumer `x-…` arguments, in one place: queue.declare's ([`QueueArgs`], and the
//! idempotency plugin's, [`IdempotencyArgs`]) and basic.consume's ([`ConsumeArgs`]: consumer priority,
//! filter plugin), parsed and validated once with RabbitMQ's reply texts
//! (`invalid arg 'x-message-ttl' for queue 'q' in vhost '/': {value_negative,-1}`).
//! Reference: RabbitMQ `rabbit_amqqueue:declare_args/0`, docs/ttl.md, docs/dlx.md, docs/maxlength,
//! docs/priority.md, docs/consumers.md (single active consumer, consumer timeout), docs/queues.md.

use std::time::Duration;

use amq_protocol::types::{AMQPValue, FieldTable, ShortString};

use super::plugins::{OnFailure, Window};

pub(crate) use crate::protocol::values::{int_value, str_value, type_name};

/// What happens when a queue is over `x-max-length` / `x-max-length-bytes` (RabbitMQ docs/maxlength).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Overflow {
    /// Drop (or dead-letter) the oldest ready message.
    #[default]
    DropHead,
    /// Refuse the new message (publisher confirm nack).
    RejectPublish,
    /// Refuse the new message and dead-letter it.
    RejectPublishDlx,
}

/// Parsed queue arguments. Durations are milliseconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueArgs {
    /// `x-message-ttl`: per-queue message TTL, ms.
    pub message_ttl: Option<u64>,
    /// `x-expires`: delete the queue after this long unused, ms (> 0).
    pub expires: Option<u64>,
    /// `x-max-length`: most ready messages.
    pub max_length: Option<u64>,
    /// `x-max-length-bytes`: most ready body bytes.
    pub max_length_bytes: Option<u64>,
    /// `x-overflow`.
    pub overflow: Overflow,
    /// Whether `x-overflow` was given (a policy's `overflow` applies only when not).
    pub overflow_given: bool,
    /// `x-dead-letter-exchange` (may be `""`, the default exchange).
    pub dead_letter_exchange: Option<ShortString>,
    /// `x-dead-letter-routing-key`.
    pub dead_letter_routing_key: Option<ShortString>,
    /// `x-max-priority`: 1–255; messages' priority is capped to it.
    pub max_priority: Option<u8>,
    /// `x-single-active-consumer`.
    pub single_active_consumer: bool,
    /// `x-delivery-limit`: deliveries a message may have before a requeue dead-letters it instead.
    pub delivery_limit: Option<u32>,
    /// `x-consumer-timeout`: how long a delivery may stay unacked, ms.
    pub consumer_timeout: Option<u64>,
    /// `x-queue-type: quorum` (replicated through the cluster's quorum group).
    pub quorum: bool,
}

/// The delivery limit of a quorum queue declared without `x-delivery-limit` (RabbitMQ 4.0 and
/// later; `-1` restores unlimited). RabbitMQ docs/quorum-queues "Poison Message Handling".
pub(crate) const QUORUM_DELIVERY_LIMIT: u32 = 20;

/// Arguments a quorum queue refuses: RabbitMQ refuses the first two for its quorum queues; Warren's
/// quorum queues do not implement the rest yet.
pub(crate) const QUORUM_REFUSED: &[&str] = &[
    "x-max-priority",
    "x-queue-mode",
    "x-message-ttl",
    "x-expires",
    "x-single-active-consumer",
    "x-idempotency",
];

/// Largest TTL RabbitMQ accepts (`rabbit_misc:check_expiry`, 2^32 - 1 ms... as its `?MAX_EXPIRY_TIMER`).
const MAX_EXPIRY: i128 = 4_294_967_295;

type Check<T> = Result<T, String>;

fn int(v: &AMQPValue) -> Check<i128> {
    // RabbitMQ 3.10's wording for a non-integer where an integer is required.
    int_value(v).ok_or_else(|| format!("\"expected integer, got {}\"", type_name(v)))
}

fn non_neg(v: &AMQPValue) -> Check<u64> {
    let n = int(v)?;
    if n < 0 {
        return Err(format!("{{value_negative,{n}}}"));
    }
    u64::try_from(n).map_err(|_| format!("{{value_too_large,{n}}}"))
}

fn expiry(v: &AMQPValue, allow_zero: bool) -> Check<u64> {
    let n = int(v)?;
    if n < 0 {
        return Err(format!("{{value_negative,{n}}}"));
    }
    if n == 0 && !allow_zero {
        return Err("{value_zero,0}".into());
    }
    if n > MAX_EXPIRY {
        return Err(format!("{{value_too_large,{n},{MAX_EXPIRY}}}"));
    }
    Ok(n as u64)
}

fn string(v: &AMQPValue) -> Check<ShortString> {
    str_value(v)
        .and_then(|s| ShortString::try_new(s).ok())
        .ok_or_else(|| format!("{{unacceptable_type,{}}}", type_name(v)))
}

fn boolean(v: &AMQPValue) -> Check<bool> {
    match v {
        AMQPValue::Boolean(b) => Ok(*b),
        other => Err(format!("{{unacceptable_type,{}}}", type_name(other))),
    }
}

/// An invalid argument: which one and RabbitMQ's error term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidArg {
    /// Argument name.
    pub key: &'static str,
    /// RabbitMQ's error term, e.g. `{value_negative,-1}`.
    pub detail: String,
    /// Set for a dead-letter argument of the wrong type, which RabbitMQ reports in another sentence:
    /// `invalid type 'signedint' for arg 'x-dead-letter-exchange' in queue 'q' in vhost '/'`.
    pub wrong_type: Option<&'static str>,
}

impl InvalidArg {
    /// The reply text after `PRECONDITION_FAILED - `, in RabbitMQ's words.
    pub fn text(&self, queue: &str, vhost: &str) -> String {
        match self.wrong_type {
            Some(t) => format!(
                "invalid type '{t}' for arg '{}' in queue '{queue}' in vhost '{vhost}'",
                self.key
            ),
            None => format!(
                "invalid arg '{}' for queue '{queue}' in vhost '{vhost}': {}",
                self.key, self.detail
            ),
        }
    }
}

impl QueueArgs {
    /// Parses the arguments RabbitMQ validates; other keys are kept in the queue's table but ignored.
    ///
    /// # Errors
    /// The first invalid argument, for `406 PRECONDITION_FAILED - invalid arg 'K' for queue …: detail`.
    pub fn parse(args: &FieldTable) -> Result<QueueArgs, InvalidArg> {
        let mut out = QueueArgs::default();
        let get = |key: &str| args.inner().get(key);
        let fail = |key: &'static str| move |detail: String| invalid(key, detail);
        let dead_letter_string = |key: &'static str, v: &AMQPValue| {
            string(v).map_err(|detail| InvalidArg {
                key,
                detail,
                wrong_type: Some(type_name(v)),
            })
        };
        if let Some(v) = get("x-message-ttl") {
            out.message_ttl = Some(expiry(v, true).map_err(fail("x-message-ttl"))?);
        }
        if let Some(v) = get("x-expires") {
            out.expires = Some(expiry(v, false).map_err(fail("x-expires"))?);
        }
        if let Some(v) = get("x-max-length") {
            out.max_length = Some(non_neg(v).map_err(fail("x-max-length"))?);
        }
        if let Some(v) = get("x-max-length-bytes") {
            out.max_length_bytes = Some(non_neg(v).map_err(fail("x-max-length-bytes"))?);
        }
        if let Some(v) = get("x-overflow") {
            let s = str_value(v).ok_or_else(|| {
                fail("x-overflow")(format!("{{unacceptable_type,{}}}", type_name(v)))
            })?;
            out.overflow_given = true;
            out.overflow = match s.as_str() {
                "drop-head" => Overflow::DropHead,
                "reject-publish" => Overflow::RejectPublish,
                "reject-publish-dlx" => Overflow::RejectPublishDlx,
                _ => return Err(fail("x-overflow")("invalid_overflow".into())),
            };
        }
        if let Some(v) = get("x-dead-letter-exchange") {
            out.dead_letter_exchange = Some(dead_letter_string("x-dead-letter-exchange", v)?);
        }
        if let Some(v) = get("x-dead-letter-routing-key") {
            out.dead_letter_routing_key = Some(dead_letter_string("x-dead-letter-routing-key", v)?);
            if out.dead_letter_exchange.is_none() {
                return Err(fail("x-dead-letter-routing-key")(
                    "routing_key_but_no_dlx_defined".into(),
                ));
            }
        }
        if let Some(v) = get("x-max-priority") {
            let n = non_neg(v).map_err(fail("x-max-priority"))?;
            if n == 0 {
                return Err(fail("x-max-priority")("{value_zero,0}".into()));
            }
            out.max_priority = Some(
                u8::try_from(n)
                    .map_err(|_| fail("x-max-priority")(format!("{{max_value_exceeded,{n}}}")))?,
            );
        }
        if let Some(v) = get("x-single-active-consumer") {
            out.single_active_consumer = boolean(v).map_err(fail("x-single-active-consumer"))?;
        }
        if let Some(v) = get("x-delivery-limit") {
            let n = int(v).map_err(fail("x-delivery-limit"))?;
            // RabbitMQ 4.x: a negative limit means unlimited.
            out.delivery_limit = if n < 0 {
                None
            } else {
                Some(u32::try_from(n).unwrap_or(u32::MAX))
            };
        }
        if let Some(v) = get("x-consumer-timeout") {
            out.consumer_timeout = Some(expiry(v, false).map_err(fail("x-consumer-timeout"))?);
        }
        if let Some(v) = get("x-queue-type") {
            let s = str_value(v).ok_or_else(|| {
                fail("x-queue-type")(format!("{{unacceptable_type,{}}}", type_name(v)))
            })?;
            match s.as_str() {
                "classic" => {}
                "quorum" => out.quorum = true,
                "stream" => {
                    return Err(fail("x-queue-type")(format!(
                        "queue type '{s}' is not supported by Warren; use 'classic'"
                    )));
                }
                other => {
                    return Err(fail("x-queue-type")(format!(
                        "\"unsupported queue type '{other}'\""
                    )))
                }
            }
        }
        if let Some(v) = get("x-queue-mode") {
            match str_value(v).as_deref() {
                Some("default" | "lazy") => {}
                _ => {
                    return Err(fail("x-queue-mode")(
                        "{unacceptable_value, expected default or lazy}".into(),
                    ))
                }
            }
        }
        if out.quorum && get("x-delivery-limit").is_none() {
            out.delivery_limit = Some(QUORUM_DELIVERY_LIMIT);
        }
        Ok(out)
    }
}

/// A plugin attached through arguments: the plugin name under one key (`x-filter`,
/// `x-idempotency`) and its configuration table under another (`x-filter-args`,
/// `x-idempotency-args`; empty when absent).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PluginArgs {
    /// The plugin's name.
    pub name: String,
    /// Its configuration table.
    pub config: FieldTable,
}

impl PluginArgs {
    /// `Ok(None)` without `name_key`.
    ///
    /// # Errors
    /// [`InvalidArg`] for a name that is not a string or a configuration that is not a table.
    fn parse(
        arguments: &FieldTable,
        name_key: &'static str,
        config_key: &'static str,
    ) -> Result<Option<PluginArgs>, InvalidArg> {
        let args = arguments.inner();
        let Some(value) = args.get(name_key) else {
            return Ok(None);
        };
        let name = str_value(value).ok_or_else(|| invalid(name_key, "expected a string"))?;
        let config = match args.get(config_key) {
            None => FieldTable::default(),
            Some(AMQPValue::FieldTable(t)) => t.clone(),
            Some(_) => return Err(invalid(config_key, "expected a table")),
        };
        Ok(Some(PluginArgs { name, config }))
    }
}

fn invalid(key: &'static str, detail: impl Into<String>) -> InvalidArg {
    InvalidArg {
        key,
        detail: detail.into(),
        wrong_type: None,
    }
}

/// basic.consume arguments: `x-priority` (RabbitMQ docs/consumer-priority.md) and the consumer's
/// filter plugin (`x-filter`, `x-filter-args`, `x-filter-on-failure` = `hold` | `deliver`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ConsumeArgs {
    /// Consumer priority, default 0.
    pub priority: i32,
    /// The filter plugin and what to do when it faults.
    pub filter: Option<(PluginArgs, OnFailure)>,
}

impl ConsumeArgs {
    /// Parses basic.consume's arguments; other keys are ignored.
    ///
    /// # Errors
    /// The first invalid argument; [`InvalidArg::text`] gives RabbitMQ's reply text
    /// (`invalid arg 'x-priority' for queue 'q' in vhost '/': "expected integer, got longstr"`).
    pub(crate) fn parse(arguments: &FieldTable) -> Result<ConsumeArgs, InvalidArg> {
        let args = arguments.inner();
        let priority = match args.get("x-priority") {
            None => 0,
            Some(v) => int_value(v)
                .and_then(|n| i32::try_from(n).ok())
                .ok_or_else(|| {
                    invalid(
                        "x-priority",
                        format!("\"expected integer, got {}\"", type_name(v)),
                    )
                })?,
        };
        let filter = match PluginArgs::parse(arguments, "x-filter", "x-filter-args")? {
            None => None,
            Some(plugin) => {
                let on_failure = match args.get("x-filter-on-failure").map(str_value) {
                    None => OnFailure::Hold,
                    Some(Some(s)) if s == "hold" => OnFailure::Hold,
                    Some(Some(s)) if s == "deliver" => OnFailure::Deliver,
                    Some(_) => {
                        return Err(invalid(
                            "x-filter-on-failure",
                            "expected \"hold\" or \"deliver\"",
                        ))
                    }
                };
                Some((plugin, on_failure))
            }
        };
        Ok(ConsumeArgs { priority, filter })
    }
}

/// queue.declare's idempotency arguments: the plugin (`x-idempotency`, `x-idempotency-args`) and the
/// bounds of the key record (`x-idempotency-window` in ms, `x-idempotency-max-keys`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct IdempotencyArgs {
    /// The idempotency plugin.
    pub plugin: PluginArgs,
    /// How long and how many acked keys are remembered.
    pub window: Window,
}

impl IdempotencyArgs {
    /// `Ok(None)` without `x-idempotency`.
    ///
    /// # Errors
    /// The first invalid argument (see [`InvalidArg::text`]).
    pub(crate) fn parse(arguments: &FieldTable) -> Result<Option<IdempotencyArgs>, InvalidArg> {
        let Some(plugin) = PluginArgs::parse(arguments, "x-idempotency", "x-idempotency-args")?
        else {
            return Ok(None);
        };
        let args = arguments.inner();
        let mut window = Window::default();
        if let Some(v) = args.get("x-idempotency-window") {
            let ms = int_value(v)
                .and_then(|n| u64::try_from(n).ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    invalid("x-idempotency-window", "expected a positive integer (ms)")
                })?;
            window.time = Duration::from_millis(ms);
        }
        if let Some(v) = args.get("x-idempotency-max-keys") {
            window.max_keys = int_value(v)
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| invalid("x-idempotency-max-keys", "expected a positive integer"))?;
        }
        Ok(Some(IdempotencyArgs { plugin, window }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::LongString;

    fn args(k: &str, v: AMQPValue) -> FieldTable {
        let mut t = FieldTable::default();
        t.insert(k.into(), v);
        t
    }

    fn s(v: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(v))
    }

    #[test]
    fn valid_arguments_parse() {
        let mut t = FieldTable::default();
        t.insert("x-message-ttl".into(), AMQPValue::LongInt(1000));
        t.insert("x-max-length".into(), AMQPValue::LongLongInt(5));
        t.insert("x-overflow".into(), s("reject-publish"));
        t.insert("x-dead-letter-exchange".into(), s("dlx"));
        t.insert("x-dead-letter-routing-key".into(), s("dead"));
        t.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(10));
        t.insert("x-queue-type".into(), s("classic"));
        let a = QueueArgs::parse(&t).unwrap();
        assert_eq!(a.message_ttl, Some(1000));
        assert_eq!(a.max_length, Some(5));
        assert_eq!(a.overflow, Overflow::RejectPublish);
        assert_eq!(
            a.dead_letter_exchange.as_ref().map(|s| s.as_str()),
            Some("dlx")
        );
        assert_eq!(a.max_priority, Some(10));
    }

    #[test]
    fn invalid_arguments_give_rabbitmq_terms() {
        let cases: &[(&str, AMQPValue, &str)] = &[
            (
                "x-message-ttl",
                AMQPValue::LongInt(-1),
                "{value_negative,-1}",
            ),
            (
                "x-message-ttl",
                s("10"),
                "\"expected integer, got longstr\"",
            ),
            ("x-expires", AMQPValue::LongInt(0), "{value_zero,0}"),
            (
                "x-max-length",
                AMQPValue::LongInt(-5),
                "{value_negative,-5}",
            ),
            ("x-max-priority", AMQPValue::LongInt(0), "{value_zero,0}"),
            (
                "x-max-priority",
                AMQPValue::LongInt(256),
                "{max_value_exceeded,256}",
            ),
            ("x-overflow", s("drop-tail"), "invalid_overflow"),
            (
                "x-queue-type",
                s("stream"),
                "queue type 'stream' is not supported by Warren; use 'classic'",
            ),
            (
                "x-queue-type",
                s("fancy"),
                "\"unsupported queue type 'fancy'\"",
            ),
            (
                "x-single-active-consumer",
                s("yes"),
                "{unacceptable_type,longstr}",
            ),
            (
                "x-dead-letter-routing-key",
                s("k"),
                "routing_key_but_no_dlx_defined",
            ),
        ];
        for (key, value, detail) in cases {
            let err = QueueArgs::parse(&args(key, value.clone())).unwrap_err();
            assert_eq!((err.key, err.detail.as_str()), (*key, *detail));
        }
    }
}
