//! `headers`: routes on message headers against binding arguments (RabbitMQ docs/exchanges.md,
//! `rabbit_exchange_type_headers`).
//!
//! `x-match` = `all` (default) / `any` ignore binding arguments starting with `x-`; `all-with-x` /
//! `any-with-x` include them. A void binding value matches on presence alone. Values compare by type
//! class, as RabbitMQ's `type_class` does: all integer widths compare as integers, both string kinds as
//! strings.

use amq_protocol::types::{AMQPValue, FieldTable, ShortString};

use super::{Binding, BindingRefused, Destination, ExchangeType, RouteError};
use crate::message::MessageRef;
use crate::protocol::values::int_value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MatchKind {
    All,
    Any,
    AllWithX,
    AnyWithX,
}

fn string_value(v: &AMQPValue) -> Option<&[u8]> {
    match v {
        AMQPValue::LongString(s) => Some(s.as_bytes()),
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes()),
        _ => None,
    }
}

fn parse_match(args: &FieldTable) -> Result<MatchKind, String> {
    let Some(v) = args.inner().get("x-match") else {
        return Ok(MatchKind::All);
    };
    let Some(s) = string_value(v) else {
        return Err(format!(
            "Invalid x-match field type {v:?}; expected longstr"
        ));
    };
    match s {
        b"all" => Ok(MatchKind::All),
        b"any" => Ok(MatchKind::Any),
        b"all-with-x" => Ok(MatchKind::AllWithX),
        b"any-with-x" => Ok(MatchKind::AnyWithX),
        other => Err(format!(
            "Invalid x-match field value <<\"{}\">>; expected all, any, all-with-x, or any-with-x",
            String::from_utf8_lossy(other)
        )),
    }
}

fn float_value(v: &AMQPValue) -> Option<f64> {
    match v {
        AMQPValue::Float(f) => Some((*f).into()),
        AMQPValue::Double(f) => Some(*f),
        _ => None,
    }
}

/// Equality by RabbitMQ type class.
fn values_match(pattern: &AMQPValue, value: &AMQPValue) -> bool {
    if let (Some(a), Some(b)) = (int_value(pattern), int_value(value)) {
        return a == b;
    }
    if let (Some(a), Some(b)) = (float_value(pattern), float_value(value)) {
        return a == b;
    }
    if let (Some(a), Some(b)) = (string_value(pattern), string_value(value)) {
        return a == b;
    }
    pattern == value
}

#[derive(Debug)]
struct HeaderBinding {
    destination: Destination,
    arguments: FieldTable,
    kind: MatchKind,
}

impl HeaderBinding {
    fn matches(&self, headers: Option<&FieldTable>) -> bool {
        let with_x = matches!(self.kind, MatchKind::AllWithX | MatchKind::AnyWithX);
        let any = matches!(self.kind, MatchKind::Any | MatchKind::AnyWithX);
        let mut any_matched = false;
        for (key, pattern) in &self.arguments {
            let key: &ShortString = key;
            if key.as_str() == "x-match" || (!with_x && key.as_str().starts_with("x-")) {
                continue;
            }
            let matched = match headers.and_then(|h| h.inner().get(key.as_str())) {
                None => false,
                Some(_) if matches!(pattern, AMQPValue::Void) => true,
                Some(value) => values_match(pattern, value),
            };
            if any && matched {
                return true;
            }
            if !any && !matched {
                return false;
            }
            any_matched |= matched;
        }
        !any || any_matched
    }
}

/// The list of header bindings, each with its parsed `x-match`.
#[derive(Debug, Default)]
pub struct Headers {
    bindings: Vec<HeaderBinding>,
}

impl ExchangeType for Headers {
    fn validate_binding(&self, binding: &Binding) -> Result<(), BindingRefused> {
        parse_match(&binding.arguments)
            .map(|_| ())
            .map_err(BindingRefused)
    }

    fn bind(&mut self, binding: &Binding) {
        let kind = parse_match(&binding.arguments).unwrap_or(MatchKind::All);
        self.bindings.push(HeaderBinding {
            destination: binding.destination.clone(),
            arguments: binding.arguments.clone(),
            kind,
        });
    }

    fn unbind(&mut self, binding: &Binding) {
        if let Some(pos) = self.bindings.iter().position(|b| {
            b.destination.same(&binding.destination) && b.arguments == binding.arguments
        }) {
            self.bindings.swap_remove(pos);
        }
    }

    fn route(
        &self,
        _routing_key: &str,
        message: &MessageRef,
        out: &mut Vec<Destination>,
    ) -> Result<(), RouteError> {
        let headers = message.properties.headers().as_ref();
        for b in &self.bindings {
            if b.matches(headers) {
                out.push(b.destination.clone());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::test_support::{message, queue};
    use amq_protocol::types::LongString;

    fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in entries {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    fn s(v: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(v))
    }

    #[test]
    fn matches_like_rabbitmq() {
        let cases: Vec<(FieldTable, Option<FieldTable>, bool)> = vec![
            (table(&[("a", s("1"))]), Some(table(&[("a", s("1"))])), true),
            (
                table(&[("a", s("1")), ("b", s("2"))]),
                Some(table(&[("a", s("1"))])),
                false,
            ),
            (
                table(&[("x-match", s("any")), ("a", s("1")), ("b", s("2"))]),
                Some(table(&[("a", s("1"))])),
                true,
            ),
            (
                table(&[("x-match", s("any")), ("a", s("1"))]),
                Some(table(&[("a", s("9"))])),
                false,
            ),
            (
                table(&[("a", AMQPValue::Void)]),
                Some(table(&[("a", s("anything"))])),
                true,
            ),
            (
                table(&[("a", AMQPValue::Void)]),
                Some(table(&[("b", s("x"))])),
                false,
            ),
            (
                table(&[("a", AMQPValue::LongInt(5))]),
                Some(table(&[("a", AMQPValue::LongLongInt(5))])),
                true,
            ),
            (
                table(&[("a", AMQPValue::ShortString("v".into()))]),
                Some(table(&[("a", s("v"))])),
                true,
            ),
            (table(&[]), None, true),
            (
                table(&[("x-match", s("any"))]),
                Some(table(&[("a", s("1"))])),
                false,
            ),
            (table(&[("a", s("1"))]), None, false),
            (table(&[("x-custom", s("1"))]), Some(table(&[])), true),
            (
                table(&[("x-match", s("all-with-x")), ("x-custom", s("1"))]),
                Some(table(&[])),
                false,
            ),
            (
                table(&[("x-match", s("all-with-x")), ("x-custom", s("1"))]),
                Some(table(&[("x-custom", s("1"))])),
                true,
            ),
            (
                table(&[
                    ("x-match", s("any-with-x")),
                    ("x-custom", s("1")),
                    ("a", s("2")),
                ]),
                Some(table(&[("x-custom", s("1"))])),
                true,
            ),
        ];
        for (args, headers, expected) in cases {
            let mut h = Headers::default();
            let binding = Binding {
                destination: Destination::Queue(queue("q")),
                key: "".into(),
                arguments: args.clone(),
            };
            assert!(h.validate_binding(&binding).is_ok());
            h.bind(&binding);
            let mut out = Vec::new();
            h.route("", &message("", headers.clone()), &mut out)
                .expect("native types always route");
            assert_eq!(
                !out.is_empty(),
                expected,
                "args {args:?} headers {headers:?}"
            );
        }
    }

    #[test]
    fn bad_x_match_is_refused() {
        let h = Headers::default();
        let binding = Binding {
            destination: Destination::Queue(queue("q")),
            key: "".into(),
            arguments: table(&[("x-match", s("some"))]),
        };
        let err = h.validate_binding(&binding).unwrap_err().0;
        assert!(
            err.contains("Invalid x-match field value <<\"some\">>"),
            "{err}"
        );
    }
}
