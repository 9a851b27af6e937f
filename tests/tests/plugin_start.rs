//! Fast start with a large plugin: the real binary serves AMQP while a componentize-py plugin
//! (~18 MB, seconds to compile) compiles in the background; the compiled component is cached in the
//! data directory, so the next start loads it in milliseconds; each file is compiled once per start.
//! Alone in its test binary: the timing bound must not share the two cores with other tests.
//!
//! Builds the Python fixture `plugins/python/py-direct` with componentize-py (`scripts/test.sh`
//! installs it into `tests/python/.venv`).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::process::Process;
use common::PluginDir;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};

/// Builds the Python exchange plugin `x-py-direct` into `out`.
fn build_python_plugin(out: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = std::process::Command::new("bash")
        .arg(root.join("plugins/python/build.sh"))
        .arg(root.join("plugins/python/py-direct"))
        .arg(out)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run plugins/python/build.sh");
    assert!(
        status.success(),
        "building the Python fixture failed ({status}); scripts/test.sh installs componentize-py"
    );
}

/// The lines of the broker's log that report a version of `x-py-direct` loaded.
fn load_lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("plugin loaded") && l.contains("plugin=x-py-direct"))
        .map(str::to_owned)
        .collect()
}

/// Waits (up to 60 s: a debug build compiles the component in ~10 s) for a load line; fails at once
/// with the broker's reason when it refused the plugin.
async fn until_loaded(log: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(l) = load_lines(log).into_iter().next() {
            return l;
        }
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(refused) = text.lines().find(|l| l.contains("plugin refused")) {
            panic!("the broker refused the plugin: {refused}");
        }
        assert!(Instant::now() < deadline, "plugin never loaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts the broker and times it to a full AMQP handshake plus a queue.declare round trip.
async fn start_and_answer(
    data: &Path,
    plugins: &Path,
    log: &Path,
) -> (Process, Connection, Duration) {
    let started = Instant::now();
    let p = Process::start_logged(data, plugins, log);
    let conn = p.connect().await;
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(
        "probe".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue.declare");
    (p, conn, started.elapsed())
}

/// Publishes to `exchange` with `key` until the confirm is an ack (a recovered plugin exchange is
/// unavailable until its plugin is loaded), up to 60 s.
async fn publish_until_routed(ch: &Channel, exchange: &str, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let confirm = ch
            .basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions::default(),
                b"m",
                BasicProperties::default(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        if confirm.is_ack() {
            return;
        }
        assert!(Instant::now() < deadline, "never routed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let at = line.find(&format!("{name}="))? + name.len() + 1;
    line[at..].split_whitespace().next()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_plugin_compiles_in_the_background_once_and_is_cached_for_the_next_start() {
    let dir = PluginDir::with("start", &[]);
    build_python_plugin(&dir.path("py-direct.wasm"));
    let data = std::env::temp_dir().join(format!("warren-start-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let log1 = data.with_extension("1.log");
    let log2 = data.with_extension("2.log");

    // First start: nothing cached. AMQP answers while the plugin compiles.
    let (p, conn, answered) = start_and_answer(&data, &dir.0, &log1).await;
    let compiling = load_lines(&log1).is_empty();
    println!("first start: AMQP answered after {answered:?} (plugin still compiling: {compiling})");
    assert!(
        answered < Duration::from_secs(2),
        "AMQP answered after {answered:?}"
    );
    assert!(
        compiling,
        "the plugin had loaded already: nothing shows AMQP was served meanwhile"
    );
    // A declare of the type waits for the initial load instead of failing.
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    ch.exchange_declare(
        "py".into(),
        ExchangeKind::Custom("x-py-direct".into()),
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare while the plugin compiles");
    ch.queue_declare(
        "py-q".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("queue.declare");
    ch.queue_bind(
        "py-q".into(),
        "py".into(),
        "k".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue.bind");
    publish_until_routed(&ch, "py", "k").await;
    let first = until_loaded(&log1).await;
    println!("first start: {first}");
    assert_eq!(field(&first, "cache"), Some("miss"), "{first}");
    drop(conn);
    // Graceful or not, the cache entry was written when the plugin loaded.
    p.kill();
    let lines = load_lines(&log1);
    assert_eq!(lines.len(), 1, "compiled once: {lines:#?}");

    // Second start: the compiled plugin comes from the cache.
    let (p, conn, answered) = start_and_answer(&data, &dir.0, &log2).await;
    println!("second start: AMQP answered after {answered:?}");
    assert!(
        answered < Duration::from_secs(2),
        "AMQP answered after {answered:?}"
    );
    let second = until_loaded(&log2).await;
    println!("second start: {second}");
    assert_eq!(field(&second, "cache"), Some("hit"), "{second}");
    let ms: u64 = field(&second, "compile_ms")
        .and_then(|v| v.parse().ok())
        .expect("compile_ms");
    let first_ms: u64 = field(&first, "compile_ms")
        .and_then(|v| v.parse().ok())
        .expect("compile_ms");
    assert!(
        ms < first_ms,
        "cache hit took {ms} ms, the compile {first_ms} ms"
    );
    // The recovered exchange routes through the cached plugin.
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    publish_until_routed(&ch, "py", "k").await;
    let lines = load_lines(&log2);
    assert_eq!(lines.len(), 1, "loaded once: {lines:#?}");
    drop(conn);
    drop(p);

    // Instantiation has its own budget: with a 1 ms call timeout the plugin still loads (its
    // instantiation and describe take milliseconds; CI once refused it at the 100 ms call timeout).
    let log3 = data.with_extension("3.log");
    let p = Process::start_logged_with(&data, &dir.0, &log3, Some("plugin_call_timeout = 1\n"));
    let third = until_loaded(&log3).await;
    println!("third start (1 ms call timeout): {third}");
    drop(p);
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_file(data.with_extension("toml"));
    for log in [&log1, &log2, &log3] {
        let _ = std::fs::remove_file(log);
    }
}
