//! Memory a client can make the broker hold is bounded, or seen by the memory alarm: a client that
//! does not read what it asks for, bodies left unfinished on many channels, small messages that would
//! pin their connection's read buffer, many queues. The memory of the real binary is measured where it
//! matters (resident set size of a child process, with wide margins: the broken behaviour grew it
//! 5–10× more than the bound asserted); the alarm is read from in-process brokers, one test at a time
//! (the accounting is process-wide).

mod common;

use std::time::{Duration, Instant};

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{basic, channel as amqp_channel, queue, AMQPClass};
use common::process::Process;
use common::raw::{encode, Raw};
use common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::BasicProperties;
use warren::config::Config;

/// In-process tests that read the (process-wide) memory accounting run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn data_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "warren-mem-{name}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn method(ch: u16, m: AMQPClass) -> Vec<u8> {
    encode(&AMQPFrame::Method(ch, m))
}

/// basic.publish to the default exchange with a body of `size` octets split in frames of `frame`.
fn publish(ch: u16, queue: &str, size: usize, frame: usize, declared: usize) -> Vec<u8> {
    let mut out = method(
        ch,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: queue.into(),
            ..Default::default()
        })),
    );
    out.extend(encode(&AMQPFrame::Header(
        ch,
        AMQPContentHeader {
            class_id: 60,
            body_size: declared as u64,
            properties: Default::default(),
        },
    )));
    let body = vec![b'x'; size];
    for part in body.chunks(frame) {
        out.extend(encode(&AMQPFrame::Body(ch, part.to_vec())));
    }
    out
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 200 × (basic.get + basic.nack requeue) of a 1 MiB message, written at once (8 KiB) by a client
/// that never reads: the broker stops reading it once its write buffer is full, instead of encoding
/// 200 MiB of deliveries into memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_gets_no_more_than_its_write_buffer() {
    let dir = data_dir("non-reader");
    let p = Process::start(&dir);
    let conn = p.connect().await;
    let ch = channel(&conn).await;
    ch.queue_declare(
        "big".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.basic_publish(
        "".into(),
        "big".into(),
        BasicPublishOptions::default(),
        &vec![b'b'; 1 << 20],
        BasicProperties::default(),
    )
    .await
    .unwrap();
    wait_get_count(&ch, "big", 1).await;
    let before = p.rss();
    let mut raw = Raw::opened_at(p.addr(), 0).await;
    raw.open_channel(1).await;
    let mut bytes = Vec::new();
    for tag in 1..=200u64 {
        bytes.extend(method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
                queue: "big".into(),
                no_ack: false,
            })),
        ));
        bytes.extend(method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
                delivery_tag: tag,
                multiple: false,
                requeue: true,
            })),
        ));
    }
    raw.send_bytes(&bytes).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let grown = p.rss().saturating_sub(before);
    assert!(
        grown < 40 << 20,
        "the broker grew by {} MiB for a client that does not read",
        grown >> 20
    );
    // Everyone else is still served.
    let other = p.connect().await;
    channel(&other)
        .await
        .queue_declare(
            "big".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("still served");
    drop(raw);
    let _ = std::fs::remove_dir_all(&dir);
}

async fn wait_get_count(ch: &lapin::Channel, queue: &str, n: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while message_count(ch, queue).await < n {
        assert!(Instant::now() < deadline, "{queue} never held {n} messages");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 1 000 clients each publish 56 KiB that is dropped and one small message, and go away: the small
/// messages stay, their connections' 64 KiB read buffers do not (a small message owns a copy of its
/// octets). Kept alive, the buffers would be ~64 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_messages_do_not_pin_read_buffers() {
    let dir = data_dir("pinned");
    let p = Process::start(&dir);
    let conn = p.connect().await;
    let ch = channel(&conn).await;
    ch.queue_declare(
        "keep".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    // Warm up the allocator with a few connections first.
    let mut sent = 0;
    for _ in 0..20 {
        one_message_and_gone(&p).await;
        sent += 1;
    }
    wait_get_count(&ch, "keep", sent).await;
    let before = p.rss();
    for _ in 0..1_000 {
        one_message_and_gone(&p).await;
        sent += 1;
    }
    wait_get_count(&ch, "keep", sent).await;
    let grown = p.rss().saturating_sub(before);
    assert!(
        grown < 24 << 20,
        "1 000 small messages from 1 000 connections grew the broker by {} MiB",
        grown >> 20
    );
    let _ = std::fs::remove_dir_all(&dir);
}

async fn one_message_and_gone(p: &Process) {
    let mut raw = Raw::opened_at(p.addr(), 0).await;
    raw.open_channel(1).await;
    // 56 KiB that is dropped (no such queue), then the message that stays: both in the connection's
    // one read buffer, which the small message would otherwise keep alive, every page touched.
    let mut bytes = publish(1, "nowhere", 56 << 10, 56 << 10, 56 << 10);
    bytes.extend(publish(1, "keep", 200, 200, 200));
    raw.send_bytes(&bytes).await;
    raw.method(
        0,
        AMQPClass::Connection(amq_protocol::protocol::connection::AMQPMethod::Close(
            amq_protocol::protocol::connection::Close {
                reply_code: 200,
                reply_text: "bye".into(),
                class_id: 0,
                method_id: 0,
            },
        )),
    )
    .await;
    // close-ok, then the client closes the socket (the side that sent connection.close closes).
    while let Some(frame) = raw.recv().await {
        if matches!(
            frame,
            AMQPFrame::Method(
                0,
                AMQPClass::Connection(amq_protocol::protocol::connection::AMQPMethod::CloseOk(_))
            )
        ) {
            break;
        }
    }
}

/// Bodies left unfinished on many channels of one connection are charged to that connection: past
/// its budget (4 × max_message_size = 64 MiB by default) it is closed with 506. And the memory alarm
/// counts unfinished bodies: 20 MiB of them pass a 16 MiB watermark, and the alarm clears once the
/// connection has gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_bodies_are_bounded_and_seen_by_the_alarm() {
    let _serial = SERIAL.lock().await;
    let broker = start_broker().await;
    let mut raw = Raw::opened(&broker).await;
    let mut closed = None;
    for ch in 1..=200u16 {
        // channel.open is answered with open-ok, unless an earlier body closed the connection.
        raw.method(
            ch,
            AMQPClass::Channel(amqp_channel::AMQPMethod::Open(amqp_channel::Open {})),
        )
        .await;
        match raw.recv().await {
            Some(AMQPFrame::Method(_, AMQPClass::Channel(amqp_channel::AMQPMethod::OpenOk(_)))) => {
            }
            Some(AMQPFrame::Method(
                0,
                AMQPClass::Connection(amq_protocol::protocol::connection::AMQPMethod::Close(c)),
            )) => {
                closed = Some((ch, c.reply_code, c.reply_text.to_string()));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
        // 2 MiB declared, 128 KiB sent in two frames: the second makes the body 1 MiB reserved.
        raw.send_bytes(&publish(ch, "nowhere", 128 << 10, 64 << 10, 2 << 20))
            .await;
    }
    let (at, code, text) = closed.expect("the connection was closed");
    assert_eq!(code, 506, "{text}");
    assert_eq!(
        text,
        "RESOURCE_ERROR - unfinished message bodies on this connection would exceed 67108864 octets"
    );
    assert!((60..=70).contains(&at), "closed at channel {at}");
    drop(raw);
    broker.stop().await;

    let broker = start_broker_with(Config {
        memory_high_watermark_absolute: Some(16 << 20),
        ..Config::default()
    })
    .await;
    let mut raw = Raw::opened(&broker).await;
    // Written without waiting for answers: once the alarm is up this publisher is no longer read.
    let mut bytes = Vec::new();
    for ch in 1..=20u16 {
        bytes.extend(method(
            ch,
            AMQPClass::Channel(amqp_channel::AMQPMethod::Open(amqp_channel::Open {})),
        ));
        // Two 4 KiB frames of a 2 MiB body: 1 MiB reserved each; little unread input is left once the
        // alarm blocks this publisher, so the broker still notices when it goes away.
        bytes.extend(publish(ch, "nowhere", 8 << 10, 4 << 10, 2 << 20));
    }
    raw.send_bytes(&bytes).await;
    let alarms = std::sync::Arc::clone(&broker.broker.alarms);
    wait_for("the memory alarm", || alarms.borrow().memory).await;
    drop(raw);
    wait_for("the memory alarm to clear", || !alarms.borrow().memory).await;
}

/// Queues cost memory too: 40 000 of them (~50 MiB accounted) pass a 32 MiB watermark and raise the
/// memory alarm; deleting them clears it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_queues_raise_the_memory_alarm() {
    let _serial = SERIAL.lock().await;
    let broker = start_broker_with(Config {
        memory_high_watermark_absolute: Some(32 << 20),
        ..Config::default()
    })
    .await;
    let alarms = std::sync::Arc::clone(&broker.broker.alarms);
    assert!(!alarms.borrow().memory);
    let mut raw = Raw::opened(&broker).await;
    raw.open_channel(1).await;
    let n = 40_000;
    let mut bytes = Vec::new();
    for i in 0..n {
        bytes.extend(method(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: format!("q-{i}").as_str().into(),
                nowait: true,
                ..Default::default()
            })),
        ));
    }
    raw.send_bytes(&bytes).await;
    wait_for("the memory alarm", || alarms.borrow().memory).await;
    let mut bytes = Vec::new();
    for i in 0..n {
        bytes.extend(method(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
                queue: format!("q-{i}").as_str().into(),
                nowait: true,
                ..Default::default()
            })),
        ));
    }
    raw.send_bytes(&bytes).await;
    wait_for("the memory alarm to clear", || !alarms.borrow().memory).await;
}
