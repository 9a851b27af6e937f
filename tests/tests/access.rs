//! Users, permissions, vhosts, validated user_id, definitions and policies — with lapin
//! (RabbitMQ docs/access-control.md, docs/validated-user-id.md, docs/definitions.md, docs/policies.md).

mod common;

use common::raw::Raw;
use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use warren::config::{Config, Permission, User};

fn user(name: &str, password: &str) -> User {
    User {
        name: name.into(),
        password: Some(password.into()),
        password_hash: None,
        tags: vec![],
        limits: Default::default(),
    }
}

fn perm(user: &str, vhost: &str, configure: &str, write: &str, read: &str) -> Permission {
    Permission {
        user: user.into(),
        vhost: vhost.into(),
        configure: configure.into(),
        write: write.into(),
        read: read.into(),
    }
}

async fn connect_as(
    broker: &TestBroker,
    user: &str,
    pass: &str,
    vhost: &str,
) -> Result<Connection, lapin::Error> {
    let vhost = vhost.replace('/', "%2f");
    Connection::connect(
        &format!("amqp://{user}:{pass}@{}/{vhost}", broker.addr),
        ConnectionProperties::default(),
    )
    .await
}

fn config() -> Config {
    let mut c = Config::default();
    c.vhosts.push("/staging".into());
    c.users.push(user("alice", "alice-pw"));
    c.users.push(user("reader", "reader-pw"));
    c.permissions.push(perm(
        "alice",
        "/",
        "^alice\\.",
        "^(alice\\.|amq\\.default)",
        "^alice\\.",
    ));
    c.permissions.push(perm("reader", "/", "", "", ".*"));
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_are_enforced_with_rabbitmq_texts() {
    let broker = start_broker_with(config()).await;
    let alice = connect_as(&broker, "alice", "alice-pw", "/")
        .await
        .expect("alice logs in");
    let ch = channel(&alice).await;
    ch.queue_declare(
        "alice.jobs".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("own queue");
    ch.basic_publish(
        "".into(),
        "alice.jobs".into(),
        BasicPublishOptions::default(),
        b"x",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    assert!(ch
        .basic_get("alice.jobs".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .is_some());
    let text = expect_code(
        ch.queue_declare(
            "bob.jobs".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await,
        403,
    );
    assert_eq!(
        text,
        "ACCESS_REFUSED - access to queue 'bob.jobs' in vhost '/' refused for user 'alice'"
    );
    assert!(
        alice.status().connected(),
        "a permission failure closes only the channel"
    );

    // A user without write permission cannot publish; nothing is enqueued (no partial state).
    let guest = connect(&broker).await;
    let gch = channel(&guest).await;
    gch.queue_declare(
        "shared".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let reader = connect_as(&broker, "reader", "reader-pw", "/")
        .await
        .unwrap();
    let rch = channel(&reader).await;
    rch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirm = rch
        .basic_publish(
            "".into(),
            "shared".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        expect_code(confirm.await, 403),
        "ACCESS_REFUSED - access to exchange 'amq.default' in vhost '/' refused for user 'reader'"
    );
    let q = gch
        .queue_declare(
            "shared".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.message_count(), 0);
    // But it can read.
    let rch = channel(&reader).await;
    assert!(rch
        .basic_get("shared".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .is_none());
    // Binding needs write on the queue and read on the exchange.
    let ach = channel(&alice).await;
    let text = expect_code(
        ach.queue_bind(
            "alice.jobs".into(),
            "amq.direct".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await,
        403,
    );
    assert_eq!(
        text,
        "ACCESS_REFUSED - access to exchange 'amq.direct' in vhost '/' refused for user 'alice'"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vhost_access_and_bad_credentials() {
    let broker = start_broker_with(config()).await;
    // alice has no permissions in /staging: 530 on connection.open. Checked on a raw socket: lapin
    // 4.7.4's connect does not return when connection.open is answered with connection.close (pika and
    // amqp091-go report the 530).
    let mut raw = Raw::open(&broker, "alice", "alice-pw", "/staging", 0).await;
    let (code, text) = raw.expect_connection_close().await;
    assert_eq!(
        (code, text.as_str()),
        (
            530,
            "NOT_ALLOWED - access to vhost '/staging' refused for user 'alice'"
        )
    );
    let err = connect_as(&broker, "alice", "wrong", "/")
        .await
        .expect_err("bad password");
    assert_eq!(reply_code(&err), Some(403), "{err:?}");
    let err = connect_as(&broker, "mallory", "x", "/")
        .await
        .expect_err("unknown user");
    assert_eq!(reply_code(&err), Some(403), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_id_must_match_the_authenticated_user() {
    let broker = start_broker_with(config()).await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    ch.queue_declare(
        "uid".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.basic_publish(
        "".into(),
        "uid".into(),
        BasicPublishOptions::default(),
        b"ok",
        BasicProperties::default().with_user_id("guest".into()),
    )
    .await
    .unwrap();
    let m = ch
        .basic_get("uid".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        m.delivery.properties.user_id().as_ref().map(|u| u.as_str()),
        Some("guest")
    );
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirm = ch
        .basic_publish(
            "".into(),
            "uid".into(),
            BasicPublishOptions::default(),
            b"forged",
            BasicProperties::default().with_user_id("admin".into()),
        )
        .await
        .unwrap();
    assert_eq!(
        expect_code(confirm.await, 406),
        "PRECONDITION_FAILED - user_id property set to 'admin' but authenticated user was 'guest'"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_file_is_loaded_at_start() {
    let dir = std::env::temp_dir().join(format!("warren-defs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("definitions.json");
    // The shape `rabbitmqctl export_definitions` writes; bob's hash is RabbitMQ's for the password "guest".
    std::fs::write(
        &path,
        r#"{
          "rabbit_version": "3.10.8",
          "users": [{"name": "bob", "password_hash": "9/1i+jKFRpbTRV1PtRnzFFYibT3cEpP92JeZ8YKGtflf4e/u",
                     "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ["management"], "limits": {}},
                    {"name": "carol", "password_hash": "nBF+AtCKA0lzLqI31XXs679DADXBOdFYlh7V7UPrxKOEQUC9XTh+P2EPBzgZEOvkkPdbIe6jAfGomyA8Oa6qcZmxEJU=",
                     "hashing_algorithm": "rabbit_password_hashing_sha512", "tags": [], "limits": {}}],
          "vhosts": [{"name": "/prod", "limits": [], "metadata": {"description": ""}}],
          "permissions": [{"user": "bob", "vhost": "/prod", "configure": ".*", "write": ".*", "read": ".*"},
                          {"user": "carol", "vhost": "/prod", "configure": "", "write": "", "read": ".*"}],
          "topic_permissions": [],
          "parameters": [],
          "global_parameters": [],
          "policies": [{"vhost": "/prod", "name": "short-lived", "pattern": "^events\\.", "apply-to": "queues",
                        "definition": {"message-ttl": 100, "dead-letter-exchange": "", "dead-letter-routing-key": "events.dead"}, "priority": 0}],
          "queues": [{"name": "events.in", "vhost": "/prod", "durable": true, "auto_delete": false, "arguments": {"x-queue-type": "classic"}},
                     {"name": "orders", "vhost": "/prod", "durable": true, "auto_delete": false, "arguments": {"x-max-length": 1}}],
          "exchanges": [{"name": "orders-x", "vhost": "/prod", "type": "topic", "durable": true, "auto_delete": false, "internal": false, "arguments": {}}],
          "bindings": [{"source": "orders-x", "vhost": "/prod", "destination": "orders", "destination_type": "queue", "routing_key": "order.#", "arguments": {}}]
        }"#,
    )
    .unwrap();
    let config = Config {
        definitions: Some(path),
        ..Default::default()
    };
    let broker = start_broker_with(config).await;
    let bob = connect_as(&broker, "bob", "guest", "/prod")
        .await
        .expect("bob from definitions logs in");
    // carol's hash is rabbit_password_hashing_sha512 (salt ‖ SHA-512(salt ‖ "carol-pw")).
    connect_as(&broker, "carol", "carol-pw", "/prod")
        .await
        .expect("carol (SHA-512 hash) logs in");
    assert!(
        connect_as(&broker, "carol", "guest", "/prod")
            .await
            .is_err(),
        "a wrong password is refused"
    );
    let ch = channel(&bob).await;
    for key in ["order.created", "order.paid"] {
        ch.basic_publish(
            "orders-x".into(),
            key.into(),
            BasicPublishOptions::default(),
            key.as_bytes(),
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    // x-max-length 1 from the definition: only the newest stays.
    let m = ch
        .basic_get("orders".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("bound and routed");
    assert_eq!(m.delivery.data, b"order.paid");
    // The policy gives events.* a TTL and a dead-letter target, declared live.
    ch.queue_declare(
        "events.dead".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.basic_publish(
        "".into(),
        "events.in".into(),
        BasicPublishOptions::default(),
        b"e",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    // The policy's TTL dead-lettered the message.
    let dead = wait_get(&ch, "events.dead", true).await;
    assert_eq!(dead.delivery.data, b"e");
    // guest has no permissions in /prod.
    let mut raw = Raw::open(&broker, "guest", "guest", "/prod", 0).await;
    assert_eq!(raw.expect_connection_close().await.0, 530);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_policies_apply_to_new_queues_and_exchanges() {
    let mut config = Config::default();
    let policy = |name: &str, pattern: &str, apply_to: &str, def: serde_json::Value| {
        warren::config::Policy {
            vhost: "/".into(),
            name: name.into(),
            pattern: pattern.into(),
            apply_to: apply_to.into(),
            definition: def.as_object().cloned().unwrap(),
            priority: 0,
        }
    };
    config.policies.push(policy(
        "cap",
        "^capped$",
        "queues",
        serde_json::json!({"max-length": 2}),
    ));
    config.policies.push(policy(
        "ae",
        "^with-ae$",
        "exchanges",
        serde_json::json!({"alternate-exchange": "catch-all"}),
    ));
    let broker = start_broker_with(config).await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    ch.queue_declare(
        "capped".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    for b in ["1", "2", "3"] {
        ch.basic_publish(
            "".into(),
            "capped".into(),
            BasicPublishOptions::default(),
            b.as_bytes(),
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    let q = ch
        .queue_declare(
            "capped".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.message_count(), 2);
    ch.exchange_declare(
        "catch-all".into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_declare(
        "with-ae".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        "caught".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        "caught".into(),
        "catch-all".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.basic_publish(
        "with-ae".into(),
        "nowhere".into(),
        BasicPublishOptions::default(),
        b"x",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    assert!(ch
        .basic_get("caught".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .is_some());
    let _ = AMQPValue::Void;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_is_refused_at_start() {
    let mut config = Config::default();
    config.permissions.push(perm("guest", "/", "(", ".*", ".*"));
    assert!(warren::broker::Broker::new(config).is_err());
    let config = Config {
        definitions: Some("/nonexistent/definitions.json".into()),
        ..Default::default()
    };
    let err = warren::broker::Broker::new(config).unwrap_err();
    assert!(
        format!("{err:#}").contains("reading definitions"),
        "{err:#}"
    );
}
