use warren_plugin_sdk::{Message, Table, Value};

fn init(config: &Table) -> Result<(), String> {
    match config.get("header") {
        None | Some(Value::Text(_)) => Ok(()),
        Some(_) => Err("header must be a string".into()),
    }
}

#[warren_plugin_sdk::idempotency(name = "by-header", init = init)]
fn key(config: &Table, message: &Message) -> Option<Vec<u8>> {
    let name = config.get("header").and_then(Value::as_str).unwrap_or("x-key");
    message.header(name)?.as_str().map(|s| s.as_bytes().to_vec())
}

fn main() {
    let m = Message::builder("k").header("x-key", "7").build();
    assert_eq!(key(&Table::new(), &m), Some(b"7".to_vec()));
}
