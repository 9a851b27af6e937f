//! Shared helpers: start a broker on an ephemeral port, connect lapin, read reply codes, take deliveries.
#![allow(dead_code, unreachable_pub)] // each test binary uses a different subset

pub mod process;
pub mod raw;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use warren::broker::Broker;
use warren::config::Config;
use warren::server;

/// A broker running in this test's runtime; stopped (gracefully) on drop.
pub struct TestBroker {
    pub addr: SocketAddr,
    pub broker: Arc<Broker>,
    shutdown: Option<oneshot::Sender<()>>,
    pub done: Option<tokio::task::JoinHandle<()>>,
}

impl TestBroker {
    pub fn uri(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    /// Triggers graceful shutdown and waits for the server to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(done) = self.done.take() {
            done.await.expect("server task");
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub async fn start_broker() -> TestBroker {
    start_broker_with(Config::default()).await
}

pub async fn start_broker_with(config: Config) -> TestBroker {
    // WARREN_TEST_LOG=debug (a tracing filter) shows the broker's log in test output.
    if let Ok(filter) = std::env::var("WARREN_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let broker = Arc::new(Broker::new(config).expect("broker config"));
    // Plugins load in the background; tests read the plugin snapshot right after start.
    broker.plugins.wait_initial_load();
    let (tx, rx) = oneshot::channel();
    let done = tokio::spawn(server::run(vec![listener], Arc::clone(&broker), async {
        let _ = rx.await;
    }));
    TestBroker {
        addr,
        broker,
        shutdown: Some(tx),
        done: Some(done),
    }
}

/// Another client can still declare a queue: the broker survived.
pub async fn assert_broker_serves(broker: &TestBroker) {
    let conn = connect(broker).await;
    channel(&conn)
        .await
        .queue_declare(
            "still-alive".into(),
            lapin::options::QueueDeclareOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("broker still serves");
}

pub async fn connect(broker: &TestBroker) -> Connection {
    Connection::connect(&broker.uri(), ConnectionProperties::default())
        .await
        .expect("connect")
}

pub async fn channel(conn: &Connection) -> Channel {
    conn.create_channel().await.expect("create channel")
}

/// The AMQP reply code carried by a lapin error, if it is a protocol error.
pub fn reply_code(err: &lapin::Error) -> Option<u16> {
    match err.kind() {
        lapin::ErrorKind::ProtocolError(e) => Some(e.get_id()),
        _ => None,
    }
}

/// The AMQP reply text carried by a lapin error.
pub fn reply_text(err: &lapin::Error) -> String {
    match err.kind() {
        lapin::ErrorKind::ProtocolError(e) => e.get_message().to_string(),
        other => format!("{other:?}"),
    }
}

/// Asserts that `result` failed with AMQP reply `code`; returns the reply text.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(result: Result<T, lapin::Error>, code: u16) -> String {
    match result {
        Ok(v) => panic!("expected reply {code}, got Ok({v:?})"),
        Err(e) => {
            assert_eq!(reply_code(&e), Some(code), "error was {e:?}");
            reply_text(&e)
        }
    }
}

pub const WAIT: Duration = Duration::from_secs(5);

/// The next delivery, failing the test after 5 s.
pub async fn next(consumer: &mut Consumer) -> Delivery {
    tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("timed out waiting for a delivery")
        .expect("consumer ended")
        .expect("delivery error")
}

/// Asserts nothing arrives on `consumer` within `dur`.
pub async fn expect_silence(consumer: &mut Consumer, dur: Duration) {
    if let Ok(Some(d)) = tokio::time::timeout(dur, consumer.next()).await {
        panic!(
            "unexpected delivery: {:?}",
            d.map(|d| String::from_utf8_lossy(&d.data).into_owned())
        );
    }
}

/// Polls `queue` with basic.get until a message arrives (dead-lettering, expiry and requeues after a
/// connection drops are asynchronous); fails the test after 5 s.
pub async fn wait_get(ch: &Channel, queue: &str, no_ack: bool) -> lapin::message::BasicGetMessage {
    tokio::time::timeout(WAIT, async {
        loop {
            let got = ch
                .basic_get(queue.into(), lapin::options::BasicGetOptions { no_ack })
                .await
                .expect("basic.get");
            if let Some(m) = got {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("nothing arrived on {queue}"))
}

/// Ready messages in `queue` (passive queue.declare).
pub async fn message_count(ch: &Channel, queue: &str) -> u32 {
    ch.queue_declare(
        queue.into(),
        lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        lapin::types::FieldTable::default(),
    )
    .await
    .expect("passive queue.declare")
    .message_count()
}

/// A fresh plugin directory holding copies of `files` ((built component path, file name)); removed on
/// drop.
pub struct PluginDir(pub std::path::PathBuf);

impl PluginDir {
    pub fn with(name: &str, files: &[(&str, &str)]) -> PluginDir {
        let dir = std::env::temp_dir().join(format!(
            "warren-plugins-{}-{name}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("plugin dir");
        let d = PluginDir(dir);
        for (src, file) in files {
            d.install(src, file);
        }
        d
    }

    /// Copies the component at `src` into the directory as `file`.
    pub fn install(&self, src: &str, file: &str) {
        std::fs::copy(src, self.0.join(file)).expect("copy plugin");
    }

    pub fn path(&self, file: &str) -> std::path::PathBuf {
        self.0.join(file)
    }

    /// A default config with this plugin directory.
    pub fn config(&self) -> Config {
        Config {
            plugin_dir: Some(self.0.clone()),
            ..Config::default()
        }
    }
}

impl Drop for PluginDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The broker's status of the plugin named `name` (exchange type or filter / idempotency name).
pub fn plugin_status(b: &TestBroker, name: &str) -> Option<warren::plugin::PluginStatus> {
    b.broker
        .plugins
        .snapshot()
        .into_iter()
        .find(|s| s.name == name)
}
