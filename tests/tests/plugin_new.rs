//! `warren plugin new` end to end, as an author meets it: the README's "Write a plugin" block run as
//! it stands (new → cargo test → cargo build → check → test → copy) with a real broker loading the
//! copy and routing through it from lapin; then the filter and idempotency templates, each through
//! its own `cargo test`, a wasm build, `warren plugin check` and `warren plugin test`.
//!
//! The block runs in a scratch "repository root" whose `target/release/warren` is the binary under
//! test (the README says `scripts/run.sh` built it) and whose `warren-plugins/` the broker watches,
//! with `HOME` pointed at a scratch directory (so `~/x-prefix` is created there; cargo and rustup keep
//! their real homes). Needs the `wasm32-wasip2` target (`scripts/test.sh` adds it).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::process::{binary, Process};
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, ExchangeKind};

/// The README's `sh` block under "### Write a plugin".
fn readme_block() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md");
    let section = &readme[readme.find("### Write a plugin").expect("the section")..];
    let start = section.find("```sh\n").expect("a sh block") + "```sh\n".len();
    let end = start + section[start..].find("```").expect("the block's end");
    section[start..end].to_owned()
}

/// The real cargo and rustup homes, so that commands run with a scratch `HOME` keep the toolchain.
fn tool_homes() -> Vec<(&'static str, PathBuf)> {
    let home = PathBuf::from(std::env::var("HOME").expect("HOME"));
    let var =
        |name: &str, default: PathBuf| std::env::var(name).map(PathBuf::from).unwrap_or(default);
    vec![
        ("CARGO_HOME", var("CARGO_HOME", home.join(".cargo"))),
        ("RUSTUP_HOME", var("RUSTUP_HOME", home.join(".rustup"))),
    ]
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "warren-plugin-new-{}-{name}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Runs `program args…` in `dir` with `HOME` = `home`; panics with its output unless it succeeds.
fn run(dir: &Path, home: &Path, target: Option<&Path>, program: &str, args: &[&str]) -> String {
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(dir).env("HOME", home);
    for (k, v) in tool_homes() {
        cmd.env(k, v);
    }
    match target {
        Some(t) => cmd.env("CARGO_TARGET_DIR", t),
        None => cmd.env_remove("CARGO_TARGET_DIR"),
    };
    let out = cmd.output().expect("run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{program} {args:?} in {} failed ({}):\n{text}",
        dir.display(),
        out.status
    );
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_sequence_and_each_template_build_test_and_load() {
    // The README's block, verbatim.
    let root = scratch("root");
    let home = scratch("home");
    std::fs::create_dir_all(root.join("target/release")).unwrap();
    std::os::unix::fs::symlink(binary(), root.join("target/release/warren")).unwrap();
    std::fs::create_dir_all(root.join("warren-plugins")).unwrap();
    let block = readme_block();
    let out = run(
        &root,
        &home,
        None,
        "bash",
        &["-euo", "pipefail", "-c", &block],
    );
    println!("{out}");
    assert!(
        out.contains("test result: ok. 2 passed"),
        "cargo test ran the template's tests: {out}"
    );
    assert!(
        out.contains("result:      accepted: the broker loads it as exchange type 'x-prefix'"),
        "{out}"
    );
    assert!(
        out.contains("message 0 'abc': route -> 0 'a', 1 'ab'\nmessage 1 'b': route -> no binding\nroute-keys over the 2 keys: agrees with route\n"),
        "{out}"
    );
    let installed = root.join("warren-plugins/x_prefix.wasm");
    assert!(installed.is_file(), "the block copied the plugin");

    // A broker with that plugin directory routes through the plugin.
    let data = scratch("data");
    let log = root.join("broker.log");
    let broker = Process::start_logged(&data, &root.join("warren-plugins"), &log);
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.expect("channel");
    // The broker compiles the plugin in the background at start; a declare waits for that load.
    if let Err(e) = ch
        .exchange_declare(
            "prefixes".into(),
            ExchangeKind::Custom("x-prefix".into()),
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
    {
        panic!(
            "declare x-prefix: {e}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    for (queue, key) in [("q-orders", "orders"), ("q-eu", "orders.eu")] {
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_bind(
            queue.into(),
            "prefixes".into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    for key in ["orders.eu.paid", "orders.us", "invoices"] {
        ch.basic_publish(
            "prefixes".into(),
            key.into(),
            BasicPublishOptions::default(),
            key.as_bytes(),
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    let bodies = |queue: &'static str| {
        let ch = ch.clone();
        async move {
            let mut consumer = ch
                .basic_consume(
                    queue.into(),
                    "".into(),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .unwrap();
            let mut got = Vec::new();
            while let Ok(Some(Ok(d))) =
                tokio::time::timeout(Duration::from_millis(500), consumer.next()).await
            {
                got.push(String::from_utf8(d.data).unwrap());
            }
            got
        }
    };
    assert_eq!(bodies("q-orders").await, ["orders.eu.paid", "orders.us"]);
    assert_eq!(bodies("q-eu").await, ["orders.eu.paid"]);
    drop(conn);
    drop(broker);

    // The other two templates, sharing the compiled dependencies of the first.
    let target = home.join("x-prefix/target");
    let warren = binary();
    let warren = warren.to_str().unwrap();
    for (kind, name, accepted, input, expected) in [
        (
            "filter",
            "by-type",
            "consumer filter 'by-type' (x-filter)",
            "arguments = { type = \"order.paid\" }\n\
             [[messages]]\nrouting_key = \"a\"\nproperties = { type = \"order.paid\" }\n\
             [[messages]]\nrouting_key = \"b\"\nproperties = { type = \"order.created\" }\n",
            "init: ok\nmessage 0 'a': deliver\nmessage 1 'b': skip\n",
        ),
        (
            "idempotency",
            "by-key",
            "idempotency plugin 'by-key' (x-idempotency)",
            "messages = [\"plain\", { routing_key = \"h\", headers = { x-idempotency-key = \"order-7\" } }, \
             { routing_key = \"m\", properties = { message-id = \"m-1\" } }]\n",
            "init: ok\nmessage 0 'plain': no key\nmessage 1 'h': key 'order-7'\nmessage 2 'm': key 'm-1'\n",
        ),
    ] {
        run(&home, &home, None, warren, &["plugin", "new", "--kind", kind, name]);
        let dir = home.join(name);
        let tested = run(&dir, &home, Some(&target), "cargo", &["test"]);
        assert!(tested.contains("test result: ok. 2 passed"), "{tested}");
        run(
            &dir,
            &home,
            Some(&target),
            "cargo",
            &["build", "--release", "--target", "wasm32-wasip2"],
        );
        let wasm = target
            .join("wasm32-wasip2/release")
            .join(format!("{}.wasm", name.replace('-', "_")));
        let wasm = wasm.to_str().unwrap();
        let checked = run(&dir, &home, None, warren, &["plugin", "check", wasm]);
        assert!(
            checked.contains(&format!(
                "result:      accepted: the broker loads it as {accepted}\n"
            )),
            "{checked}"
        );
        std::fs::write(dir.join("trial.toml"), input).unwrap();
        let trial = run(
            &dir,
            &home,
            None,
            warren,
            &["plugin", "test", wasm, "--input", "trial.toml"],
        );
        assert_eq!(
            trial,
            format!("{kind} plugin '{name}' 0.1.0 (warren:plugin@0.4.0)\n{expected}")
        );
    }
    for dir in [&root, &home, &data] {
        let _ = std::fs::remove_dir_all(dir);
    }
}
