//! Limits with RabbitMQ's names, reply codes and texts: vhost `max-connections` / `max-queues`, user
//! `max-connections` / `max-channels` (from the config file and from definitions), channel_max counting
//! open channels (tests/bad_input.rs), `consumer_max_per_channel`, `connection_max` and the cap on
//! connections still in the handshake. Each limit frees its slot when the thing it counts goes away.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{channel as amqp_channel, connection, AMQPClass};
use common::raw::Raw;
use common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use warren::config::Config;
use warren::limits::{UserLimits, VhostLimits};

/// Logs in as guest to `/` and reads the answer to connection.open: `None` for open-ok, else the
/// close's code and text.
async fn try_open(broker: &TestBroker) -> (Raw, Option<(u16, String)>) {
    let mut raw = Raw::open(broker, "guest", "guest", "/", 0).await;
    match raw.recv().await {
        Some(AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)))) => {
            (raw, None)
        }
        Some(AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(c)))) => {
            (raw, Some((c.reply_code, c.reply_text.to_string())))
        }
        other => panic!("unexpected answer to connection.open: {other:?}"),
    }
}

/// Retries until a connection opens (a closed connection is counted off asynchronously; a socket
/// past `connection_max` is closed before connection.start).
async fn open_eventually(broker: &TestBroker) -> Raw {
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "no connection opened in time");
        let mut raw = Raw::connect_bare(broker).await;
        raw.send_bytes(b"AMQP\x00\x00\x09\x01").await;
        if raw.recv().await.is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue; // closed at accept
        }
        raw.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: FieldTable::default(),
                mechanism: "PLAIN".into(),
                response: "\0guest\0guest".into(),
                locale: "en_US".into(),
            })),
        )
        .await;
        raw.recv().await.expect("connection.tune");
        raw.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: 2047,
                frame_max: 131_072,
                heartbeat: 0,
            })),
        )
        .await;
        raw.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: "/".into(),
            })),
        )
        .await;
        if let Some(AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)),
        )) = raw.recv().await
        {
            return raw;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vhost_max_connections() {
    let config = Config {
        vhost_limits: HashMap::from([(
            "/".to_owned(),
            VhostLimits {
                max_connections: Some(2),
                max_queues: None,
            },
        )]),
        ..Config::default()
    };
    let broker = start_broker_with(config).await;
    let (_a, refused) = try_open(&broker).await;
    assert_eq!(refused, None);
    let (b, refused) = try_open(&broker).await;
    assert_eq!(refused, None);
    let (_c, refused) = try_open(&broker).await;
    assert_eq!(
        refused,
        Some((
            530,
            "NOT_ALLOWED - access to vhost '/' refused for user 'guest': connection limit (2) is reached"
                .to_owned()
        ))
    );
    drop(b);
    open_eventually(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vhost_max_queues() {
    let config = Config {
        vhost_limits: HashMap::from([(
            "/".to_owned(),
            VhostLimits {
                max_connections: None,
                max_queues: Some(3),
            },
        )]),
        ..Config::default()
    };
    let broker = start_broker_with(config).await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let declare = |ch: &lapin::Channel, name: &str| {
        let (ch, name) = (ch.clone(), name.to_owned());
        async move {
            ch.queue_declare(
                name.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
        }
    };
    for q in ["q0", "q1", "q2"] {
        declare(&ch, q).await.expect("under the limit");
    }
    let text = expect_code(declare(&ch, "q3").await, 406);
    assert_eq!(
        text,
        "PRECONDITION_FAILED - cannot declare queue 'q3': queue limit in vhost '/' (3) is reached"
    );
    // Redeclaring an existing queue is no new queue; deleting one makes room.
    let ch = channel(&conn).await;
    declare(&ch, "q0").await.expect("redeclare");
    ch.queue_delete("q1".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    declare(&ch, "q3").await.expect("room after a delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_max_connections_and_max_channels() {
    let mut config = Config::default();
    config.users[0].limits = UserLimits {
        max_connections: Some(1),
        max_channels: Some(2),
    };
    let broker = start_broker_with(config).await;
    let (mut raw, refused) = try_open(&broker).await;
    assert_eq!(refused, None);
    let (_second, refused) = try_open(&broker).await;
    assert_eq!(
        refused,
        Some((
            530,
            "NOT_ALLOWED - Connection refused for user 'guest': user connection limit (1) is reached"
                .to_owned()
        ))
    );
    raw.open_channel(1).await;
    raw.open_channel(2).await;
    // Closing a channel gives its place back.
    raw.method(
        2,
        AMQPClass::Channel(amqp_channel::AMQPMethod::Close(amqp_channel::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    )
    .await;
    assert!(matches!(
        raw.recv().await,
        Some(AMQPFrame::Method(
            2,
            AMQPClass::Channel(amqp_channel::AMQPMethod::CloseOk(_))
        ))
    ));
    raw.open_channel(3).await;
    raw.method(
        4,
        AMQPClass::Channel(amqp_channel::AMQPMethod::Open(amqp_channel::Open {})),
    )
    .await;
    let (code, text) = raw.expect_connection_close().await;
    assert_eq!(
        (code, text.as_str()),
        (
            530,
            "NOT_ALLOWED - number of channels opened for user 'guest' has reached the maximum allowed user limit of (2)"
        )
    );
    raw.expect_eof().await;
    // The closed connection's connection and channels are given back.
    let mut raw = open_eventually(&broker).await;
    raw.open_channel(1).await;
    raw.open_channel(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_max_per_channel() {
    use amq_protocol::protocol::basic;
    let config = Config {
        consumer_max_per_channel: Some(2),
        ..Config::default()
    };
    let broker = start_broker_with(config).await;
    let conn = connect(&broker).await;
    channel(&conn)
        .await
        .queue_declare(
            "cq".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    // Raw frames: lapin hands back a consumer before it sees the broker's answer.
    let mut raw = Raw::opened(&broker).await;
    raw.open_channel(1).await;
    for tag in ["c1", "c2", "c3"] {
        raw.method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: "cq".into(),
                consumer_tag: tag.into(),
                ..Default::default()
            })),
        )
        .await;
    }
    for _ in 0..2 {
        assert!(matches!(
            raw.recv().await,
            Some(AMQPFrame::Method(
                1,
                AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_))
            ))
        ));
    }
    let (code, text) = raw.expect_connection_close().await;
    assert_eq!(
        (code, text.as_str()),
        (
            530,
            "NOT_ALLOWED - reached maximum (2) of consumers per channel"
        )
    );
}

/// `connection_max`: a socket past the limit is closed before the broker says anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_max_closes_new_sockets() {
    let config = Config {
        connection_max: Some(2),
        ..Config::default()
    };
    let broker = start_broker_with(config).await;
    let (_a, _) = try_open(&broker).await;
    let (b, _) = try_open(&broker).await;
    let mut third = Raw::connect_bare(&broker).await;
    third.send_bytes(b"AMQP\x00\x00\x09\x01").await;
    assert_eq!(third.recv().await, None, "closed without connection.start");
    drop(b);
    open_eventually(&broker).await;
}

/// Connections that have not logged in are capped: idle sockets cannot exhaust the broker, and
/// logged-in ones do not count against the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_in_the_handshake_are_capped() {
    let config = Config {
        unauthenticated_connection_max: 3,
        ..Config::default()
    };
    let broker = start_broker_with(config).await;
    let (_logged_in, refused) = try_open(&broker).await;
    assert_eq!(refused, None);
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(Raw::connect_bare(&broker).await);
    }
    // The broker has counted the three before the fourth arrives.
    let deadline = Instant::now() + WAIT;
    while broker.broker.handshakes.get() < 3 {
        assert!(Instant::now() < deadline, "idle sockets not counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut fourth = Raw::connect_bare(&broker).await;
    fourth.send_bytes(b"AMQP\x00\x00\x09\x01").await;
    assert_eq!(fourth.recv().await, None, "closed without connection.start");
    drop(idle);
    open_eventually(&broker).await;
}

/// Limits from a definitions file: `vhost-limits` runtime parameters and `users[].limits`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_from_definitions() {
    let dir = std::env::temp_dir().join(format!("warren-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("definitions.json");
    std::fs::write(
        &path,
        r#"{
          "users": [{"name": "guest", "password": "guest", "tags": ["administrator"],
                     "limits": {"max-connections": 1}}],
          "vhosts": [{"name": "/", "limits": []}],
          "permissions": [{"user": "guest", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}],
          "parameters": [{"vhost": "/", "component": "vhost-limits", "name": "limits",
                          "value": {"max-queues": 1, "max-connections": -1}},
                         {"vhost": "/", "component": "shovel", "name": "s", "value": {}}]
        }"#,
    )
    .unwrap();
    let broker = start_broker_with(Config {
        definitions: Some(path),
        ..Config::default()
    })
    .await;
    let conn = connect(&broker).await;
    let (_raw, refused) = try_open(&broker).await;
    assert_eq!(
        refused.map(|r| r.0),
        Some(530),
        "users[].limits max-connections 1"
    );
    let ch = channel(&conn).await;
    ch.queue_declare(
        "one".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    expect_code(
        ch.queue_declare(
            "two".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await,
        406,
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Failed logins are throttled per source address: after the free burst (3 here), each new
/// connection from the address waits for its slot (5 a second here), so wrong passwords cannot be
/// tried at full speed; a right password still gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_throttled_per_address() {
    let config = Config {
        login_failure_burst: 3,
        login_failure_rate: 5.0,
        ..Config::default()
    };
    let broker = start_broker_with(config).await;
    for _ in 0..3 {
        refused(&broker).await;
    }
    let started = Instant::now();
    for _ in 0..6 {
        refused(&broker).await;
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(800),
        "6 wrong passwords after the burst took only {took:?}"
    );
    // The right password gets in after its slot (the end of the penalty is unit-tested in
    // warren::throttle).
    open_eventually(&broker).await;
}

/// One login with a wrong password, refused with 403.
async fn refused(broker: &TestBroker) {
    let mut raw = Raw::open(broker, "guest", "wrong", "/", 0).await;
    let (code, _) = raw.expect_connection_close().await;
    assert_eq!(code, 403);
}
