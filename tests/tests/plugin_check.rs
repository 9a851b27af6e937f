//! `warren plugin check FILE.wasm` on real files (the real binary, the fixtures of `plugins/` built as
//! components): what it reports for a good plugin, an old-package plugin, a core module, a truncated
//! file, a component of another world and a missing file, with exact output lines and exit codes;
//! and a refusal's reason is the one the broker logs for the same file.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::process::{binary, Process};
use warren_tests::plugins;

/// (exit code, standard output, standard error) of `warren plugin check file`.
fn check(file: &Path) -> (i32, String, String) {
    let out = Command::new(binary())
        .args(["plugin", "check"])
        .arg(file)
        .output()
        .expect("run warren plugin check");
    (
        out.status.code().expect("exit code"),
        String::from_utf8(out.stdout).expect("utf-8"),
        String::from_utf8(out.stderr).expect("utf-8"),
    )
}

/// The value of the report line `key:`.
fn field<'a>(report: &'a str, key: &str) -> &'a str {
    report
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no '{key}:' line in:\n{report}"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("warren-check-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

#[test]
fn a_good_plugin_is_accepted_with_what_it_is() {
    let (code, out, _) = check(Path::new(plugins::X_CONSISTENT_HASH));
    assert_eq!(code, 0, "{out}");
    let size = std::fs::metadata(plugins::X_CONSISTENT_HASH).unwrap().len();
    assert_eq!(field(&out, "size"), format!("{size} octets"));
    assert_eq!(field(&out, "sha256").len(), 64);
    assert!(field(&out, "compile").ends_with(" ms"), "{out}");
    assert_eq!(field(&out, "kind"), "exchange");
    assert_eq!(field(&out, "name"), "x-consistent-hash");
    assert_eq!(field(&out, "version"), "0.1.0");
    assert_eq!(
        field(&out, "package"),
        "warren:plugin@0.4.0 (world exchange-plugin)"
    );
    assert_eq!(field(&out, "exports"), "warren:plugin/exchange@0.4.0");
    assert!(
        field(&out, "imports").starts_with("warren:plugin/types@0.4.0, wasi:io/poll@0.2"),
        "{out}"
    );
    assert_eq!(
        field(&out, "result"),
        "accepted: the broker loads it as exchange type 'x-consistent-hash'"
    );
    // The other kinds.
    let (code, out, _) = check(Path::new(plugins::MATCH_FILTER));
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        field(&out, "package"),
        "warren:plugin@0.4.0 (world filter-plugin)"
    );
    assert!(field(&out, "result").starts_with("accepted: the broker loads it as consumer filter '"));
    let (code, out, _) = check(Path::new(plugins::IDEMPOTENCY_KEY));
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        field(&out, "package"),
        "warren:plugin@0.4.0 (world idempotency-plugin)"
    );
}

#[test]
fn an_old_package_plugin_is_accepted_as_such() {
    let (code, out, _) = check(Path::new(plugins::V0_1_EXCHANGE));
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        field(&out, "package"),
        "warren:plugin@0.1.0 (world exchange-plugin)"
    );
    assert_eq!(field(&out, "exports"), "warren:plugin/exchange@0.1.0");
    assert_eq!(
        field(&out, "result"),
        "accepted: the broker loads it as exchange type 'x-v01-direct'"
    );
    // The released 0.2.0 package (no message-run, no route-messages) too.
    let (code, out, _) = check(Path::new(plugins::DISAGREE));
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        field(&out, "package"),
        "warren:plugin@0.2.0 (world exchange-plugin)"
    );
    assert_eq!(field(&out, "exports"), "warren:plugin/exchange@0.2.0");
}

#[test]
fn broken_files_are_refused_with_a_reason() {
    let dir = scratch("broken");
    let core = dir.join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let (code, out, _) = check(&core);
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        field(&out, "result"),
        "refused: not a valid WebAssembly component (truncated, or a core module?): failed to \
         parse WebAssembly module: attempted to parse a wasm module with a component parser"
    );
    assert!(!out.contains("kind:"), "{out}");
    let truncated = dir.join("truncated.wasm");
    let full = std::fs::read(plugins::X_RANDOM).unwrap();
    std::fs::write(&truncated, &full[..1000]).unwrap();
    let (code, out, _) = check(&truncated);
    assert_eq!(code, 1, "{out}");
    assert!(
        field(&out, "result").starts_with(
            "refused: not a valid WebAssembly component (truncated, or a core module?): failed to \
             parse WebAssembly module: unexpected end-of-file"
        ),
        "{out}"
    );
    assert_eq!(field(&out, "size"), "1000 octets");
    let (code, out, _) = check(Path::new(plugins::OTHER_WORLD));
    assert_eq!(code, 1, "{out}");
    assert_eq!(field(&out, "exports"), "warren:plugin/exchange@9.0.0");
    assert!(
        field(&out, "result").starts_with(
            "refused: targets no world this broker accepts (a component of world exchange-plugin, \
             filter-plugin or idempotency-plugin of warren:plugin@0.4.0, warren:plugin@0.3.0, \
             warren:plugin@0.2.0 or warren:plugin@0.1.0); it \
             exports warren:plugin/exchange@9.0.0 and imports wasi:io/poll@0.2"
        ),
        "{out}"
    );
    let (code, out, _) = check(Path::new(plugins::TRAP_ON_LOAD));
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        field(&out, "result"),
        "refused: failed to initialise and describe itself: trap: wasm trap: wasm `unreachable` \
         instruction executed"
    );
    let (code, out, err) = check(&dir.join("missing.wasm"));
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(
        err.starts_with("warren plugin check: cannot read "),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_refusal_gives_the_reason_the_broker_logs() {
    let dir = scratch("broker");
    let plugin_dir = dir.join("plugins");
    std::fs::create_dir_all(&plugin_dir).unwrap();
    std::fs::copy(plugins::OTHER_WORLD, plugin_dir.join("other-world.wasm")).unwrap();
    let log = dir.join("broker.log");
    let broker = Process::start_logged(&dir.join("data"), &plugin_dir, &log);
    let deadline = Instant::now() + Duration::from_secs(20);
    let logged = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("plugin refused")) {
            break line.to_owned();
        }
        assert!(Instant::now() < deadline, "no refusal logged:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    broker.kill();
    let (code, out, _) = check(&plugin_dir.join("other-world.wasm"));
    assert_eq!(code, 1);
    let reason = field(&out, "result").strip_prefix("refused: ").unwrap();
    let logged_reason = logged
        .split_once("previous version (if any) kept: ")
        .map(|(_, r)| r)
        .unwrap_or_else(|| panic!("unexpected log line: {logged}"));
    assert!(
        logged_reason.starts_with(reason),
        "check: {reason}\nbroker: {logged_reason}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
