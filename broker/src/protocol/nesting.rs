//! The nesting limit on field tables and arrays, checked before a payload reaches a recursive parser.
//!
//! amq-protocol's field-table parser (and every walk over the decoded value: drop, clone, encode,
//! matching) recurses once per level, so a table nested a few thousand levels deep — a few KiB of
//! input — would overflow a worker thread's stack and abort the process. Each payload that can carry a
//! table (the nine methods with a `table` argument, a content header with `headers`, an AMQPLAIN
//! response) is first walked here iteratively, with an explicit stack, and refused when it nests deeper
//! than [`MAX_FIELD_NESTING`]. RabbitMQ itself accepts deeper nesting (it parses on a growable Erlang
//! stack); a readable `connection.close` is the answer here. Field table encoding: AMQP 0-9-1
//! §4.2.5.5, with RabbitMQ's type octets (amq-protocol's `AMQPType::from_id`).

/// Most levels of field tables and arrays inside one another that a payload may carry (the outermost
/// table is level 1). Far beyond any real use (RabbitMQ's own `x-death` is three levels), and shallow
/// enough that every recursive walk over a decoded value fits a worker thread's stack in a debug build.
pub(crate) const MAX_FIELD_NESTING: usize = 100;

/// One argument before a method's field table, as far as skipping it goes.
#[derive(Clone, Copy)]
enum Skip {
    /// A fixed number of octets (short = 2, one octet of bits = 1).
    Octets(usize),
    /// A short string: a length octet and that many octets.
    ShortStr,
}

use Skip::{Octets, ShortStr};

/// The arguments before the field table of the methods that have one (AMQP 0-9-1 §1.4, in
/// amq-protocol's argument order); `None` for a method without a table.
fn table_offset(class_id: u16, method_id: u16) -> Option<&'static [Skip]> {
    Some(match (class_id, method_id) {
        // connection.start: version-major, version-minor, server-properties.
        (10, 10) => &[Octets(2)],
        // connection.start-ok: client-properties first.
        (10, 11) => &[],
        // exchange.declare: reserved-1, exchange, type, bits.
        (40, 10) => &[Octets(2), ShortStr, ShortStr, Octets(1)],
        // exchange.bind / exchange.unbind: reserved-1, destination, source, routing-key, no-wait.
        (40, 30) | (40, 40) => &[Octets(2), ShortStr, ShortStr, ShortStr, Octets(1)],
        // queue.declare: reserved-1, queue, bits.
        (50, 10) => &[Octets(2), ShortStr, Octets(1)],
        // queue.bind: reserved-1, queue, exchange, routing-key, no-wait.
        (50, 20) => &[Octets(2), ShortStr, ShortStr, ShortStr, Octets(1)],
        // queue.unbind: reserved-1, queue, exchange, routing-key (no bits).
        (50, 50) => &[Octets(2), ShortStr, ShortStr, ShortStr],
        // basic.consume: reserved-1, queue, consumer-tag, bits.
        (60, 20) => &[Octets(2), ShortStr, ShortStr, Octets(1)],
        _ => return None,
    })
}

/// The nesting depth of the field table in a method payload (class id onwards); 0 when the method has
/// no table or the payload ends before it (the parser then refuses it as malformed).
pub(crate) fn method_nesting(payload: &[u8]) -> usize {
    let Some((ids, mut args)) = payload.split_first_chunk::<4>() else {
        return 0;
    };
    let class_id = u16::from_be_bytes([ids[0], ids[1]]);
    let method_id = u16::from_be_bytes([ids[2], ids[3]]);
    let Some(skips) = table_offset(class_id, method_id) else {
        return 0;
    };
    for skip in skips {
        let n = match skip {
            Octets(n) => *n,
            ShortStr => match args.first() {
                Some(len) => 1 + usize::from(*len),
                None => return 0,
            },
        };
        match args.get(n..) {
            Some(rest) => args = rest,
            None => return 0,
        }
    }
    table_nesting(args)
}

/// The nesting depth of the `headers` property in a content header payload (class id onwards); 0
/// without headers.
pub(crate) fn content_header_nesting(payload: &[u8]) -> usize {
    // class-id, weight, body-size, property flags (AMQP 0-9-1 §4.2.6.1).
    let Some(flags) = payload.get(12..14) else {
        return 0;
    };
    let flags = u16::from_be_bytes([flags[0], flags[1]]);
    if flags & (1 << 13) == 0 {
        return 0;
    }
    let mut props = &payload[14..];
    // content-type and content-encoding (short strings) come before headers.
    for bit in [15, 14] {
        if flags & (1 << bit) != 0 {
            let Some(len) = props.first() else { return 0 };
            match props.get(1 + usize::from(*len)..) {
                Some(rest) => props = rest,
                None => return 0,
            }
        }
    }
    table_nesting(props)
}

/// The nesting depth of the field table (32-bit length prefix included) at the start of `input`:
/// 1 for a table holding no table or array, one more per level inside. The walk stops where
/// amq-protocol's parser would stop with an error (a length past its container, an unknown type
/// octet), so it never reports less nesting than the parser would recurse into.
pub(crate) fn table_nesting(input: &[u8]) -> usize {
    /// An open container: where it ends, and whether its entries have names (table) or not (array).
    struct Open {
        end: usize,
        table: bool,
    }
    let long = |at: usize, end: usize| -> Option<usize> {
        let b = input.get(at..at.checked_add(4)?.min(end))?;
        let b: [u8; 4] = b.try_into().ok()?;
        Some(u32::from_be_bytes(b) as usize)
    };
    let Some(len) = long(0, input.len()) else {
        return 0;
    };
    let Some(end) = len.checked_add(4).filter(|e| *e <= input.len()) else {
        return 0;
    };
    let mut stack = vec![Open { end, table: true }];
    let mut deepest = 1;
    let mut at = 4;
    while let Some(top) = stack.last() {
        let end = top.end;
        if at == end {
            stack.pop();
            continue;
        }
        if top.table {
            // The entry's name: a short string.
            let Some(name_len) = input.get(at).filter(|_| at < end) else {
                return deepest;
            };
            at += 1 + usize::from(*name_len);
        }
        let Some(&kind) = input.get(at).filter(|_| at < end) else {
            return deepest;
        };
        at += 1;
        let size = match kind {
            b't' | b'b' | b'B' => 1,
            b's' | b'U' | b'u' => 2,
            b'I' | b'i' | b'f' => 4,
            b'D' => 5,
            b'l' | b'L' | b'd' | b'T' => 8,
            b'V' => 0,
            b'S' | b'x' => match long(at, end) {
                Some(n) => n.saturating_add(4),
                None => return deepest,
            },
            b'F' | b'A' => {
                let Some(n) = long(at, end) else {
                    return deepest;
                };
                let Some(inner_end) = (at + 4).checked_add(n).filter(|e| *e <= end) else {
                    return deepest;
                };
                at += 4;
                stack.push(Open {
                    end: inner_end,
                    table: kind == b'F',
                });
                deepest = deepest.max(stack.len());
                continue;
            }
            _ => return deepest,
        };
        match at.checked_add(size).filter(|e| *e <= end) {
            Some(next) => at = next,
            None => return deepest,
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::{AMQPValue, FieldArray, FieldTable};

    fn encoded(frame: &amq_protocol::frame::AMQPFrame) -> Vec<u8> {
        let mut out = bytes::BytesMut::new();
        crate::protocol::encode::frame(&mut out, frame);
        out.to_vec()
    }

    fn encode(t: &FieldTable) -> Vec<u8> {
        crate::protocol::values::encode_table(t)
    }

    /// A table nested `depth` levels, alternating tables and arrays when `mixed`.
    fn nested(depth: usize, mixed: bool) -> FieldTable {
        let mut value = AMQPValue::LongString("leaf".into());
        for level in (1..depth).rev() {
            value = if mixed && level % 2 == 0 {
                AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::Boolean(true), value]))
            } else {
                let mut t = FieldTable::default();
                t.insert("a".into(), AMQPValue::LongLongInt(7));
                t.insert("n".into(), value);
                AMQPValue::FieldTable(t)
            };
        }
        let mut top = FieldTable::default();
        top.insert("x-k".into(), value);
        top
    }

    #[test]
    fn depth_of_encoded_tables_matches_their_nesting() {
        assert_eq!(table_nesting(&encode(&FieldTable::default())), 1);
        for depth in [1, 2, 3, 10, 99, 100, 101] {
            for mixed in [false, true] {
                assert_eq!(
                    table_nesting(&encode(&nested(depth, mixed))),
                    depth,
                    "{depth} {mixed}"
                );
            }
        }
    }

    /// Hand-built nesting that amq-protocol could not even encode without recursing: a table holding
    /// containers of `kind` (`F` or `A`) inside one another, `depth` levels in all. An entry inside a
    /// table takes 6 octets (empty name, type, length), inside an array 5 (type, length).
    fn deep_raw(depth: usize, kind: u8) -> Vec<u8> {
        let per = if kind == b'F' { 6 } else { 5 };
        let inner = |level: usize| (depth - level) * per; // content octets of a level ≥ 2
        let mut out = Vec::new();
        let first = if depth > 1 { 6 + inner(2) } else { 0 };
        out.extend_from_slice(&(first as u32).to_be_bytes());
        for level in 2..=depth {
            if level == 2 || kind == b'F' {
                out.push(0);
            }
            out.push(kind);
            out.extend_from_slice(&(inner(level) as u32).to_be_bytes());
        }
        out
    }

    #[test]
    fn deep_raw_nesting_is_measured_without_recursion() {
        assert_eq!(table_nesting(&deep_raw(1_000_000, b'F')), 1_000_000);
        assert_eq!(table_nesting(&deep_raw(1_000_000, b'A')), 1_000_000);
        assert_eq!(table_nesting(&deep_raw(2, b'A')), 2);
        let mut short = deep_raw(50, b'F');
        short.truncate(short.len() - 1);
        assert!(table_nesting(&short) < 50, "a cut length stops the walk");
    }

    #[test]
    fn walk_stops_where_the_parser_would() {
        // A nested length past its container ends the walk at the outer level.
        let mut t = vec![0, 0, 0, 7, 0, b'F', 0, 0, 0, 9, 0];
        assert_eq!(table_nesting(&t), 1);
        // An unknown type octet ends it too.
        t = vec![0, 0, 0, 2, 0, b'?'];
        assert_eq!(table_nesting(&t), 1);
        // Truncated input.
        assert_eq!(table_nesting(&[0, 0, 0]), 0);
        assert_eq!(table_nesting(&[0, 0, 0, 9, 0]), 0);
    }

    #[test]
    fn finds_the_table_in_each_method_and_header() {
        use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
        use amq_protocol::protocol::{basic, connection, exchange, queue, AMQPClass};
        let args = nested(5, true);
        let methods = vec![
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: args.clone(),
                mechanism: "PLAIN".into(),
                response: "\0u\0p".into(),
                locale: "en_US".into(),
            })),
            AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: args.clone(),
                mechanisms: "PLAIN".into(),
                locales: "en_US".into(),
            })),
            AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                exchange: "e".into(),
                kind: "direct".into(),
                arguments: args.clone(),
                ..Default::default()
            })),
            AMQPClass::Exchange(exchange::AMQPMethod::Bind(exchange::Bind {
                destination: "d".into(),
                source: "s".into(),
                routing_key: "rk".into(),
                nowait: false,
                arguments: args.clone(),
            })),
            AMQPClass::Exchange(exchange::AMQPMethod::Unbind(exchange::Unbind {
                destination: "d".into(),
                source: "s".into(),
                routing_key: "rk".into(),
                nowait: false,
                arguments: args.clone(),
            })),
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: "q".into(),
                arguments: args.clone(),
                ..Default::default()
            })),
            AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
                queue: "q".into(),
                exchange: "e".into(),
                routing_key: "rk".into(),
                nowait: true,
                arguments: args.clone(),
            })),
            AMQPClass::Queue(queue::AMQPMethod::Unbind(queue::Unbind {
                queue: "q".into(),
                exchange: "e".into(),
                routing_key: "rk".into(),
                arguments: args.clone(),
            })),
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: "q".into(),
                consumer_tag: "c".into(),
                arguments: args.clone(),
                ..Default::default()
            })),
        ];
        for m in methods {
            let frame = encoded(&AMQPFrame::Method(1, m.clone()));
            let payload = &frame[7..frame.len() - 1];
            assert_eq!(method_nesting(payload), 5, "{m:?}");
        }
        let no_table = AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 1,
            global: false,
        }));
        let frame = encoded(&AMQPFrame::Method(1, no_table));
        assert_eq!(method_nesting(&frame[7..frame.len() - 1]), 0);

        for (ct, ce) in [(None, None), (Some("text/plain"), Some("gzip"))] {
            let mut props = basic::AMQPProperties::default().with_headers(args.clone());
            if let Some(ct) = ct {
                props = props.with_content_type(ct.into());
            }
            if let Some(ce) = ce {
                props = props.with_content_encoding(ce.into());
            }
            let header = AMQPFrame::Header(
                1,
                AMQPContentHeader {
                    class_id: 60,
                    body_size: 1,
                    properties: props.with_priority(3),
                },
            );
            let frame = encoded(&header);
            assert_eq!(content_header_nesting(&frame[7..frame.len() - 1]), 5);
        }
    }
}
