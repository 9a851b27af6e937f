//! Frame encoders writing into a connection's outgoing buffer.
//!
//! [`frame`] encodes any frame through amq-protocol. The functions below it hand-encode the frames sent
//! once per message (basic.deliver, basic.get-ok, basic.return, content header and body, basic.ack), because
//! amq-protocol's generated encoders allocate for their flag sets; `protocol::tests` checks they match
//! amq-protocol byte for byte.

use amq_protocol::frame::{gen_frame, AMQPFrame, WriteContext};
use amq_protocol::protocol::constants::{FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_METHOD};
use bytes::{BufMut, BytesMut};

use super::ids::{BASIC_ACK, BASIC_CLASS, BASIC_DELIVER, BASIC_GET_OK, BASIC_NACK, BASIC_RETURN};
use super::FRAME_OVERHEAD;

/// Encodes any frame with amq-protocol's generator and appends it to `out`.
pub fn frame(out: &mut BytesMut, frame: &AMQPFrame) {
    // Encoding into a Vec cannot fail for a well-formed frame; an error would be a bug in the generator,
    // so the frame is dropped rather than writing half of it.
    if let Ok(ctx) = gen_frame(frame)(WriteContext::from(Vec::with_capacity(64))) {
        out.extend_from_slice(&ctx.write);
    }
}

/// Writes a method frame whose payload is produced by `payload`, patching in the payload size.
fn method_frame(out: &mut BytesMut, channel: u16, payload: impl FnOnce(&mut BytesMut)) {
    out.put_u8(FRAME_METHOD);
    out.put_u16(channel);
    let size_at = out.len();
    out.put_u32(0);
    payload(out);
    let size = (out.len() - size_at - 4) as u32;
    out[size_at..size_at + 4].copy_from_slice(&size.to_be_bytes());
    out.put_u8(FRAME_END);
}

/// Appends a short string (one length octet, at most 255 bytes; longer input is cut, which cannot
/// happen for names that came in as short strings).
fn short_str(out: &mut BytesMut, s: &str) {
    let bytes = &s.as_bytes()[..s.len().min(255)];
    out.put_u8(bytes.len() as u8);
    out.put_slice(bytes);
}

/// basic.deliver (class 60, method 60), AMQP 0-9-1 §1.8.3.9.
pub fn deliver_method(
    out: &mut BytesMut,
    channel: u16,
    consumer_tag: &str,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
) {
    method_frame(out, channel, |out| {
        out.put_u16(BASIC_CLASS);
        out.put_u16(BASIC_DELIVER);
        short_str(out, consumer_tag);
        out.put_u64(delivery_tag);
        out.put_u8(u8::from(redelivered));
        short_str(out, exchange);
        short_str(out, routing_key);
    });
}

/// basic.get-ok (class 60, method 71), AMQP 0-9-1 §1.8.3.11.
pub(crate) fn get_ok_method(
    out: &mut BytesMut,
    channel: u16,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
    message_count: u32,
) {
    method_frame(out, channel, |out| {
        out.put_u16(BASIC_CLASS);
        out.put_u16(BASIC_GET_OK);
        out.put_u64(delivery_tag);
        out.put_u8(u8::from(redelivered));
        short_str(out, exchange);
        short_str(out, routing_key);
        out.put_u32(message_count);
    });
}

/// basic.return (class 60, method 50), AMQP 0-9-1 §1.8.3.8.
pub(crate) fn return_method(
    out: &mut BytesMut,
    channel: u16,
    reply_code: u16,
    reply_text: &str,
    exchange: &str,
    routing_key: &str,
) {
    method_frame(out, channel, |out| {
        out.put_u16(BASIC_CLASS);
        out.put_u16(BASIC_RETURN);
        out.put_u16(reply_code);
        short_str(out, reply_text);
        short_str(out, exchange);
        short_str(out, routing_key);
    });
}

/// basic.ack (class 60, method 80) sent for publisher confirms (RabbitMQ confirms.md).
pub(crate) fn basic_ack(out: &mut BytesMut, channel: u16, delivery_tag: u64, multiple: bool) {
    method_frame(out, channel, |out| {
        out.put_u16(BASIC_CLASS);
        out.put_u16(BASIC_ACK);
        out.put_u64(delivery_tag);
        out.put_u8(u8::from(multiple));
    });
}

/// basic.nack (class 60, method 120) sent for publisher confirms (RabbitMQ nack.md).
pub(crate) fn basic_nack(out: &mut BytesMut, channel: u16, delivery_tag: u64, multiple: bool) {
    method_frame(out, channel, |out| {
        out.put_u16(BASIC_CLASS);
        out.put_u16(BASIC_NACK);
        out.put_u64(delivery_tag);
        out.put_u8(u8::from(multiple) | 0b10); // requeue bit set, as RabbitMQ sends it
    });
}

/// A content header frame (type 2) for class basic, reusing `raw_properties` (flags + property list) as
/// received from the publisher. AMQP 0-9-1 §4.2.6.
pub fn content_header(out: &mut BytesMut, channel: u16, body_size: u64, raw_properties: &[u8]) {
    out.put_u8(FRAME_HEADER);
    out.put_u16(channel);
    out.put_u32((12 + raw_properties.len()) as u32);
    out.put_u16(BASIC_CLASS);
    out.put_u16(0);
    out.put_u64(body_size);
    out.put_slice(raw_properties);
    out.put_u8(FRAME_END);
}

/// Content body frames (type 3) for `body`, each payload at most `frame_max - 8` octets. AMQP 0-9-1 §4.2.6.
pub fn content_body(out: &mut BytesMut, channel: u16, body: &[u8], frame_max: usize) {
    let chunk = frame_max.saturating_sub(FRAME_OVERHEAD).max(1);
    out.reserve(body.len() + body.len().div_ceil(chunk) * FRAME_OVERHEAD);
    for part in body.chunks(chunk) {
        out.put_u8(FRAME_BODY);
        out.put_u16(channel);
        out.put_u32(part.len() as u32);
        out.put_slice(part);
        out.put_u8(FRAME_END);
    }
}

/// A heartbeat frame (type 8, channel 0). AMQP 0-9-1 §4.2.7.
pub(crate) fn heartbeat(out: &mut BytesMut) {
    out.put_slice(&[8, 0, 0, 0, 0, 0, 0, FRAME_END]);
}
