//! `warren plugin test FILE.wasm` on real components (the real binary, the fixtures of `plugins/`):
//! each kind's decisions printed with exact lines, the batch path checked for routing-key exchanges,
//! and `x-disagree` (a fixture whose `route-keys` answers differently from `route`) caught with exit 1.

mod common;

use std::process::Command;

use common::process::binary;
use warren_tests::plugins;

/// (exit code, standard output, standard error) of `warren plugin test FILE ARGS…`.
fn trial(file: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary())
        .args(["plugin", "test", file])
        .args(args)
        .output()
        .expect("run warren plugin test");
    (
        out.status.code().expect("exit code"),
        String::from_utf8(out.stdout).expect("utf-8"),
        String::from_utf8(out.stderr).expect("utf-8"),
    )
}

#[test]
fn an_exchange_plugin_routes_and_its_batch_path_agrees() {
    let (code, out, err) = trial(
        plugins::V0_1_EXCHANGE,
        &[
            "--binding",
            "a",
            "--binding",
            "b",
            "--message",
            "a",
            "--message",
            "c",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        "exchange plugin 'x-v01-direct' 0.1.0 (warren:plugin@0.1.0)\n\
         init: ok, routes on the routing key\n\
         binding 0 'a': added\n\
         binding 1 'b': added\n\
         message 0 'a': route -> 0 'a'\n\
         message 1 'c': route -> no binding\n\
         route-keys: not in this package (one call per message)\n"
    );
    // A 0.2.0 plugin: every message's key through route-keys too.
    let (code, out, err) = trial(
        plugins::X_CONSISTENT_HASH,
        &[
            "--binding",
            "1",
            "--binding",
            "1",
            "--message",
            "k1",
            "--message",
            "k2",
            "--message",
            "k1",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("exchange plugin 'x-consistent-hash' 0.1.0 (warren:plugin@0.4.0)\n"));
    assert!(
        out.ends_with("route-keys over the 3 keys: agrees with route\n"),
        "{out}"
    );
    assert_eq!(out.matches(": route -> ").count(), 3, "{out}");
}

#[test]
fn a_route_keys_that_disagrees_with_route_is_caught() {
    let (code, out, err) = trial(
        plugins::DISAGREE,
        &[
            "--binding",
            "a",
            "--binding",
            "b",
            "--message",
            "a",
            "--message",
            "zzz",
        ],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(
        out,
        "exchange plugin 'x-disagree' 0.1.0 (warren:plugin@0.2.0)\n\
         init: ok, routes on the routing key\n\
         binding 0 'a': added\n\
         binding 1 'b': added\n\
         message 0 'a': route -> 0 'a'\n\
         message 1 'zzz': route -> no binding\n\
         message 0 'a': route-keys -> 1 'b', but route -> 0 'a'\n\
         message 1 'zzz': route-keys -> 0 'a', 1 'b', but route -> no binding\n\
         route-keys disagrees with route: the broker would route these messages differently in batches\n"
    );
}

#[test]
fn filters_and_idempotency_plugins_print_their_decisions() {
    let (code, out, err) = trial(
        plugins::MATCH_FILTER,
        &[
            "--arguments",
            r#"{"headers": {"color": "red"}}"#,
            "--header",
            "color=red",
            "--message",
            "m",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        "filter plugin 'match' 0.1.0 (warren:plugin@0.4.0)\ninit: ok\nmessage 0 'm': deliver\n"
    );
    let (code, out, _) = trial(plugins::MATCH_FILTER, &["--message", "m"]);
    assert_eq!(code, 1);
    assert!(
        out.ends_with(
            "init: refused: x-filter-args needs a non-empty 'headers' or 'properties' table\n"
        ),
        "{out}"
    );
    let (code, out, err) = trial(
        plugins::IDEMPOTENCY_KEY,
        &[
            "--arguments",
            r#"{"header": "k"}"#,
            "--header",
            "k=abc",
            "--message",
            "m",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        "idempotency plugin 'idempotency-key' 0.1.0 (warren:plugin@0.4.0)\ninit: ok\nmessage 0 'm': key 'abc'\n"
    );
}

#[test]
fn a_file_the_broker_refuses_is_refused_here() {
    let (code, out, err) = trial(plugins::OTHER_WORLD, &["--message", "a"]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(
        err.starts_with("warren plugin test: refused: targets no world this broker accepts"),
        "{err}"
    );
    let (code, _, err) = trial(plugins::X_RANDOM, &["--arguments", "[1]"]);
    assert_eq!(code, 2);
    assert_eq!(
        err,
        "warren plugin test: --arguments must be a JSON object\n"
    );
}

/// Writes `text` to a scratch file named `name` and returns its path.
fn input_file(name: &str, text: &str) -> String {
    let path = std::env::temp_dir().join(format!("warren-trial-{}-{name}", std::process::id()));
    std::fs::write(&path, text).expect("write the input file");
    path.to_str().expect("utf-8 path").to_owned()
}

#[test]
fn inputs_come_from_a_toml_or_json_file_with_headers_and_properties() {
    // TOML: a filter on a property and a header, per message; the command line adds a message.
    let toml = input_file(
        "match.toml",
        r#"
arguments = { properties = { type = "paid" }, headers = { region = "eu" } }
headers = { region = "eu" }

[[messages]]
routing_key = "a"
properties = { type = "paid", priority = 3 }

[[messages]]
routing_key = "b"
properties = { type = "created" }

[[messages]]
routing_key = "c"
headers = { region = "us" }
properties = { type = "paid" }
"#,
    );
    let (code, out, err) = trial(plugins::MATCH_FILTER, &["--input", &toml, "--message", "d"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        "filter plugin 'match' 0.1.0 (warren:plugin@0.4.0)\ninit: ok\n\
         message 0 'a': deliver\nmessage 1 'b': skip\nmessage 2 'c': skip\nmessage 3 'd': skip\n"
    );
    // JSON: bindings with arguments, and messages given as bare routing keys.
    let json = input_file(
        "hash.json",
        r#"{"bindings": [{"key": "1"}, "1"], "messages": ["k1", "k2"]}"#,
    );
    let (code, out, err) = trial(plugins::X_CONSISTENT_HASH, &["--input", &json]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("binding 0 '1': added\nbinding 1 '1': added\n")
            && out.ends_with("route-keys over the 2 keys: agrees with route\n"),
        "{out}"
    );
    // Mistakes in the file are reported with where they are.
    let typo = input_file("typo.toml", "mesages = []\n");
    let (code, out, err) = trial(plugins::MATCH_FILTER, &["--input", &typo]);
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(
        err.contains("unknown field `mesages`, expected one of `arguments`, `bindings`, `messages`, `headers`"),
        "{err}"
    );
    let property = input_file(
        "property.toml",
        "messages = [{ routing_key = \"a\", properties = { colour = \"red\" } }]\n",
    );
    let (code, _, err) = trial(plugins::MATCH_FILTER, &["--input", &property]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "warren plugin test: message 0: unknown property 'colour'\n"
    );
    for f in [toml, json, typo, property] {
        let _ = std::fs::remove_file(f);
    }
}

#[test]
fn a_plugin_that_routes_on_the_message_is_checked_through_route_messages() {
    // x-switch (SDK, warren:plugin@0.4.0) routes on the message: its batch path is route-messages.
    let (code, out, err) = trial(
        plugins::SWITCH_A,
        &[
            "--binding",
            "a",
            "--binding",
            "b",
            "--binding",
            "a",
            "--message",
            "x=1",
            "--message",
            "y=2",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        "exchange plugin 'x-switch' 0.1.0 (warren:plugin@0.4.0)\n\
         init: ok, routes on the message\n\
         binding 0 'a': added\n\
         binding 1 'b': added\n\
         binding 2 'a': added\n\
         message 0 'x': route -> 0 'a', 2 'a'\n\
         message 1 'y': route -> 0 'a', 2 'a'\n\
         route-messages over the 2 messages: agrees with route\n"
    );
}

#[test]
fn a_0_3_0_plugin_is_checked_through_route_messages() {
    let input = input_file(
        "v03.toml",
        "bindings = [\"a\", \"b\"]\n\
         [[messages]]\nrouting_key = \"k\"\nheaders = { to = \"b\" }\n\
         [[messages]]\nrouting_key = \"k\"\nheaders = { to = \"a\" }\n\
         [[messages]]\nrouting_key = \"k\"\n",
    );
    let (code, out, err) = trial(plugins::V0_3_EXCHANGE, &["--input", &input]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        "exchange plugin 'x-v03-header' 0.1.0 (warren:plugin@0.3.0)\n\
         init: ok, routes on the message\n\
         binding 0 'a': added\n\
         binding 1 'b': added\n\
         message 0 'k': route -> 1 'b'\n\
         message 1 'k': route -> 0 'a'\n\
         message 2 'k': route -> no binding\n\
         route-messages over the 3 messages: agrees with route\n"
    );
}

#[test]
fn a_scheduling_plugin_shows_its_schedule_answers() {
    let input = input_file(
        "delayed.toml",
        "arguments = { \"x-delayed-type\" = \"direct\" }\n\
         bindings = [\"k\"]\n\
         [[messages]]\nrouting_key = \"k\"\nheaders = { x-delay = 1500 }\n\
         [[messages]]\nrouting_key = \"k\"\n\
         [[messages]]\nrouting_key = \"k\"\nheaders = { x-delay = \"soon\" }\n",
    );
    let (code, out, err) = trial(plugins::X_DELAYED_MESSAGE, &["--input", &input]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        "exchange plugin 'x-delayed-message' 0.1.0 (warren:plugin@0.4.0)\n\
         init: ok, routes on the routing key, schedules messages\n\
         binding 0 'k': added\n\
         message 0 'k': schedule -> after 1500 ms\n\
         message 0 'k': route -> 0 'k'\n\
         message 1 'k': route -> 0 'k'\n\
         message 2 'k': schedule -> refused: invalid 'x-delay' header: expected an integer number of milliseconds, got Text(\"soon\")\n\
         message 2 'k': route -> 0 'k'\n\
         no batch calls: the broker routes a scheduling exchange's messages one by one\n"
    );
    // The deduplication exchange's key-value store works under `warren plugin test` (in memory).
    let input = input_file(
        "dedup.toml",
        "arguments = { \"x-cache-size\" = 10 }\n\
         bindings = [\"\"]\n\
         [[messages]]\nrouting_key = \"\"\nheaders = { x-deduplication-header = \"m-1\" }\n\
         [[messages]]\nrouting_key = \"\"\nheaders = { x-deduplication-header = \"m-1\" }\n",
    );
    let (code, out, err) = trial(plugins::X_MESSAGE_DEDUPLICATION, &["--input", &input]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("message 0 '': route -> 0 ''\nmessage 1 '': route -> no binding\n"),
        "{out}"
    );
}
