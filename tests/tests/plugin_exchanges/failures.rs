//! Containment: faulty, removed, broken and repeatedly failing plugins, and the exchange failure
//! policy (alternate exchange, basic.return, confirm nack).

use super::*;
use warren::plugin::health::QUARANTINE_FAILURES;
use warren::plugin::registry::QUARANTINE_ENTITIES;

#[tokio::test]
async fn faulty_plugins_are_contained_with_the_failure_policy() {
    let dir = PluginDir::with(
        "faulty",
        &[
            (plugins::FAULTY, "faulty.wasm"),
            (plugins::X_RANDOM, "random.wasm"),
        ],
    );
    let b = start_broker_with(dir.config()).await;
    let conn = connect(&b).await;
    let ch = confirm_channel(&conn).await;
    declare_exchange(&ch, "healthy", "x-random", FieldTable::default()).await;
    bind_queues(&ch, "healthy", &["healthy-q"], "").await;
    ch.exchange_declare(
        "ae".into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare ae");
    bind_queues(&ch, "ae", &["ae-q"], "").await;

    for fault in ["loop", "panic", "alloc"] {
        let x = format!("faulty-{fault}");
        declare_exchange(&ch, &x, "x-faulty", args(&[("fault", text(fault))])).await;
        bind_queues(&ch, &x, &[&format!("{x}-q")], "").await;
        let started = Instant::now();
        // The fault: the publisher sees a nack (unroutable by failure), not a hang or a crash.
        assert!(
            !confirmed(&ch, &x, "fail", false).await,
            "{fault}: a faulted route must be nacked"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{fault}: contained promptly ({:?})",
            started.elapsed()
        );
        // The same exchange routes again once the instance is replaced.
        assert!(
            confirmed(&ch, &x, "ok", false).await,
            "{fault}: instance replaced"
        );
        // Every other exchange is unaffected.
        assert!(confirmed(&ch, "healthy", "k", false).await);
        // With an alternate exchange the failed message goes there instead (acked).
        let with_ae = format!("{x}-ae");
        declare_exchange(
            &ch,
            &with_ae,
            "x-faulty",
            args(&[("fault", text(fault)), ("alternate-exchange", text("ae"))]),
        )
        .await;
        assert!(confirmed(&ch, &with_ae, "fail", false).await);
    }
    assert_eq!(message_count(&ch, "healthy-q").await, 3);
    assert_eq!(message_count(&ch, "ae-q").await, 3);
    for fault in ["loop", "panic", "alloc"] {
        assert_eq!(message_count(&ch, &format!("faulty-{fault}-q")).await, 1);
    }

    // Mandatory + failure: basic.return (312 NO_ROUTE) with the message, and a nack.
    let confirmation = ch
        .basic_publish(
            "faulty-panic".into(),
            "fail".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"returned",
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirmation.is_nack());
    let returned = confirmation.take_message().expect("basic.return");
    assert_eq!(returned.reply_code, 312);
    assert_eq!(returned.data, b"returned");

    // Counted: the snapshot shows traps, timeouts and memory breaches for x-faulty.
    let status: HashMap<String, warren::plugin::PluginStatus> = b
        .broker
        .plugins
        .snapshot()
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect();
    let faulty = &status["x-faulty"];
    assert!(faulty.timeouts >= 2, "{faulty:?}");
    assert!(faulty.traps >= 3, "{faulty:?}");
    assert!(faulty.memory >= 2, "{faulty:?}");
    assert_eq!(faulty.state, "loaded");
    assert_eq!(status["x-random"].traps, 0);
}

#[tokio::test]
async fn removed_plugin_leaves_exchanges_unavailable_until_it_returns() {
    let dir = PluginDir::with("remove", &[(plugins::X_RANDOM, "random.wasm")]);
    let b = start_broker_with(dir.config()).await;
    let conn = connect(&b).await;
    let ch = confirm_channel(&conn).await;
    declare_exchange(&ch, "rx", "x-random", FieldTable::default()).await;
    bind_queues(&ch, "rx", &["rx-q"], "").await;
    assert!(confirmed(&ch, "rx", "k", false).await);

    std::fs::remove_file(dir.path("random.wasm")).expect("remove");
    let deadline = Instant::now() + WAIT;
    while b.broker.plugins.snapshot()[0].state != "unavailable" {
        assert!(Instant::now() < deadline, "removal not noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Declared exchanges stay, publishes through them fail per the policy (nack) …
    assert!(!confirmed(&ch, "rx", "k", false).await);
    ch.exchange_declare(
        "rx".into(),
        kind("x-random"),
        ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("still declared");
    // … and new declares of the type are refused (503 closes the connection).
    let other = connect(&b).await;
    let och = channel(&other).await;
    expect_code(
        och.exchange_declare(
            "rx2".into(),
            kind("x-random"),
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await,
        503,
    );

    // The plugin returns: the exchange routes again, with its bindings replayed.
    dir.install(plugins::X_RANDOM, "random.wasm");
    let deadline = Instant::now() + WAIT;
    loop {
        if confirmed(&ch, "rx", "k", false).await {
            break;
        }
        assert!(Instant::now() < deadline, "plugin did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(message_count(&ch, "rx-q").await, 2);
}

/// A plugin whose instance needs more than the memory cap breaches it once: the plugin's cap is
/// doubled (up to `plugin_memory_ceiling`), and its next instances work; one that needs more than the
/// ceiling keeps breaching there.
#[tokio::test]
async fn the_memory_cap_grows_after_a_breach_up_to_the_ceiling() {
    let dir = PluginDir::with("grow", &[(plugins::FAULTY, "faulty.wasm")]);
    let b = start_broker_with(dir.config()).await;
    let conn = connect(&b).await;
    let ch = confirm_channel(&conn).await;
    declare_exchange(&ch, "big", "x-faulty", args(&[("fault", text("alloc"))])).await;
    bind_queues(&ch, "big", &["big-q"], "").await;
    let status = || plugin_status(&b, "x-faulty").expect("loaded");
    assert_eq!(status().memory_cap, 64 << 20);
    // 80 MiB: past the 64 MiB cap, within 128 MiB.
    assert!(!confirmed(&ch, "big", "grow", false).await, "first breach");
    assert_eq!((status().memory, status().memory_cap), (1, 128 << 20));
    for _ in 0..3 {
        assert!(
            confirmed(&ch, "big", "grow", false).await,
            "within the raised cap"
        );
    }
    assert_eq!(status().memory, 1);
    // 1 GiB: breaches at 128 MiB, then at the 256 MiB ceiling, and stays there.
    for _ in 0..3 {
        assert!(!confirmed(&ch, "big", "fail", false).await);
    }
    assert_eq!((status().memory, status().memory_cap), (4, 256 << 20));
    assert_eq!(message_count(&ch, "big-q").await, 3);
}

/// A refusal says what the component is and what this broker accepts: a component of another
/// package version names its exports; garbage says it is no component.
#[test]
fn refusals_say_what_the_component_is_and_what_is_accepted() {
    use warren::plugin::engine::Runtime;
    use warren::plugin::loader;
    let runtime = Runtime::new(warren::plugin::Limits::default()).expect("runtime");
    let refusal = |file: &str, bytes: &[u8]| {
        format!(
            "{:#}",
            loader::load(&runtime, Path::new(file), bytes, None).expect_err("refused")
        )
    };
    let other = refusal(
        "other-world.wasm",
        &std::fs::read(plugins::OTHER_WORLD).expect("read"),
    );
    assert!(
        other.contains("targets no world this broker accepts")
            && other.contains("warren:plugin@0.2.0 or warren:plugin@0.1.0")
            && other.contains("it exports warren:plugin/exchange@9.0.0"),
        "{other}"
    );
    let garbage = refusal("garbage.wasm", b"\0asm this is not a component");
    assert!(
        garbage.contains("not a valid WebAssembly component"),
        "{garbage}"
    );
}

#[tokio::test]
async fn broken_files_are_refused_and_the_broker_keeps_serving() {
    let dir = PluginDir::with("broken", &[(plugins::X_RANDOM, "random.wasm")]);
    std::fs::write(dir.path("garbage.wasm"), b"\0asm this is not a component").expect("write");
    let full = std::fs::read(plugins::X_CONSISTENT_HASH).expect("read");
    std::fs::write(dir.path("truncated.wasm"), &full[..full.len() / 2]).expect("write");
    std::fs::copy(plugins::OTHER_WORLD, dir.path("other-world.wasm")).expect("copy");
    std::fs::copy(plugins::TRAP_ON_LOAD, dir.path("trap-on-load.wasm")).expect("copy");
    let b = start_broker_with(dir.config()).await;
    let names: Vec<String> = b
        .broker
        .plugins
        .snapshot()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["x-random"], "only the valid plugin loaded");
    let conn = connect(&b).await;
    let ch = confirm_channel(&conn).await;
    declare_exchange(&ch, "still", "x-random", FieldTable::default()).await;
    bind_queues(&ch, "still", &["still-q"], "").await;
    assert!(confirmed(&ch, "still", "k", false).await);
    // A plugin that traps while loading, copied over a loaded one, keeps the old version too.
    std::fs::copy(plugins::TRAP_ON_LOAD, dir.path("random.wasm")).expect("copy");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(confirmed(&ch, "still", "k", false).await);
    // A broken copy over a loaded plugin keeps the old version.
    std::fs::write(dir.path("random.wasm"), b"broken").expect("write");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(confirmed(&ch, "still", "k", false).await);
    assert_eq!(b.broker.plugins.snapshot()[0].state, "loaded");
}

/// Drives `x-faulty` (from a fresh plugin directory) into quarantine: [`QUARANTINE_ENTITIES`]
/// exchanges `{prefix}-0`, `{prefix}-1`, … that panic on routing key `fail` are each quarantined by a
/// run of failures. Returns the directory, the broker, and a confirm channel on an open connection.
async fn quarantined(prefix: &str) -> (PluginDir, TestBroker, lapin::Connection, Channel) {
    let dir = PluginDir::with(prefix, &[(plugins::FAULTY, "faulty.wasm")]);
    let b = start_broker_with(dir.config()).await;
    let conn = connect(&b).await;
    let ch = confirm_channel(&conn).await;
    for i in 0..QUARANTINE_ENTITIES {
        let x = format!("{prefix}-{i}");
        declare_exchange(&ch, &x, "x-faulty", args(&[("fault", text("panic"))])).await;
        bind_queues(&ch, &x, &[&format!("{x}-q")], "").await;
        for _ in 0..QUARANTINE_FAILURES {
            assert!(!confirmed(&ch, &x, "fail", false).await);
        }
        assert_eq!(
            plugin_status(&b, "x-faulty").map(|s| s.entities_quarantined),
            Some(i + 1)
        );
    }
    assert_eq!(faulty_state(&b), Some("quarantined"));
    (dir, b, conn, ch)
}

fn faulty_state(b: &TestBroker) -> Option<&'static str> {
    plugin_status(b, "x-faulty").map(|s| s.state)
}

fn entities_quarantined(b: &TestBroker) -> u64 {
    plugin_status(b, "x-faulty").map_or(0, |s| s.entities_quarantined)
}

/// Waits (up to [`WAIT`]) until `x-faulty` is loaded and not quarantined.
async fn until_faulty_loaded(b: &TestBroker, what: &str) {
    let deadline = Instant::now() + WAIT;
    while faulty_state(b) != Some("loaded") {
        assert!(Instant::now() < deadline, "{what}: {:?}", faulty_state(b));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_plugin_that_keeps_failing_is_quarantined_until_its_file_changes() {
    let (dir, b, conn, ch) = quarantined("q-panic").await;
    // Quarantined: even a message it would route fails fast (nack) …
    assert!(!confirmed(&ch, "q-panic-0", "ok", false).await);
    // … and no new exchange of the type can be declared (406, with the reason) …
    let other = channel(&conn).await;
    let refused = other
        .exchange_declare(
            "q-new".into(),
            kind("x-faulty"),
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
    let text = expect_code(refused, 406);
    assert!(text.contains("quarantined"), "{text}");
    // … until a new version of the file is loaded.
    let mut bytes = std::fs::read(plugins::FAULTY).expect("read");
    // The same code with a custom section appended (id 0, 3 octets: name "x", payload "1"): a valid
    // component with other content, i.e. a new version of the file.
    bytes.extend_from_slice(&[0x00, 0x03, 0x01, b'x', b'1']);
    std::fs::write(dir.path("faulty.wasm"), &bytes).expect("write");
    until_faulty_loaded(&b, "new version not loaded").await;
    for i in 0..QUARANTINE_ENTITIES {
        assert!(confirmed(&ch, &format!("q-panic-{i}"), "ok", false).await);
    }
    assert_eq!(entities_quarantined(&b), 0);
}

/// A quarantined plugin comes back when its file is touched (no new content needed), and its
/// exchanges route again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn touching_a_quarantined_plugins_file_lifts_the_quarantine() {
    let (dir, b, _conn, ch) = quarantined("t-panic").await;
    std::fs::File::options()
        .write(true)
        .open(dir.path("faulty.wasm"))
        .expect("open")
        .set_modified(std::time::SystemTime::now())
        .expect("touch");
    until_faulty_loaded(&b, "quarantine not lifted").await;
    for i in 0..QUARANTINE_ENTITIES {
        assert!(confirmed(&ch, &format!("t-panic-{i}"), "ok", false).await);
    }
    assert_eq!(entities_quarantined(&b), 0);
}

/// Faults are accounted per exchange: a poison routing key that keeps failing on exchange A
/// quarantines A alone; exchange B of the same type keeps routing, and so does the plugin. A poison
/// message that is a minority of A's traffic never quarantines it: each one meets the failure policy.
#[tokio::test]
async fn a_poison_key_on_one_exchange_leaves_other_exchanges_of_the_type_alone() {
    let dir = PluginDir::with("poison", &[(plugins::FAULTY, "faulty.wasm")]);
    let b = start_broker_with(dir.config()).await;
    let conn = connect(&b).await;
    let ch = confirm_channel(&conn).await;
    for x in ["poisoned", "healthy", "mostly"] {
        declare_exchange(&ch, x, "x-faulty", args(&[("fault", text("panic"))])).await;
        bind_queues(&ch, x, &[&format!("{x}-q")], "").await;
    }
    // One poisoned message in three, for a hundred calls: every good one is routed.
    for i in 0..99 {
        let key = if i % 3 == 0 { "fail" } else { "ok" };
        assert_eq!(confirmed(&ch, "mostly", key, false).await, key == "ok");
    }
    assert_eq!(entities_quarantined(&b), 0);
    for _ in 0..30 {
        assert!(!confirmed(&ch, "poisoned", "fail", false).await);
        assert!(confirmed(&ch, "healthy", "ok", false).await);
    }
    assert_eq!(entities_quarantined(&b), 1);
    assert_eq!(faulty_state(&b), Some("loaded"));
    // The quarantined exchange fails fast, even for a good key; the others route.
    assert!(!confirmed(&ch, "poisoned", "ok", false).await);
    assert!(confirmed(&ch, "healthy", "ok", false).await);
    assert!(confirmed(&ch, "mostly", "ok", false).await);
    assert_eq!(message_count(&ch, "healthy-q").await, 31);
    assert_eq!(message_count(&ch, "mostly-q").await, 67);
    // Deleting the quarantined exchange releases it from the plugin's count.
    ch.exchange_delete("poisoned".into(), ExchangeDeleteOptions::default())
        .await
        .expect("delete");
    assert_eq!(entities_quarantined(&b), 0);
}

/// The failure rate counts, not only a run: an exchange whose plugin fails on every other message
/// (the run of failures never passes one) is quarantined once 20 of its last calls failed.
#[tokio::test]
async fn an_exchange_failing_every_other_message_is_quarantined() {
    let dir = PluginDir::with("rate", &[(plugins::FAULTY, "faulty.wasm")]);
    let b = start_broker_with(dir.config()).await;
    let conn = connect(&b).await;
    let ch = confirm_channel(&conn).await;
    declare_exchange(&ch, "flaky", "x-faulty", args(&[("fault", text("panic"))])).await;
    bind_queues(&ch, "flaky", &["flaky-q"], "").await;
    let mut routed = 0;
    for i in 0..60 {
        let key = if i % 2 == 0 { "fail" } else { "ok" };
        if confirmed(&ch, "flaky", key, false).await {
            routed += 1;
        }
    }
    assert_eq!(entities_quarantined(&b), 1);
    // 20 failures among the first 39 calls; the good messages before that were routed.
    assert_eq!(routed, 19);
    assert_eq!(message_count(&ch, "flaky-q").await, 19);
}

/// Answers that break the contract without failing (repeated ids, an id no binding has) are counted
/// as breaches, not faults: the usable part routes (each bound queue gets the message once) and the
/// instance is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_repeated_binding_ids_are_counted_as_contract_breaches() {
    let dir = PluginDir::with("breach", &[(plugins::FAULTY, "faulty.wasm")]);
    let b = start_broker_with(dir.config()).await;
    let conn = connect(&b).await;
    let ch = confirm_channel(&conn).await;
    declare_exchange(&ch, "liar", "x-faulty", FieldTable::default()).await;
    bind_queues(&ch, "liar", &["liar-q1", "liar-q2"], "").await;
    let status = || plugin_status(&b, "x-faulty").expect("loaded");
    assert_eq!(status().breaches, 0);
    for _ in 0..3 {
        assert!(confirmed(&ch, "liar", "bad-ids", true).await);
    }
    let s = status();
    assert_eq!(s.breaches, 3, "one breach per answer");
    assert_eq!((s.traps, s.timeouts, s.memory), (0, 0, 0), "not faults");
    assert_eq!(s.state, "loaded");
    assert_eq!(drain(&ch, "liar-q1").await.len(), 3, "once per message");
    assert_eq!(drain(&ch, "liar-q2").await.len(), 3);
    // A well-formed answer is no breach.
    assert!(confirmed(&ch, "liar", "ok", true).await);
    assert_eq!(status().breaches, 3);
}

/// A plugin's stdout and stderr reach the broker's log, one event per line, tagged with the plugin's
/// name and file (stdout at INFO, stderr at WARN); a flood is cut to the rate limit and what was
/// dropped is reported. Runs the real binary, whose log goes to a file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_output_is_logged_tagged_and_rate_limited() {
    let dir = PluginDir::with("output", &[(plugins::FAULTY, "faulty.wasm")]);
    let data = std::env::temp_dir().join(format!("warren-output-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let log = data.with_extension("log");
    let p = common::process::Process::start_logged(&data, &dir.0, &log);
    let conn = p.connect().await;
    let ch = confirm_channel(&conn).await;
    declare_exchange(&ch, "talker", "x-faulty", FieldTable::default()).await;
    bind_queues(&ch, "talker", &["talker-q"], "").await;
    assert!(confirmed(&ch, "talker", "print", false).await);
    assert!(confirmed(&ch, "talker", "print-flood", false).await);
    // The instance reports its dropped lines when it goes away: close the exchange's last user.
    ch.exchange_delete("talker".into(), ExchangeDeleteOptions::default())
        .await
        .expect("delete");
    let file = dir.path("faulty.wasm").display().to_string();
    let deadline = Instant::now() + WAIT;
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("lines not logged") || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let line_with = |needle: &str| {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no log line with {needle:?} in:\n{text}"))
            .to_owned()
    };
    let out = line_with("stdout line from x-faulty");
    assert!(
        out.contains("INFO") && out.contains("warren::plugin::stdout"),
        "{out}"
    );
    assert!(
        out.contains("plugin=x-faulty") && out.contains(&file),
        "{out}"
    );
    let err = line_with("stderr line from x-faulty");
    assert!(
        err.contains("WARN") && err.contains("warren::plugin::stderr"),
        "{err}"
    );
    assert!(
        err.contains("plugin=x-faulty") && err.contains(&file),
        "{err}"
    );
    let flood = text.lines().filter(|l| l.contains("flood line")).count();
    assert!(
        (90..=110).contains(&flood),
        "{flood} of 500 flood lines logged; the burst is 100"
    );
    let dropped = line_with("lines not logged");
    assert!(dropped.contains("plugin=x-faulty"), "{dropped}");
    drop(p);
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_file(&log);
}
