//! Protocol violations and bad input over a raw socket (stock clients cannot send malformed frames),
//! plus credentials, vhost, heartbeat and shutdown behaviour. Frames are built and parsed with
//! amq-protocol, independently of the broker's codec. After each case another client must still work.

mod common;

use std::time::Duration;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{basic, channel, queue, AMQPClass};
use common::raw::{encode, Raw};
use common::*;
use tokio::io::AsyncReadExt;

fn declare(name: &str) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        queue: name.into(),
        ..Default::default()
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_protocol_header_gets_ours_then_close() {
    let broker = start_broker().await;
    for header in [&b"AMQP\x00\x00\x08\x00"[..], b"GET / HTTP/1.1\r\n\r\n"] {
        let mut raw = Raw::connect_bare(&broker).await;
        raw.send_bytes(header).await;
        let mut reply = Vec::new();
        tokio::time::timeout(WAIT, raw.sock.read_to_end(&mut reply))
            .await
            .expect("closed")
            .expect("read");
        assert_eq!(reply, b"AMQP\x00\x00\x09\x01");
    }
    assert_broker_serves(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_errors_close_the_connection_with_501() {
    let broker = start_broker().await;
    let oversized = {
        let mut f = vec![3u8, 0, 1];
        f.extend_from_slice(&200_000u32.to_be_bytes());
        f
    };
    let bad_end = {
        let mut f = encode(&AMQPFrame::Method(1, declare("q")));
        let last = f.len() - 1;
        f[last] = 0x00;
        f
    };
    // queue.declare (50.10) whose arguments stop short.
    let malformed = vec![1u8, 0, 1, 0, 0, 0, 6, 0, 50, 0, 10, 0, 0, 0xCE];
    let heartbeat_on_channel = vec![8u8, 0, 1, 0, 0, 0, 0, 0xCE];
    let unknown_type = vec![9u8, 0, 0, 0, 0, 0, 0, 0xCE];
    for (name, bytes) in [
        ("oversized", oversized),
        ("bad frame end", bad_end),
        ("malformed method", malformed),
        ("heartbeat on channel 1", heartbeat_on_channel),
        ("unknown frame type", unknown_type),
    ] {
        let mut raw = Raw::opened(&broker).await;
        raw.open_channel(1).await;
        raw.send_bytes(&bytes).await;
        let (code, text) = raw.expect_connection_close().await;
        assert_eq!(code, 501, "{name}: {text}");
        assert!(text.starts_with("FRAME_ERROR - "), "{name}: {text}");
        raw.expect_eof().await;
    }
    assert_broker_serves(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_method_is_540() {
    let broker = start_broker().await;
    let mut raw = Raw::opened(&broker).await;
    raw.open_channel(1).await;
    raw.send_bytes(&[1, 0, 1, 0, 0, 0, 4, 0, 99, 0, 1, 0xCE])
        .await;
    let (code, text) = raw.expect_connection_close().await;
    assert_eq!(code, 540, "{text}");
    assert_eq!(text, "NOT_IMPLEMENTED - unknown method: class 99, method 1");
    assert_broker_serves(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_frames_out_of_order_are_505() {
    let broker = start_broker().await;
    let publish = AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
        exchange: "".into(),
        routing_key: "q".into(),
        ..Default::default()
    }));
    let header = AMQPFrame::Header(
        1,
        AMQPContentHeader {
            class_id: 60,
            body_size: 3,
            properties: Default::default(),
        },
    );
    let cases: Vec<(&str, Vec<AMQPFrame>)> = vec![
        (
            "body without publish",
            vec![AMQPFrame::Body(1, b"abc".to_vec())],
        ),
        ("header without publish", vec![header.clone()]),
        (
            "method instead of header",
            vec![
                AMQPFrame::Method(1, publish.clone()),
                AMQPFrame::Method(1, declare("q")),
            ],
        ),
        (
            "method instead of body",
            vec![
                AMQPFrame::Method(1, publish.clone()),
                header.clone(),
                AMQPFrame::Method(1, declare("q")),
            ],
        ),
    ];
    for (name, frames) in cases {
        let mut raw = Raw::opened(&broker).await;
        raw.open_channel(1).await;
        for f in &frames {
            raw.send_bytes(&encode(f)).await;
        }
        let (code, text) = raw.expect_connection_close().await;
        assert_eq!(code, 505, "{name}: {text}");
        assert!(text.starts_with("UNEXPECTED_FRAME - "), "{name}: {text}");
    }
    // Body longer than the header declared.
    let mut raw = Raw::opened(&broker).await;
    raw.open_channel(1).await;
    for f in [
        AMQPFrame::Method(1, publish),
        header,
        AMQPFrame::Body(1, b"abcdef".to_vec()),
    ] {
        raw.send_bytes(&encode(&f)).await;
    }
    assert_eq!(raw.expect_connection_close().await.0, 501);
    assert_broker_serves(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_misuse_is_504() {
    let broker = start_broker().await;
    let mut raw = Raw::opened(&broker).await;
    raw.method(5, declare("q")).await;
    let (code, text) = raw.expect_connection_close().await;
    assert_eq!(
        (code, text.as_str()),
        (504, "CHANNEL_ERROR - expected 'channel.open' on channel 5")
    );

    let mut raw = Raw::opened(&broker).await;
    raw.open_channel(1).await;
    raw.method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    )
    .await;
    let (code, text) = raw.expect_connection_close().await;
    assert_eq!(
        (code, text.as_str()),
        (504, "CHANNEL_ERROR - second 'channel.open' seen")
    );

    // A method after the channel was closed by the client is also 504.
    let mut raw = Raw::opened(&broker).await;
    raw.open_channel(1).await;
    let close = channel::Close {
        reply_code: 200,
        reply_text: "bye".into(),
        class_id: 0,
        method_id: 0,
    };
    raw.method(1, AMQPClass::Channel(channel::AMQPMethod::Close(close)))
        .await;
    assert!(matches!(
        raw.recv().await,
        Some(AMQPFrame::Method(
            1,
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))
        ))
    ));
    raw.method(1, declare("q")).await;
    assert_eq!(raw.expect_connection_close().await.0, 504);
    assert_broker_serves(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_after_a_channel_error_are_dropped_until_close_ok() {
    let broker = start_broker().await;
    let mut raw = Raw::opened(&broker).await;
    raw.open_channel(1).await;
    raw.method(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "nope".into(),
            passive: true,
            ..Default::default()
        })),
    )
    .await;
    raw.method(1, declare("ignored")).await;
    let (code, text) = raw.expect_channel_close().await;
    assert_eq!(
        (code, text.as_str()),
        (404, "NOT_FOUND - no queue 'nope' in vhost '/'")
    );
    raw.method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
    )
    .await;
    raw.open_channel(1).await; // the id is free again
    raw.method(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "ignored".into(),
            passive: true,
            ..Default::default()
        })),
    )
    .await;
    assert_eq!(
        raw.expect_channel_close().await.0,
        404,
        "the declare sent while closing was dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_403() {
    let broker = start_broker().await;
    let mut raw = Raw::open(&broker, "guest", "wrong", "/", 0).await;
    let (code, text) = raw.expect_connection_close().await;
    assert_eq!(code, 403);
    assert_eq!(text, "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile.");
    let bad_uri = format!("amqp://guest:nope@{}/%2f", broker.addr);
    assert!(
        lapin::Connection::connect(&bad_uri, lapin::ConnectionProperties::default())
            .await
            .is_err()
    );
    assert_broker_serves(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_vhost_is_530() {
    let broker = start_broker().await;
    let mut raw = Raw::open(&broker, "guest", "guest", "elsewhere", 0).await;
    let (code, text) = raw.expect_connection_close().await;
    assert_eq!(
        (code, text.as_str()),
        (530, "NOT_ALLOWED - vhost elsewhere not found")
    );
    assert_broker_serves(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_heartbeats_close_the_socket_and_heartbeats_are_sent() {
    let broker = start_broker().await;
    let mut raw = Raw::open(&broker, "guest", "guest", "/", 1).await;
    let mut heartbeats = 0;
    let started = std::time::Instant::now();
    // With heartbeat = 1 s and a silent client, the server sends heartbeats and closes within ~3 s.
    while let Some(frame) = raw.recv().await {
        if frame == AMQPFrame::Heartbeat {
            heartbeats += 1;
        }
    }
    assert!(heartbeats >= 1, "server sent no heartbeat");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed after {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_connections_with_320() {
    let broker = start_broker().await;
    let mut raw = Raw::opened(&broker).await;
    raw.open_channel(1).await;
    let stopping = tokio::spawn(async move {
        let (code, text) = raw.expect_connection_close().await;
        raw.expect_eof().await;
        (code, text)
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    broker.stop().await;
    let (code, text) = stopping.await.unwrap();
    assert_eq!(code, 320);
    assert_eq!(
        text,
        "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_garbage_after_handshake_never_takes_the_broker_down() {
    use rand::{Rng, SeedableRng};
    let broker = start_broker().await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..100 {
        let mut raw = Raw::opened(&broker).await;
        raw.open_channel(1).await;
        let mut junk: Vec<u8> = (0..rng.gen_range(1..512))
            .map(|_| rng.r#gen::<u8>())
            .collect();
        junk[0] = [1u8, 2, 3][rng.gen_range(0..3)];
        raw.send_bytes(&junk).await;
        // Whatever the server makes of it, it answers with a close or waits for more; never crashes.
        let _ = tokio::time::timeout(Duration::from_millis(20), raw.recv()).await;
    }
    assert_broker_serves(&broker).await;
}

/// Regression: a publish whose body arrives in a later read must not be confirmed by the flush at the
/// end of the first read; here it fails with 404, so the client must see channel.close and no ack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_waits_for_the_whole_message() {
    let broker = start_broker().await;
    let mut raw = Raw::opened(&broker).await;
    raw.open_channel(1).await;
    raw.method(
        1,
        AMQPClass::Confirm(amq_protocol::protocol::confirm::AMQPMethod::Select(
            Default::default(),
        )),
    )
    .await;
    assert!(matches!(
        raw.recv().await,
        Some(AMQPFrame::Method(1, AMQPClass::Confirm(_)))
    ));
    let publish = AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
        exchange: "missing".into(),
        routing_key: "k".into(),
        ..Default::default()
    }));
    raw.method(1, publish).await;
    raw.send_bytes(&encode(&AMQPFrame::Header(
        1,
        AMQPContentHeader {
            class_id: 60,
            body_size: 3,
            properties: Default::default(),
        },
    )))
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await; // the server has read and flushed the first part
    raw.send_bytes(&encode(&AMQPFrame::Body(1, b"abc".to_vec())))
        .await;
    match raw.recv().await {
        Some(AMQPFrame::Method(1, AMQPClass::Channel(channel::AMQPMethod::Close(c)))) => {
            assert_eq!(c.reply_code, 404)
        }
        other => panic!("expected channel.close 404 and no ack first, got {other:?}"),
    }
}

/// connection.tune: the client's lower frame_max and channel_max are honoured; higher ones refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tune_honours_the_clients_lower_limits() {
    use amq_protocol::protocol::connection;
    let broker = start_broker().await;
    let mut raw = Raw::open_tuned(&broker, "guest", "guest", "/", 0, 2, 4096).await;
    assert!(matches!(
        raw.recv().await,
        Some(AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))
        ))
    ));
    raw.open_channel(1).await;
    raw.method(1, declare("small-frames")).await;
    assert!(matches!(
        raw.recv().await,
        Some(AMQPFrame::Method(1, AMQPClass::Queue(_)))
    ));
    let publish = AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
        exchange: "".into(),
        routing_key: "small-frames".into(),
        ..Default::default()
    }));
    raw.method(1, publish).await;
    raw.send_bytes(&encode(&AMQPFrame::Header(
        1,
        AMQPContentHeader {
            class_id: 60,
            body_size: 10_000,
            properties: Default::default(),
        },
    )))
    .await;
    for chunk in vec![7u8; 10_000].chunks(4088) {
        raw.send_bytes(&encode(&AMQPFrame::Body(1, chunk.to_vec())))
            .await;
    }
    raw.method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: "small-frames".into(),
            no_ack: true,
        })),
    )
    .await;
    let mut bodies = Vec::new();
    while bodies.iter().map(Vec::len).sum::<usize>() < 10_000 {
        match raw.recv().await.expect("delivery frames") {
            AMQPFrame::Body(1, b) => bodies.push(b),
            AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::GetOk(_)))
            | AMQPFrame::Header(..) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        bodies.len(),
        3,
        "10 000 bytes in frames of at most 4096 - 8"
    );
    assert!(bodies.iter().all(|b| b.len() <= 4088));
    // A frame larger than the negotiated 4096 octets is now a frame error.
    raw.send_bytes(&encode(&AMQPFrame::Body(1, vec![0u8; 5000])))
        .await;
    let (code, text) = raw.expect_connection_close().await;
    assert_eq!(code, 501, "{text}");

    let mut raw = Raw::open_tuned(&broker, "guest", "guest", "/", 0, 2, 131_072).await;
    assert!(matches!(
        raw.recv().await,
        Some(AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))
        ))
    ));
    // channel_max counts open channels, not ids, as RabbitMQ (rabbit_reader create_channel): with
    // channel_max 2, a third open channel is refused whatever its id.
    raw.open_channel(2).await;
    raw.open_channel(7).await;
    raw.method(
        3,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    )
    .await;
    let (code, text) = raw.expect_connection_close().await;
    assert_eq!(
        (code, text.as_str()),
        (
            530,
            "NOT_ALLOWED - number of channels opened (2) has reached the negotiated channel_max (2)"
        )
    );

    let mut raw = Raw::open_tuned(&broker, "guest", "guest", "/", 0, 2047, 1_000_000).await;
    let (code, text) = raw.expect_connection_close().await;
    assert_eq!(
        (code, text.as_str()),
        (530, "NOT_ALLOWED - frame_max=1000000 > 131072 max")
    );
}

/// basic.qos with prefetch_size != 0 is refused with 540 as RabbitMQ does (checked against 3.10.8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_size_is_not_implemented() {
    let broker = start_broker().await;
    let mut raw = Raw::opened(&broker).await;
    raw.open_channel(1).await;
    // basic.qos(prefetch_size = 10, prefetch_count = 0, global = false), encoded by hand: amq-protocol's
    // Qos has no prefetch_size field.
    raw.send_bytes(&[
        1, 0, 1, 0, 0, 0, 11, 0, 60, 0, 10, 0, 0, 0, 10, 0, 0, 0, 0xCE,
    ])
    .await;
    let (code, text) = raw.expect_connection_close().await;
    assert_eq!(
        (code, text.as_str()),
        (540, "NOT_IMPLEMENTED - prefetch_size!=0 (10)")
    );
}
