//! `match`: a consumer filter on header values and basic properties.
//!
//! `x-filter-args`:
//! - `headers`: a table of header name → expected value;
//! - `properties`: a table of property name (`content-type`, `message-id`, `type`, `app-id`, …) →
//!   expected value;
//! - `x-match`: `all` (default: every listed entry must match) or `any` (one suffices);
//! - `on-mismatch`: `skip` (default: leave the message for other consumers) or `reject`.
//!
//! Strings match strings, integers match integers of any width.

use warren_plugin_sdk::filter::Decision;
use warren_plugin_sdk::{Message, Table, Value};

fn table<'a>(config: &'a Table, key: &str) -> Result<Option<&'a Table>, String> {
    match config.get(key) {
        None => Ok(None),
        Some(Value::Table(t)) => Ok(Some(t)),
        Some(_) => Err(format!("x-filter-args '{key}' must be a table")),
    }
}

fn init(config: &Table) -> Result<(), String> {
    let headers = table(config, "headers")?;
    let properties = table(config, "properties")?;
    if headers.is_none_or(Table::is_empty) && properties.is_none_or(Table::is_empty) {
        return Err("x-filter-args needs a non-empty 'headers' or 'properties' table".to_owned());
    }
    match config.get("x-match").map(Value::as_str) {
        None | Some(Some("all" | "any")) => {}
        _ => return Err("x-filter-args 'x-match' must be \"all\" or \"any\"".to_owned()),
    }
    match config.get("on-mismatch").map(Value::as_str) {
        None | Some(Some("skip" | "reject")) => Ok(()),
        _ => Err("x-filter-args 'on-mismatch' must be \"skip\" or \"reject\"".to_owned()),
    }
}

/// Delivers the messages whose headers and properties match the configured values.
#[warren_plugin_sdk::filter(
    name = "match",
    description = "Delivers messages whose headers / properties match x-filter-args",
    init = init
)]
fn filter(config: &Table, message: &Message) -> Decision {
    let any = config.get("x-match").and_then(Value::as_str) == Some("any");
    let entries = |kind: &str| match config.get(kind) {
        Some(Value::Table(t)) => t.iter().collect::<Vec<_>>(),
        _ => Vec::new(),
    };
    let mut checks = entries("headers")
        .into_iter()
        .map(|(k, v)| message.header(k).as_ref() == Some(v))
        .chain(
            entries("properties")
                .into_iter()
                .map(|(k, v)| message.property(k).as_ref() == Some(v)),
        );
    let matched = if any {
        checks.any(|m| m)
    } else {
        checks.all(|m| m)
    };
    if matched {
        Decision::Deliver
    } else if config.get("on-mismatch").and_then(Value::as_str) == Some("reject") {
        Decision::Reject
    } else {
        Decision::Skip
    }
}
