//! Seeded fuzzing of the decoder and the connection state machine over real sockets: valid sessions
//! (handshake, declares with random argument tables, bindings, publishes with random properties and
//! headers, consumes, gets, acks, confirms, transactions, channel churn) built with amq-protocol, then
//! mutated (octets flipped, frames dropped, duplicated, swapped or cut, length fields changed, tables
//! nested thousands of levels deep spliced in) and written to an in-process broker. The broker must
//! never panic (a panic hook counts them) nor die (a stack overflow aborts the test), and must still
//! serve a client at the end.
//!
//! `WARREN_FUZZ_SECS` (default 20) sets the duration and `WARREN_FUZZ_SEED` the first seed; each
//! session's seed is printed when it finds a panic, so `WARREN_FUZZ_SEED=<seed> WARREN_FUZZ_SECS=1`
//! replays it. A longer campaign: see the README ("Fuzzing").

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{basic, channel, confirm, connection, exchange, queue, tx, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use common::raw::{deep_table, encode};
use common::*;
use lapin::options::QueueDeclareOptions;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

static PANICS: AtomicU64 = AtomicU64::new(0);

fn random_value(rng: &mut StdRng, depth: u32) -> AMQPValue {
    match rng.gen_range(0..if depth == 0 { 10 } else { 12 }) {
        0 => AMQPValue::Boolean(rng.gen()),
        1 => AMQPValue::ShortShortInt(rng.gen()),
        2 => AMQPValue::ShortInt(rng.gen()),
        3 => AMQPValue::LongInt(rng.gen()),
        4 => AMQPValue::LongLongInt(rng.gen_range(-5..100_000)),
        5 => AMQPValue::Double(rng.gen()),
        6 => AMQPValue::LongString(LongString::from(random_name(rng))),
        7 => AMQPValue::Timestamp(rng.gen()),
        8 => AMQPValue::Void,
        9 => AMQPValue::ByteArray(vec![rng.gen(); rng.gen_range(0..8)].into()),
        10 => AMQPValue::FieldTable(random_table(rng, depth - 1)),
        _ => AMQPValue::FieldArray(FieldArray::from(
            (0..rng.gen_range(0..3))
                .map(|_| random_value(rng, depth - 1))
                .collect::<Vec<_>>(),
        )),
    }
}

/// Argument names Warren acts on, so declares reach their validation, plus random ones.
const KEYS: &[&str] = &[
    "x-message-ttl",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-overflow",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-priority",
    "x-queue-type",
    "x-single-active-consumer",
    "x-delivery-limit",
    "x-priority",
    "alternate-exchange",
    "x-match",
    "x-death",
    "CC",
];

fn random_table(rng: &mut StdRng, depth: u32) -> FieldTable {
    let mut t = FieldTable::default();
    for _ in 0..rng.gen_range(0..4) {
        let key = if rng.gen_bool(0.7) {
            KEYS[rng.gen_range(0..KEYS.len())].to_owned()
        } else {
            random_name(rng)
        };
        t.insert(ShortString::from(key), random_value(rng, depth));
    }
    t
}

fn random_name(rng: &mut StdRng) -> String {
    [
        "q",
        "q1",
        "x",
        "amq.direct",
        "amq.topic",
        "",
        "a.b.#",
        "*.c",
    ][rng.gen_range(0..8)]
    .to_owned()
}

fn method(ch: u16, m: AMQPClass) -> Vec<u8> {
    encode(&AMQPFrame::Method(ch, m))
}

/// A valid session as a list of frames (the protocol header first).
fn valid_session(rng: &mut StdRng) -> Vec<Vec<u8>> {
    let mut frames = vec![b"AMQP\x00\x00\x09\x01".to_vec()];
    frames.push(method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: random_table(rng, 2),
            mechanism: "PLAIN".into(),
            response: LongString::from(if rng.gen_bool(0.9) {
                "\0guest\0guest"
            } else {
                "\0guest\0nope"
            }),
            locale: "en_US".into(),
        })),
    ));
    frames.push(method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
            channel_max: rng.gen_range(0..8),
            frame_max: [4096, 8192, 131_072][rng.gen_range(0..3)],
            heartbeat: 0,
        })),
    ));
    frames.push(method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
            virtual_host: "/".into(),
        })),
    ));
    frames.push(method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    ));
    for _ in 0..rng.gen_range(1..25) {
        let ch = if rng.gen_bool(0.9) { 1 } else { 2 };
        let name = random_name(rng);
        let m = match rng.gen_range(0..14) {
            0 | 1 => AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: name.as_str().into(),
                passive: rng.gen_bool(0.1),
                durable: rng.gen_bool(0.2),
                exclusive: rng.gen_bool(0.2),
                auto_delete: rng.gen_bool(0.2),
                nowait: rng.gen_bool(0.1),
                arguments: random_table(rng, 2),
            })),
            2 => AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                exchange: name.as_str().into(),
                kind: ["direct", "topic", "fanout", "headers", "x-nope"][rng.gen_range(0..5)]
                    .into(),
                arguments: random_table(rng, 2),
                ..Default::default()
            })),
            3 => AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
                queue: name.as_str().into(),
                exchange: random_name(rng).as_str().into(),
                routing_key: random_name(rng).as_str().into(),
                nowait: false,
                arguments: random_table(rng, 2),
            })),
            4 => AMQPClass::Queue(queue::AMQPMethod::Unbind(queue::Unbind {
                queue: name.as_str().into(),
                exchange: random_name(rng).as_str().into(),
                routing_key: random_name(rng).as_str().into(),
                arguments: random_table(rng, 1),
            })),
            5 | 6 => {
                let body: Vec<u8> = vec![rng.gen(); rng.gen_range(0..300)];
                let mut props = basic::AMQPProperties::default()
                    .with_headers(random_table(rng, 3))
                    .with_delivery_mode(rng.gen_range(1..3));
                if rng.gen_bool(0.3) {
                    props = props.with_expiration(rng.gen_range(0..50).to_string().into());
                }
                if rng.gen_bool(0.2) {
                    props = props.with_priority(rng.gen());
                }
                let mut f = method(
                    ch,
                    AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                        exchange: random_name(rng).as_str().into(),
                        routing_key: name.as_str().into(),
                        mandatory: rng.gen_bool(0.3),
                        immediate: false,
                    })),
                );
                f.extend(encode(&AMQPFrame::Header(
                    ch,
                    AMQPContentHeader {
                        class_id: 60,
                        body_size: body.len() as u64,
                        properties: props,
                    },
                )));
                for part in body.chunks(rng.gen_range(1..200)) {
                    f.extend(encode(&AMQPFrame::Body(ch, part.to_vec())));
                }
                frames.push(f);
                continue;
            }
            7 => AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: name.as_str().into(),
                consumer_tag: random_name(rng).as_str().into(),
                no_ack: rng.gen_bool(0.5),
                exclusive: rng.gen_bool(0.1),
                arguments: random_table(rng, 2),
                ..Default::default()
            })),
            8 => AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
                queue: name.as_str().into(),
                no_ack: rng.gen_bool(0.5),
            })),
            9 => AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: rng.gen_range(0..5),
                multiple: rng.gen_bool(0.3),
            })),
            10 => AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
                delivery_tag: rng.gen_range(0..5),
                multiple: rng.gen_bool(0.3),
                requeue: rng.gen_bool(0.5),
            })),
            11 => AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count: rng.gen_range(0..3),
                global: rng.gen_bool(0.5),
            })),
            12 => match rng.gen_range(0..4) {
                0 => AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                    nowait: false,
                })),
                1 => AMQPClass::Tx(tx::AMQPMethod::Select(tx::Select {})),
                2 => AMQPClass::Tx(tx::AMQPMethod::Commit(tx::Commit {})),
                _ => AMQPClass::Basic(basic::AMQPMethod::Recover(basic::Recover { requeue: true })),
            },
            _ => match rng.gen_range(0..2) {
                0 => AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
                _ => AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                    reply_code: 200,
                    reply_text: "".into(),
                    class_id: 0,
                    method_id: 0,
                })),
            },
        };
        frames.push(method(ch, m));
    }
    if rng.gen_bool(0.7) {
        frames.push(method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: 200,
                reply_text: "".into(),
                class_id: 0,
                method_id: 0,
            })),
        ));
    }
    frames
}

/// Mutates a valid session in 0–3 ways (a quarter stay valid).
fn mutate(rng: &mut StdRng, frames: &mut Vec<Vec<u8>>) {
    let n = if rng.gen_bool(0.25) {
        0
    } else {
        rng.gen_range(1..4)
    };
    for _ in 0..n {
        if frames.is_empty() {
            return;
        }
        let i = rng.gen_range(0..frames.len());
        match rng.gen_range(0..8) {
            0 | 1 => {
                let f = &mut frames[i];
                if !f.is_empty() {
                    let at = rng.gen_range(0..f.len());
                    f[at] = rng.gen();
                }
            }
            2 => {
                frames.remove(i);
            }
            3 => {
                let f = frames[i].clone();
                frames.insert(i, f);
            }
            4 => {
                let j = rng.gen_range(0..frames.len());
                frames.swap(i, j);
            }
            5 => {
                let f = &mut frames[i];
                let cut = rng.gen_range(0..=f.len());
                f.truncate(cut);
            }
            6 => {
                // The size field of a frame (after the type and channel octets).
                let f = &mut frames[i];
                if f.len() >= 7 && f[..4] != *b"AMQP" {
                    let size: u32 = [0, 1, 4_095, 4_096, 131_072, u32::MAX][rng.gen_range(0..6)];
                    f[3..7].copy_from_slice(&size.to_be_bytes());
                }
            }
            _ => {
                // Splice a deep table over the tail of a frame's payload, fixing its size field.
                let f = &mut frames[i];
                if f.len() > 12 && f[..4] != *b"AMQP" {
                    let at = rng.gen_range(8..f.len() - 1);
                    f.truncate(at);
                    let depth = [50, 101, 700, 5_000, 20_000][rng.gen_range(0..5)];
                    f.extend(deep_table(
                        depth,
                        if rng.gen_bool(0.5) { b'A' } else { b'F' },
                    ));
                    let size = (f.len() - 7) as u32;
                    f[3..7].copy_from_slice(&size.to_be_bytes());
                    f.push(0xCE);
                }
            }
        }
    }
}

/// Writes one session and reads what comes back until EOF or a short silence.
async fn run_session(addr: std::net::SocketAddr, frames: Vec<Vec<u8>>, rng: &mut StdRng) {
    let Ok(mut sock) = TcpStream::connect(addr).await else {
        return;
    };
    let bytes: Vec<u8> = frames.concat();
    let mut at = 0;
    while at < bytes.len() {
        let end = (at + rng.gen_range(1..=bytes.len() - at)).min(bytes.len());
        if sock.write_all(&bytes[at..end]).await.is_err() {
            return;
        }
        at = end;
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(Duration::from_millis(150), sock.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_sessions_never_harm_the_broker() {
    let secs: u64 = std::env::var("WARREN_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let first_seed: u64 = std::env::var("WARREN_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5741_5252_454E);
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));
    let broker = start_broker().await;
    let addr = broker.addr;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let sessions = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for worker in 0..4u64 {
        let sessions = Arc::clone(&sessions);
        workers.push(tokio::spawn(async move {
            let mut k = 0u64;
            while Instant::now() < deadline {
                let seed = first_seed + worker + 4 * k;
                k += 1;
                let mut rng = StdRng::seed_from_u64(seed);
                let mut frames = valid_session(&mut rng);
                mutate(&mut rng, &mut frames);
                let before = PANICS.load(Ordering::SeqCst);
                run_session(addr, frames, &mut rng).await;
                if PANICS.load(Ordering::SeqCst) != before {
                    eprintln!("a panic during session seed {seed}");
                }
                sessions.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for w in workers {
        w.await.expect("fuzz worker");
    }
    let n = sessions.load(Ordering::Relaxed);
    println!(
        "fuzz: {n} sessions in {secs} s, {} panics",
        PANICS.load(Ordering::SeqCst)
    );
    assert!(n > 0, "no session ran");
    // The broker still serves a well-behaved client.
    let conn = connect(&broker).await;
    channel(&conn)
        .await
        .queue_declare(
            "after-fuzz".into(),
            QueueDeclareOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("broker still serves after fuzzing");
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "panics in the broker");
}
