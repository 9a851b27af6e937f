//! Hostile and unusual input over a raw socket: field tables nested deep enough to overflow a recursive
//! parser (before and after login), frames larger than the spec's minimum before tune-ok, a handshake
//! written in one segment, a routing key that is not UTF-8, a method on channel 0, heartbeats at half
//! a 1 s interval; and, with lapin, unbind of what does not exist. After each case another client must
//! still be served. Deep payloads are built by hand: amq-protocol's encoder recurses too.

mod common;

use std::time::{Duration, Instant};

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{basic, connection, queue, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use common::raw::{deep_table, encode, Raw};
use common::*;
use lapin::options::*;
use lapin::BasicProperties;

fn short_str(out: &mut Vec<u8>, s: &[u8]) {
    out.push(s.len() as u8);
    out.extend_from_slice(s);
}

fn long_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

/// A frame of `frame_type` on `channel` around `payload`.
fn frame(frame_type: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![frame_type];
    f.extend_from_slice(&channel.to_be_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f.push(0xCE);
    f
}

/// connection.start-ok with `client_properties` (encoded table), `mechanism` and `response`.
fn start_ok(client_properties: &[u8], mechanism: &[u8], response: &[u8]) -> Vec<u8> {
    let mut p = vec![0, 10, 0, 11];
    p.extend_from_slice(client_properties);
    short_str(&mut p, mechanism);
    long_str(&mut p, response);
    short_str(&mut p, b"en_US");
    frame(1, 0, &p)
}

/// queue.declare of `name` with `arguments` (encoded table).
fn queue_declare(channel: u16, name: &str, arguments: &[u8]) -> Vec<u8> {
    let mut p = vec![0, 50, 0, 10, 0, 0];
    short_str(&mut p, name.as_bytes());
    p.push(0); // passive, durable, exclusive, auto-delete, no-wait: all off
    p.extend_from_slice(arguments);
    frame(1, channel, &p)
}

/// basic.publish to `exchange` with `routing_key` (any octets), a content header whose `headers`
/// property is `headers` (encoded table), and a one-octet body.
fn publish_with(exchange: &str, routing_key: &[u8], headers: Option<&[u8]>) -> Vec<u8> {
    let mut p = vec![0, 60, 0, 40, 0, 0];
    short_str(&mut p, exchange.as_bytes());
    short_str(&mut p, routing_key);
    p.push(0);
    let mut out = frame(1, 1, &p);
    let mut h = vec![0, 60, 0, 0];
    h.extend_from_slice(&1u64.to_be_bytes());
    match headers {
        Some(t) => {
            h.extend_from_slice(&0x2000u16.to_be_bytes());
            h.extend_from_slice(t);
        }
        None => h.extend_from_slice(&0u16.to_be_bytes()),
    }
    out.extend(frame(2, 1, &h));
    out.extend(frame(3, 1, b"x"));
    out
}

/// Connects, sends the protocol header and reads connection.start.
async fn started(broker: &TestBroker) -> Raw {
    let mut raw = Raw::connect_bare(broker).await;
    raw.send_bytes(b"AMQP\x00\x00\x09\x01").await;
    let start = raw.recv().await.expect("connection.start");
    assert!(matches!(
        start,
        AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Start(_)))
    ));
    raw
}

/// Before login: a start-ok whose client properties nest 600 tables or 700 arrays (under the 4 KiB
/// pre-tune frame limit; ~1 200 levels used to overflow the stack and abort the process) is refused
/// with 501 and a readable reason; so is an AMQPLAIN response nesting 600 tables (as a failed login).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_nesting_before_login_is_refused() {
    let broker = start_broker().await;
    for (kind, depth) in [(b'F', 600), (b'A', 700)] {
        let mut raw = started(&broker).await;
        let f = start_ok(&deep_table(depth, kind), b"PLAIN", b"\0guest\0guest");
        assert!(f.len() <= 4096, "{}", f.len());
        raw.send_bytes(&f).await;
        let (code, text) = raw.expect_connection_close().await;
        assert_eq!(code, 501, "{text}");
        assert!(
            text.starts_with("FRAME_ERROR - field table nesting of")
                && text.ends_with("exceeds the limit of 100"),
            "{text}"
        );
        raw.expect_eof().await;
    }
    let mut raw = started(&broker).await;
    let response = deep_table(600, b'F');
    raw.send_bytes(&start_ok(&[0, 0, 0, 0], b"AMQPLAIN", &response[4..]))
        .await;
    let (code, text) = raw.expect_connection_close().await;
    assert_eq!(code, 403, "{text}");
    assert_broker_serves(&broker).await;
}

/// After login (frame_max 128 KiB): 20 000 nested levels in queue.declare arguments or in
/// basic.publish headers are refused with 501; 100 levels — the limit — are accepted, stored and
/// delivered, so every walk over such a value fits the stack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_nesting_after_login_is_refused_and_the_limit_works() {
    let broker = start_broker().await;
    let deep = deep_table(20_000, b'F');
    for bytes in [
        queue_declare(1, "deep", &deep),
        publish_with("", b"q", Some(&deep_table(20_000, b'A'))),
    ] {
        let mut raw = Raw::opened(&broker).await;
        raw.open_channel(1).await;
        raw.send_bytes(&bytes).await;
        let (code, text) = raw.expect_connection_close().await;
        assert_eq!(code, 501, "{text}");
        assert!(text.contains("field table nesting of"), "{text}");
    }

    // 100 levels, tables and arrays mixed, built with amq-protocol.
    let mut value = AMQPValue::LongString(LongString::from("leaf"));
    for level in (1..100).rev() {
        value = if level % 2 == 0 {
            AMQPValue::FieldArray(vec![value].into())
        } else {
            let mut t = FieldTable::default();
            t.insert("n".into(), value);
            AMQPValue::FieldTable(t)
        };
    }
    let mut headers = FieldTable::default();
    headers.insert("deep".into(), value);
    let mut raw = Raw::opened(&broker).await;
    raw.open_channel(1).await;
    raw.send_bytes(&queue_declare(1, "limit", &[0, 0, 0, 0]))
        .await;
    assert!(matches!(
        raw.recv().await,
        Some(AMQPFrame::Method(
            1,
            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))
        ))
    ));
    let mut encoded_headers = Vec::new();
    let props = basic::AMQPProperties::default().with_headers(headers.clone());
    for f in [
        AMQPFrame::Method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: "".into(),
                routing_key: "limit".into(),
                ..Default::default()
            })),
        ),
        AMQPFrame::Header(
            1,
            amq_protocol::frame::AMQPContentHeader {
                class_id: 60,
                body_size: 1,
                properties: props,
            },
        ),
        AMQPFrame::Body(1, b"y".to_vec()),
    ] {
        encoded_headers.extend(encode(&f));
    }
    raw.send_bytes(&encoded_headers).await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let got = wait_get(&ch, "limit", true).await;
    assert_eq!(got.delivery.data, b"y");
    assert_eq!(
        got.delivery.properties.headers().as_ref(),
        Some(&headers),
        "100 levels delivered intact"
    );
    assert_broker_serves(&broker).await;
}

/// Before tune-ok a frame may be at most 4 096 octets (the spec's frame-min-size), as in RabbitMQ: a
/// 5 000-octet start-ok is a frame error, a 4 000-octet one is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_before_tune_ok_are_limited_to_4096_octets() {
    let broker = start_broker().await;
    let props = |n: usize| {
        let mut t = FieldTable::default();
        t.insert("pad".into(), AMQPValue::LongString("p".repeat(n).into()));
        let encoded = amq_protocol::types::generation::gen_field_table(&t)(
            amq_protocol::frame::WriteContext::from(Vec::new()),
        )
        .expect("encode")
        .write;
        encoded
    };
    let mut raw = started(&broker).await;
    raw.send_bytes(&start_ok(&props(5_000), b"PLAIN", b"\0guest\0guest"))
        .await;
    let (code, text) = raw.expect_connection_close().await;
    assert_eq!(code, 501, "{text}");
    assert!(text.contains("exceeds negotiated frame_max 4096"), "{text}");

    let mut raw = started(&broker).await;
    let f = start_ok(&props(3_900), b"PLAIN", b"\0guest\0guest");
    assert!(f.len() <= 4096);
    raw.send_bytes(&f).await;
    assert!(matches!(
        raw.recv().await,
        Some(AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Tune(_))
        ))
    ));
}

/// The protocol header and start-ok in one write: connection.start and connection.tune both come
/// without the client sending anything more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_in_one_segment_is_answered() {
    let broker = start_broker().await;
    let mut raw = Raw::connect_bare(&broker).await;
    let mut bytes = b"AMQP\x00\x00\x09\x01".to_vec();
    bytes.extend(start_ok(&[0, 0, 0, 0], b"PLAIN", b"\0guest\0guest"));
    raw.send_bytes(&bytes).await;
    assert!(matches!(
        raw.recv().await,
        Some(AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Start(_))
        ))
    ));
    assert!(matches!(
        raw.recv().await,
        Some(AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Tune(_))
        ))
    ));
}

/// A routing key is octets: one that is not UTF-8 is routed (the invalid octet shown as U+FFFD), as
/// RabbitMQ accepts it, instead of closing the connection with 501.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_key_that_is_not_utf8_is_accepted() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    ch.queue_declare(
        "bin-key".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        "bin-key".into(),
        "amq.fanout".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut raw = Raw::opened(&broker).await;
    raw.open_channel(1).await;
    raw.send_bytes(&publish_with("amq.fanout", b"\xffk", None))
        .await;
    let got = wait_get(&ch, "bin-key", true).await;
    assert_eq!(got.delivery.routing_key.as_str(), "\u{fffd}k");
    // The raw connection is still open: a second publish arrives too.
    raw.send_bytes(&publish_with("amq.fanout", b"\xfe", None))
        .await;
    let got = wait_get(&ch, "bin-key", true).await;
    assert_eq!(got.delivery.routing_key.as_str(), "\u{fffd}");
    // 255 invalid octets would be 765 as U+FFFD: cut to what a short string holds (the fuzz test
    // found this panicking the connection's task).
    raw.send_bytes(&publish_with("amq.fanout", &[0xff; 255], None))
        .await;
    let got = wait_get(&ch, "bin-key", true).await;
    assert_eq!(got.delivery.routing_key.as_str(), "\u{fffd}".repeat(85));
}

/// A channel method on channel 0 is a connection error 504 CHANNEL_ERROR with RabbitMQ's text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_declare_on_channel_0_is_504() {
    let broker = start_broker().await;
    let mut raw = Raw::opened(&broker).await;
    raw.send_bytes(&queue_declare(0, "q0", &[0, 0, 0, 0])).await;
    let (code, text) = raw.expect_connection_close().await;
    assert_eq!(
        (code, text.as_str()),
        (
            504,
            "CHANNEL_ERROR - unexpected method in connection state running"
        )
    );
    assert_broker_serves(&broker).await;
}

/// With a negotiated heartbeat of 1 s the broker sends a heartbeat every half second, as RabbitMQ
/// does: a client that treats one interval (1 s) of silence as a dead peer stays connected for 5 s
/// of idling (it sends its own heartbeats every 250 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_of_one_second_keeps_a_strict_client_alive() {
    let broker = start_broker().await;
    let mut raw = Raw::opened_with_heartbeat(&broker, 1).await;
    let heartbeat = encode(&AMQPFrame::Heartbeat);
    let started = Instant::now();
    let mut last_heard = Instant::now();
    let mut longest = Duration::ZERO;
    let mut send = tokio::time::interval(Duration::from_millis(250));
    while started.elapsed() < Duration::from_secs(5) {
        tokio::select! {
            _ = send.tick() => raw.send_bytes(&heartbeat).await,
            frame = raw.recv() => {
                let frame = frame.expect("the broker closed the connection");
                assert_eq!(frame, AMQPFrame::Heartbeat);
                longest = longest.max(last_heard.elapsed());
                last_heard = Instant::now();
            }
        }
    }
    longest = longest.max(last_heard.elapsed());
    assert!(
        longest < Duration::from_secs(1),
        "{longest:?} of silence from the broker with heartbeat = 1 s"
    );
}

/// queue.unbind and exchange.unbind naming a queue or exchange that does not exist answer unbind-ok
/// (unbinding is idempotent in RabbitMQ); the RPC pattern that unbinds an auto-delete reply queue
/// after cancelling its consumer keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbind_of_missing_queue_or_exchange_is_ok() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let args = FieldTable::default;
    ch.queue_unbind("no-q".into(), "amq.direct".into(), "k".into(), args())
        .await
        .expect("unbind of a missing queue");
    ch.queue_declare("real-q".into(), QueueDeclareOptions::default(), args())
        .await
        .unwrap();
    ch.queue_unbind("real-q".into(), "no-x".into(), "k".into(), args())
        .await
        .expect("unbind from a missing exchange");
    let opts = ExchangeUnbindOptions::default;
    ch.exchange_unbind(
        "no-d".into(),
        "amq.direct".into(),
        "k".into(),
        opts(),
        args(),
    )
    .await
    .expect("exchange.unbind of a missing destination");
    ch.exchange_unbind(
        "amq.fanout".into(),
        "no-s".into(),
        "k".into(),
        opts(),
        args(),
    )
    .await
    .expect("exchange.unbind of a missing source");

    // RPC helper: an auto-delete reply queue, bound, consumed, cancelled (which deletes it), unbound.
    ch.queue_declare(
        "reply-q".into(),
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        args(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        "reply-q".into(),
        "amq.direct".into(),
        "reply".into(),
        QueueBindOptions::default(),
        args(),
    )
    .await
    .unwrap();
    ch.basic_consume(
        "reply-q".into(),
        "rpc".into(),
        BasicConsumeOptions::default(),
        args(),
    )
    .await
    .unwrap();
    ch.basic_cancel("rpc".into(), BasicCancelOptions::default())
        .await
        .unwrap();
    ch.queue_unbind(
        "reply-q".into(),
        "amq.direct".into(),
        "reply".into(),
        args(),
    )
    .await
    .expect("unbind after the auto-delete queue went away");
    // Binding still needs both ends.
    let text = expect_code(
        ch.queue_bind(
            "no-q".into(),
            "amq.direct".into(),
            "k".into(),
            QueueBindOptions::default(),
            args(),
        )
        .await,
        404,
    );
    assert_eq!(text, "NOT_FOUND - no queue 'no-q' in vhost '/'");
    let ch = channel(&conn).await;
    ch.basic_publish(
        "".into(),
        "real-q".into(),
        BasicPublishOptions::default(),
        b"ok",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    assert_eq!(wait_get(&ch, "real-q", true).await.delivery.data, b"ok");
}
