//! Bytes ↔ AMQP frames. Owns the wire format and nothing else: no channel, queue or connection state.
//!
//! Frames are split here (so `frame_max` and the frame-end octet are enforced before anything is parsed),
//! method and content-header payloads are decoded by amq-protocol — except basic.publish and basic.ack,
//! which come once per message and are decoded by hand — and content bodies stay zero-copy
//! [`Bytes`] slices of the read buffer. The hot outgoing frames (basic.deliver, content header/body,
//! basic.ack) are encoded by hand into the connection's write buffer; everything else goes through
//! amq-protocol's `gen_frame`. AMQP 0-9-1 §4.2 (general frame format).

pub mod encode;
pub(crate) mod ids;
pub(crate) mod nesting;
pub(crate) mod outbound;
pub(crate) mod values;

use amq_protocol::frame::AMQPContentHeader;
use amq_protocol::protocol::{basic, constants, AMQPClass};
use amq_protocol::types::ShortString;
use bytes::{Buf, Bytes, BytesMut};

/// The 8-octet protocol header a 0-9-1 client sends first (AMQP 0-9-1 §4.2.2).
pub(crate) const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// Size of the frame header (type, channel, size) in octets.
pub(crate) const FRAME_HEADER_SIZE: usize = 7;
/// Octets a frame adds around its payload: the 7-octet header and the frame-end octet.
pub(crate) const FRAME_OVERHEAD: usize = FRAME_HEADER_SIZE + 1;

/// One frame read from a client, with its payload decoded as far as the codec can go.
#[derive(Debug, PartialEq)]
pub enum Frame {
    /// A method frame (type 1).
    Method(u16, Box<AMQPClass>),
    /// A content header frame (type 2): the decoded header plus the raw encoded property list
    /// (property flags onwards), reused verbatim when the message is delivered.
    Header(u16, Box<AMQPContentHeader>, Bytes),
    /// A content body frame (type 3): a zero-copy slice of the read buffer.
    Body(u16, Bytes),
    /// A heartbeat frame (type 8) on channel `u16` (must be 0 to be valid).
    Heartbeat(u16),
}

/// A frame that cannot be decoded. Each is a connection error (AMQP 0-9-1 §4.2.3, §1.9).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// Declared payload size exceeds the negotiated `frame_max` (501 FRAME_ERROR).
    #[error("frame size {size} exceeds negotiated frame_max {frame_max}")]
    TooLarge {
        /// Declared payload size, octets.
        size: usize,
        /// Negotiated maximum frame size, octets, including the 8 octets of overhead.
        frame_max: usize,
    },
    /// The octet after the payload is not 0xCE (501 FRAME_ERROR).
    #[error("frame end octet is {0:#04x}, expected 0xce")]
    BadFrameEnd(u8),
    /// Unknown frame type octet (501 FRAME_ERROR).
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    /// A method frame for a class/method pair the server does not know (540 NOT_IMPLEMENTED).
    #[error("unknown method: class {class_id}, method {method_id}")]
    UnknownMethod {
        /// Class id from the payload.
        class_id: u16,
        /// Method id from the payload.
        method_id: u16,
    },
    /// basic.qos with a non-zero prefetch_size, which RabbitMQ refuses with 540 NOT_IMPLEMENTED
    /// (`prefetch_size!=0 (N)`); amq-protocol's decoded `Qos` drops the field, so it is checked here.
    #[error("prefetch_size!=0 ({0})")]
    PrefetchSize(u32),
    /// A field table or array nested deeper than [`nesting::MAX_FIELD_NESTING`] levels (501
    /// FRAME_ERROR): refused before it reaches a recursive parser.
    #[error("field table nesting of {depth} levels on channel {channel} exceeds the limit of {max}", max = nesting::MAX_FIELD_NESTING)]
    TooDeep {
        /// Levels of tables and arrays found (the walk may stop early past the limit).
        depth: usize,
        /// Channel the frame arrived on.
        channel: u16,
    },
    /// A known method or content header whose arguments do not decode (501 FRAME_ERROR, as RabbitMQ).
    #[error("malformed {what} frame on channel {channel}")]
    Malformed {
        /// "method" or "content header".
        what: &'static str,
        /// Channel the frame arrived on.
        channel: u16,
    },
}

/// Splits and decodes the next complete frame from `buf`.
///
/// Returns `Ok(None)` when `buf` holds only part of a frame (read more); the consumed bytes are removed
/// from `buf`. `frame_max` is the negotiated maximum frame size in octets (header and end octet included).
///
/// # Errors
/// `FrameError` for an oversized frame, a bad frame-end octet, an unknown frame type, an unknown
/// method or a payload that does not decode.
pub fn decode_frame(buf: &mut BytesMut, frame_max: usize) -> Result<Option<Frame>, FrameError> {
    if buf.len() < FRAME_HEADER_SIZE {
        return Ok(None);
    }
    let frame_type = buf[0];
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
    if size + FRAME_OVERHEAD > frame_max {
        return Err(FrameError::TooLarge { size, frame_max });
    }
    if buf.len() < size + FRAME_OVERHEAD {
        buf.reserve(size + FRAME_OVERHEAD - buf.len());
        return Ok(None);
    }
    let end = buf[FRAME_HEADER_SIZE + size];
    if end != constants::FRAME_END {
        return Err(FrameError::BadFrameEnd(end));
    }
    let mut frame = buf.split_to(size + FRAME_OVERHEAD);
    frame.advance(FRAME_HEADER_SIZE);
    frame.truncate(size);
    match frame_type {
        constants::FRAME_METHOD => decode_method(channel, &frame).map(Some),
        constants::FRAME_HEADER => {
            let payload = frame.freeze();
            let depth = nesting::content_header_nesting(&payload);
            if depth > nesting::MAX_FIELD_NESTING {
                return Err(FrameError::TooDeep { depth, channel });
            }
            match amq_protocol::frame::parsing::parse_content_header(&payload[..]) {
                Ok((rest, header)) if rest.is_empty() && payload.len() >= 12 => {
                    let raw = payload.slice(12..);
                    Ok(Some(Frame::Header(channel, Box::new(header), raw)))
                }
                _ => Err(FrameError::Malformed {
                    what: "content header",
                    channel,
                }),
            }
        }
        constants::FRAME_BODY => Ok(Some(Frame::Body(channel, frame.freeze()))),
        constants::FRAME_HEARTBEAT => Ok(Some(Frame::Heartbeat(channel))),
        other => Err(FrameError::UnknownType(other)),
    }
}

fn decode_method(channel: u16, payload: &[u8]) -> Result<Frame, FrameError> {
    if let Some(method) = decode_hot_method(payload) {
        return Ok(Frame::Method(channel, Box::new(method)));
    }
    if payload.len() >= 8 && payload[..4] == [0, 60, 0, 10] {
        let prefetch_size = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
        if prefetch_size != 0 {
            return Err(FrameError::PrefetchSize(prefetch_size));
        }
    }
    let depth = nesting::method_nesting(payload);
    if depth > nesting::MAX_FIELD_NESTING {
        return Err(FrameError::TooDeep { depth, channel });
    }
    match amq_protocol::protocol::parse_class(payload) {
        Ok((&[], class)) => Ok(Frame::Method(channel, Box::new(class))),
        _ => {
            if payload.len() >= 4 {
                let class_id = u16::from_be_bytes([payload[0], payload[1]]);
                let method_id = u16::from_be_bytes([payload[2], payload[3]]);
                if !is_known_method(class_id, method_id) {
                    return Err(FrameError::UnknownMethod {
                        class_id,
                        method_id,
                    });
                }
            }
            Err(FrameError::Malformed {
                what: "method",
                channel,
            })
        }
    }
}

/// basic.publish (60, 40) and basic.ack (60, 80), decoded by hand: they arrive once per message, and
/// amq-protocol's generic parser builds a map of flag names on every call. `None` for any other payload
/// and for one that is not exactly a well-formed method of the two (the generic parser then decodes it
/// or reports what is wrong). Argument layout: AMQP 0-9-1 §1.8.3.7 and §1.8.3.13.
fn decode_hot_method(payload: &[u8]) -> Option<AMQPClass> {
    let (ids, args) = payload.split_first_chunk::<4>()?;
    match ids {
        [0, 60, 0, 40] => {
            // reserved-1 (short), exchange, routing-key, bits: mandatory, immediate.
            let (exchange, rest) = short_string(args.get(2..)?)?;
            // AMQP short strings are octets and RabbitMQ routes on them as such; amq-protocol's
            // ShortString is UTF-8, so a key that is not UTF-8 is kept with U+FFFD in place of the
            // invalid sequences rather than refused.
            let (routing_key, rest) = short_string_lossy(rest)?;
            let &[bits] = rest else { return None };
            Some(AMQPClass::Basic(basic::AMQPMethod::Publish(
                basic::Publish {
                    exchange,
                    routing_key,
                    mandatory: bits & 1 != 0,
                    immediate: bits & 2 != 0,
                },
            )))
        }
        [0, 60, 0, 80] => {
            // delivery-tag (longlong), bits: multiple.
            let (tag, rest) = args.split_first_chunk::<8>()?;
            let &[bits] = rest else { return None };
            Some(AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: u64::from_be_bytes(*tag),
                multiple: bits & 1 != 0,
            })))
        }
        _ => None,
    }
}

/// A short string (length octet + UTF-8) and what follows it.
fn short_string(input: &[u8]) -> Option<(ShortString, &[u8])> {
    let (&len, rest) = input.split_first()?;
    let (s, rest) = rest.split_at_checked(usize::from(len))?;
    Some((
        ShortString::from(std::str::from_utf8(s).ok()?.to_owned()),
        rest,
    ))
}

/// A short string whose octets need not be UTF-8: invalid sequences become U+FFFD, and since that
/// takes three octets, a result past the 255 a short string may hold is cut at the last character
/// that fits (found by the fuzz test: a 255-octet key of invalid octets panicked `ShortString::from`).
fn short_string_lossy(input: &[u8]) -> Option<(ShortString, &[u8])> {
    let (&len, rest) = input.split_first()?;
    let (s, rest) = rest.split_at_checked(usize::from(len))?;
    let mut text = String::from_utf8_lossy(s).into_owned();
    if text.len() > 255 {
        let cut = (0..=255)
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        text.truncate(cut);
    }
    Some((ShortString::try_new(text).ok()?, rest))
}

/// Whether `(class_id, method_id)` is a method of AMQP 0-9-1 (with RabbitMQ's extensions).
fn is_known_method(class_id: u16, method_id: u16) -> bool {
    let methods: &[u16] = match class_id {
        10 => &[10, 11, 20, 21, 30, 31, 40, 41, 50, 51, 60, 61, 70, 71],
        20 => &[10, 11, 20, 21, 40, 41],
        30 => &[10, 11],
        40 => &[10, 11, 20, 21, 30, 31, 40, 51],
        50 => &[10, 11, 20, 21, 30, 31, 40, 41, 50, 51],
        60 => &[
            10, 11, 20, 21, 30, 31, 40, 50, 60, 70, 71, 72, 80, 90, 100, 110, 111, 120,
        ],
        85 => &[10, 11],
        90 => &[10, 11, 20, 21, 30, 31],
        _ => &[],
    };
    methods.contains(&method_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::frame::AMQPFrame;

    /// The method payload (class id onwards) of `method` as amq-protocol encodes it.
    fn method_payload(method: AMQPClass) -> Vec<u8> {
        encoded(&AMQPFrame::Method(1, method))[FRAME_HEADER_SIZE..].to_vec()
    }

    #[test]
    fn hand_decoded_publish_and_ack_match_amq_protocol() {
        let mut methods = Vec::new();
        for (exchange, routing_key) in [("", ""), ("amq.topic", "a.b.c"), ("x", &"k".repeat(255))] {
            for bits in 0..4u8 {
                methods.push(AMQPClass::Basic(basic::AMQPMethod::Publish(
                    basic::Publish {
                        exchange: exchange.into(),
                        routing_key: routing_key.into(),
                        mandatory: bits & 1 != 0,
                        immediate: bits & 2 != 0,
                    },
                )));
            }
        }
        for (delivery_tag, multiple) in [(0, false), (1, true), (u64::MAX, false)] {
            methods.push(AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag,
                multiple,
            })));
        }
        for method in methods {
            let mut payload = method_payload(method.clone());
            payload.pop(); // frame-end
            let generic = amq_protocol::protocol::parse_class(&payload[..])
                .expect("parse")
                .1;
            assert_eq!(decode_hot_method(&payload), Some(generic.clone()));
            assert_eq!(generic, method);
        }
    }

    #[test]
    fn malformed_publish_and_ack_are_left_to_the_generic_parser() {
        let publish = method_payload(AMQPClass::Basic(basic::AMQPMethod::Publish(
            basic::Publish {
                exchange: "x".into(),
                routing_key: "key".into(),
                mandatory: true,
                immediate: false,
            },
        )));
        let publish = &publish[..publish.len() - 1];
        // Truncated at every length, one octet too many, invalid UTF-8 in the routing key.
        for cut in 0..publish.len() {
            assert_eq!(decode_hot_method(&publish[..cut]), None, "cut at {cut}");
        }
        let mut long = publish.to_vec();
        long.push(0);
        assert_eq!(decode_hot_method(&long), None);
        let mut bad_utf8 = publish.to_vec();
        let key_at = 4 + 2 + 2 + 1; // ids, reserved, "x" with its length, length of the key
        bad_utf8[key_at] = 0xff;
        // A routing key is octets (RabbitMQ accepts any): kept, invalid UTF-8 replaced.
        let Some(AMQPClass::Basic(basic::AMQPMethod::Publish(p))) = decode_hot_method(&bad_utf8)
        else {
            panic!("a non-UTF-8 routing key is accepted");
        };
        assert_eq!(p.routing_key.as_str(), "\u{fffd}ey");
        // 255 invalid octets: three octets each as U+FFFD, cut to 255 octets (85 characters).
        let mut long = vec![0, 60, 0, 40, 0, 0, 0, 255];
        long.extend([0xffu8; 255]);
        long.push(0);
        let Some(AMQPClass::Basic(basic::AMQPMethod::Publish(p))) = decode_hot_method(&long) else {
            panic!("a long non-UTF-8 routing key is accepted");
        };
        assert_eq!(p.routing_key.as_str(), "\u{fffd}".repeat(85));
        // An exchange name that is not UTF-8 is left to the generic parser, which refuses it.
        let mut bad_exchange = publish.to_vec();
        bad_exchange[4 + 2 + 1] = 0xff;
        assert_eq!(decode_hot_method(&bad_exchange), None);
        assert!(matches!(
            decode_method(1, &bad_exchange),
            Err(FrameError::Malformed { .. })
        ));
        let ack = [0, 60, 0, 80, 0, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(decode_hot_method(&ack), None, "ack without its bits octet");
    }

    fn encoded(frame: &AMQPFrame) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode::frame(&mut out, frame);
        out.to_vec()
    }

    #[test]
    fn partial_input_means_read_more() {
        let bytes = encoded(&AMQPFrame::Method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count: 5,
                global: false,
            })),
        ));
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            assert!(
                decode_frame(&mut buf, 131072).unwrap().is_none(),
                "cut at {cut}"
            );
        }
        let mut buf = BytesMut::from(&bytes[..]);
        assert!(matches!(
            decode_frame(&mut buf, 131072),
            Ok(Some(Frame::Method(1, _)))
        ));
        assert!(buf.is_empty());
    }

    #[test]
    fn rejects_oversized_bad_end_and_unknown() {
        let mut buf = BytesMut::from(&[3u8, 0, 1, 0, 0, 0x10, 0][..]);
        assert_eq!(
            decode_frame(&mut buf, 4096),
            Err(FrameError::TooLarge {
                size: 0x1000,
                frame_max: 4096
            })
        );
        let mut buf = BytesMut::from(&[8u8, 0, 0, 0, 0, 0, 0, 0xAB][..]);
        assert_eq!(
            decode_frame(&mut buf, 4096),
            Err(FrameError::BadFrameEnd(0xAB))
        );
        let mut buf = BytesMut::from(&[1u8, 0, 1, 0, 0, 0, 4, 0, 99, 0, 1, 0xCE][..]);
        assert_eq!(
            decode_frame(&mut buf, 4096),
            Err(FrameError::UnknownMethod {
                class_id: 99,
                method_id: 1
            })
        );
        let mut buf = BytesMut::from(&[1u8, 0, 1, 0, 0, 0, 5, 0, 60, 0, 40, 7, 0xCE][..]);
        assert_eq!(
            decode_frame(&mut buf, 4096),
            Err(FrameError::Malformed {
                what: "method",
                channel: 1
            })
        );
        let mut buf = BytesMut::from(&[9u8, 0, 0, 0, 0, 0, 0, 0xCE][..]);
        assert_eq!(
            decode_frame(&mut buf, 4096),
            Err(FrameError::UnknownType(9))
        );
    }

    /// Random bytes and randomly corrupted valid frames never panic the decoder, and every call either
    /// consumes input, asks for more, or reports an error.
    #[test]
    fn garbage_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5741_5252);
        let valid = encoded(&AMQPFrame::Method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: "amq.topic".into(),
                routing_key: "a.b".into(),
                mandatory: true,
                immediate: false,
            })),
        ));
        for round in 0..20_000 {
            let mut bytes = if round % 2 == 0 {
                (0..rng.gen_range(0..64))
                    .map(|_| rng.r#gen::<u8>())
                    .collect::<Vec<u8>>()
            } else {
                let mut v = valid.clone();
                for _ in 0..rng.gen_range(1..4) {
                    let i = rng.gen_range(0..v.len());
                    v[i] = rng.r#gen();
                }
                v
            };
            if round % 3 == 0 && !bytes.is_empty() {
                bytes[0] = [1, 2, 3, 8][rng.gen_range(0..4)];
            }
            let mut buf = BytesMut::from(&bytes[..]);
            loop {
                let before = buf.len();
                match decode_frame(&mut buf, 4096) {
                    Ok(Some(_)) => assert!(buf.len() < before, "a decoded frame consumes input"),
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }

    #[test]
    fn hand_encoded_deliver_matches_amq_protocol() {
        let deliver = basic::Deliver {
            consumer_tag: "ctag".into(),
            delivery_tag: 42,
            redelivered: true,
            exchange: "ex".into(),
            routing_key: "rk".into(),
        };
        let expected = encoded(&AMQPFrame::Method(
            7,
            AMQPClass::Basic(basic::AMQPMethod::Deliver(deliver)),
        ));
        let mut out = BytesMut::new();
        encode::deliver_method(&mut out, 7, "ctag", 42, true, "ex", "rk");
        assert_eq!(out.to_vec(), expected);

        let ack = basic::Ack {
            delivery_tag: 9,
            multiple: true,
        };
        let expected = encoded(&AMQPFrame::Method(
            3,
            AMQPClass::Basic(basic::AMQPMethod::Ack(ack)),
        ));
        let mut out = BytesMut::new();
        encode::basic_ack(&mut out, 3, 9, true);
        assert_eq!(out.to_vec(), expected);
    }

    #[test]
    fn header_round_trips_raw_properties() {
        let props = basic::AMQPProperties::default()
            .with_content_type("text/plain".into())
            .with_delivery_mode(2);
        let header = AMQPContentHeader {
            class_id: 60,
            body_size: 5,
            properties: props.clone(),
        };
        let bytes = encoded(&AMQPFrame::Header(1, header));
        let mut buf = BytesMut::from(&bytes[..]);
        let Some(Frame::Header(1, decoded, raw)) = decode_frame(&mut buf, 131072).unwrap() else {
            panic!("expected a header frame");
        };
        assert_eq!(decoded.properties, props);
        let mut out = BytesMut::new();
        encode::content_header(&mut out, 1, 5, &raw);
        assert_eq!(out.to_vec(), bytes);
    }
}
