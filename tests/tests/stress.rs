//! Concurrency stress: connections doing random interleaved operations on shared queues (declares
//! with TTL / dead-lettering / length limits, publishes, gets, acks, nacks, rejects, consumers coming
//! and going, purges, deletes, binds, channels closing). Channel errors (a queue deleted under a
//! client) are expected and the client reopens; the broker must neither deadlock nor panic and must
//! serve a fresh client at the end. Seeded and bounded in time.

mod common;

use std::time::{Duration, Instant};

use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const QUEUES: [&str; 3] = ["s0", "s1", "s2"];

fn args(rng: &mut StdRng) -> FieldTable {
    let mut t = FieldTable::default();
    match rng.gen_range(0..4) {
        0 => {
            t.insert(
                "x-message-ttl".into(),
                AMQPValue::LongInt(rng.gen_range(0..50)),
            );
            t.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString("stress-x".into()),
            );
        }
        1 => {
            t.insert(
                "x-max-length".into(),
                AMQPValue::LongInt(rng.gen_range(1..20)),
            );
            t.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString("stress-x".into()),
            );
        }
        2 => {
            t.insert("x-max-priority".into(), AMQPValue::LongInt(5));
        }
        _ => {}
    }
    t
}

async fn fresh_channel(conn: &Connection) -> Option<Channel> {
    let ch = conn.create_channel().await.ok()?;
    ch.basic_qos(5, BasicQosOptions::default()).await.ok()?;
    Some(ch)
}

/// (operations, reconnects, stalled client operations)
async fn worker(uri: String, seed: u64, deadline: Instant) -> (u64, u64, u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut ops, mut reconnects, mut stalls) = (0, 0, 0);
    let mut conn = Connection::connect(&uri, lapin::ConnectionProperties::default())
        .await
        .expect("connect");
    let mut ch = fresh_channel(&conn).await.expect("channel");
    let mut consumers: Vec<lapin::Consumer> = Vec::new();
    while Instant::now() < deadline {
        if !ch.status().connected() {
            consumers.clear();
            ch = match fresh_channel(&conn).await {
                Some(c) => c,
                None => {
                    // lapin 4.7.4 sometimes gives up a connection under this much channel churn (it
                    // receives frames for a channel id it has just reused); the broker is fine, so
                    // reconnect and keep going.
                    reconnects += 1;
                    conn = Connection::connect(&uri, lapin::ConnectionProperties::default())
                        .await
                        .expect("reconnect");
                    fresh_channel(&conn).await.expect("channel")
                }
            };
        }
        ops += 1;
        let q = QUEUES[rng.gen_range(0..QUEUES.len())];
        // Each call may fail with a channel error (argument mismatch, queue deleted meanwhile):
        // that is the point; the result is ignored and the channel replaced above.
        let op = async {
            match rng.gen_range(0..12) {
                0 => ch
                    .queue_declare(q.into(), QueueDeclareOptions::default(), args(&mut rng))
                    .await
                    .map(|_| ()),
                1..=3 => {
                    let props = BasicProperties::default().with_priority(rng.gen_range(0..9));
                    let props = if rng.gen_bool(0.2) {
                        props.with_expiration(rng.gen_range(0..30).to_string().into())
                    } else {
                        props
                    };
                    let ex = if rng.gen_bool(0.5) { "" } else { "stress-x" };
                    ch.basic_publish(
                        ex.into(),
                        q.into(),
                        BasicPublishOptions::default(),
                        b"payload",
                        props,
                    )
                    .await
                    .map(|_| ())
                }
                4 => match ch.basic_get(q.into(), BasicGetOptions::default()).await {
                    Ok(Some(m)) => match rng.gen_range(0..3) {
                        0 => m.delivery.ack(BasicAckOptions::default()).await.map(|_| ()),
                        1 => m
                            .delivery
                            .nack(BasicNackOptions {
                                requeue: true,
                                multiple: false,
                            })
                            .await
                            .map(|_| ()),
                        _ => m
                            .delivery
                            .reject(BasicRejectOptions { requeue: false })
                            .await
                            .map(|_| ()),
                    },
                    other => other.map(|_| ()),
                },
                5 => {
                    let tag = format!("c{}", rng.r#gen::<u32>());
                    ch.basic_consume(
                        q.into(),
                        tag.as_str().into(),
                        BasicConsumeOptions {
                            no_ack: rng.gen_bool(0.5),
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .map(|c| consumers.push(c))
                }
                6 => {
                    // Take whatever the consumers have and ack some of it.
                    for c in consumers.iter_mut() {
                        if let Ok(Some(Ok(d))) = tokio::time::timeout(
                            Duration::from_millis(2),
                            futures_lite::StreamExt::next(c),
                        )
                        .await
                        {
                            let _ = d
                                .ack(BasicAckOptions {
                                    multiple: rng.gen_bool(0.3),
                                })
                                .await;
                        }
                    }
                    Ok(())
                }
                7 => match consumers.pop() {
                    Some(c) => {
                        ch.basic_cancel(c.tag().clone(), BasicCancelOptions::default())
                            .await
                    }
                    None => Ok(()),
                },
                8 => ch
                    .queue_purge(q.into(), QueuePurgeOptions::default())
                    .await
                    .map(|_| ()),
                9 => ch
                    .queue_delete(q.into(), QueueDeleteOptions::default())
                    .await
                    .map(|_| ()),
                10 => {
                    ch.queue_bind(
                        q.into(),
                        "stress-x".into(),
                        q.into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                }
                _ => {
                    if rng.gen_bool(0.3) {
                        let _ = ch.close(200, "bye".into()).await;
                    }
                    Ok(())
                }
            }
        };
        let result = match tokio::time::timeout(Duration::from_secs(2), op).await {
            Ok(r) => r,
            Err(_) => {
                // The client is stuck (its connection state is confused, see above): start over.
                stalls += 1;
                conn = Connection::connect(&uri, lapin::ConnectionProperties::default())
                    .await
                    .expect("reconnect");
                ch = fresh_channel(&conn).await.expect("channel");
                consumers.clear();
                continue;
            }
        };
        // A connection-level error from the broker would be a failure of the broker's input handling.
        if let Err(e) = &result {
            assert!(
                !e.is_amqp_hard_error(),
                "broker closed the connection: {e:?}"
            );
        }
    }
    (ops, reconnects, stalls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_concurrent_operations_neither_deadlock_nor_panic() {
    // A panic in a broker task would be swallowed by tokio: count every panic in the process.
    static PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        default_hook(info);
    }));
    let broker = start_broker().await;
    let setup = connect(&broker).await;
    let ch = channel(&setup).await;
    ch.exchange_declare(
        "stress-x".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    // 4 s in CI; `WARREN_STRESS_SECONDS=300 cargo test -p warren-tests --test stress` for a soak.
    let seconds = std::env::var("WARREN_STRESS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for seed in 0..12u64 {
        tasks.push(tokio::spawn(worker(broker.uri(), seed, deadline)));
    }
    let (mut total, mut reconnects, mut stalls) = (0, 0, 0);
    for t in tasks {
        // A deadlocked broker would leave workers waiting for replies: bounded here.
        let (ops, re, st) = tokio::time::timeout(Duration::from_secs(seconds + 20), t)
            .await
            .expect("worker finished (no deadlock)")
            .expect("worker task");
        total += ops;
        reconnects += re;
        stalls += st;
    }
    eprintln!("stress: {total} operations, {reconnects} client reconnects, {stalls} stalled client operations");
    assert!(total > 1000, "only {total} operations ran");
    // The broker still serves a new client end to end, including on the stressed queues (deleting each
    // takes its lock: a queue left locked would hang here).
    let check = async {
        let conn = connect(&broker).await;
        let ch = channel(&conn).await;
        for q in QUEUES.iter().chain(["after-stress"].iter()) {
            ch.queue_delete((*q).into(), QueueDeleteOptions::default())
                .await
                .unwrap();
            ch.queue_declare(
                (*q).into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
            ch.basic_publish(
                "".into(),
                (*q).into(),
                BasicPublishOptions::default(),
                b"ok",
                BasicProperties::default(),
            )
            .await
            .unwrap();
            let m = ch
                .basic_get((*q).into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
                .expect("message");
            assert_eq!(m.delivery.data, b"ok");
        }
    };
    tokio::time::timeout(Duration::from_secs(10), check)
        .await
        .expect("broker serves after the stress (no deadlock)");
    broker.stop().await;
    assert_eq!(
        PANICS.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a task panicked (see stderr)"
    );
}
