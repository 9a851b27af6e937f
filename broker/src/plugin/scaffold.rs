//! `warren plugin new`: a new plugin crate (Cargo.toml with the SDK dependency and the size profile,
//! `src/lib.rs` with a plugin function and native tests, a README, a `.gitignore`) for one of the
//! three kinds, ready for `cargo test` and `cargo build --release --target wasm32-wasip2`.

use std::path::{Path, PathBuf};

use crate::plugin::Kind;

/// Where the new crate takes `warren-plugin-sdk` from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sdk {
    /// A path dependency on an SDK checkout (`plugin-sdk/` of Warren's repository).
    Path(PathBuf),
    /// The registry release `0.1` (once the SDK is published).
    Registry,
}

impl Sdk {
    /// The SDK of the repository this binary was built from, when that checkout is still there;
    /// else the registry release.
    pub fn default_for_this_build() -> Sdk {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-sdk");
        match path.canonicalize() {
            Ok(p) if p.join("Cargo.toml").is_file() => Sdk::Path(p),
            _ => Sdk::Registry,
        }
    }

    fn dependency(&self) -> String {
        match self {
            Sdk::Path(p) => format!(
                "warren-plugin-sdk = {{ path = {} }}",
                toml_string(&p.display().to_string())
            ),
            Sdk::Registry => "warren-plugin-sdk = \"0.1\"".to_owned(),
        }
    }
}

/// What was created.
#[derive(Debug)]
pub struct Created {
    /// The crate's directory.
    pub dir: PathBuf,
    /// The `.wasm` file `cargo build --release --target wasm32-wasip2` writes, relative to `dir`.
    pub wasm: PathBuf,
    /// The files written, relative to `dir`.
    pub files: Vec<PathBuf>,
}

/// Creates the crate for plugin `name` of `kind` in `dir`.
///
/// # Errors
/// A name the broker would refuse (an exchange type must start with `x-`; 1 to 255 octets of
/// letters, digits, `-`, `_` and `.`), `dir` exists and is not empty, or a file cannot be written.
pub fn create(kind: Kind, name: &str, dir: &Path, sdk: &Sdk) -> Result<Created, String> {
    check_name(kind, name)?;
    if dir
        .read_dir()
        .is_ok_and(|mut entries| entries.next().is_some())
    {
        return Err(format!(
            "{} exists and is not empty: give a new directory",
            dir.display()
        ));
    }
    let package = package_name(name);
    let library = package.replace('-', "_");
    let vars = |text: &str| {
        text.replace("{name}", name)
            .replace("{package}", &package)
            .replace("{library}", &library)
            .replace("{sdk}", &sdk.dependency())
            .replace("{kind}", &kind.to_string())
    };
    let source = match kind {
        Kind::Exchange => EXCHANGE,
        Kind::Filter => FILTER,
        Kind::Idempotency => IDEMPOTENCY,
    };
    let files = [
        ("Cargo.toml", vars(CARGO_TOML)),
        ("src/lib.rs", vars(source)),
        ("README.md", vars(README)),
        (".gitignore", "/target\n".to_owned()),
    ];
    std::fs::create_dir_all(dir.join("src"))
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    for (file, text) in &files {
        let path = dir.join(file);
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(Created {
        dir: dir.to_owned(),
        wasm: Path::new("target/wasm32-wasip2/release").join(format!("{library}.wasm")),
        files: files.iter().map(|(f, _)| PathBuf::from(f)).collect(),
    })
}

/// The broker's rules for a plugin name (`loader`), plus a character set that makes a crate name.
fn check_name(kind: Kind, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 {
        return Err("a plugin name has 1 to 255 octets".to_owned());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "plugin name '{name}': use letters, digits, '-', '_' and '.' (it names the crate too)"
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(format!("plugin name '{name}' must start with a letter"));
    }
    if kind == Kind::Exchange && !name.starts_with("x-") {
        return Err(format!(
            "exchange type '{name}' must start with 'x-' (RabbitMQ's rule for non-standard types), \
             e.g. 'x-{name}'"
        ));
    }
    Ok(())
}

/// The crate name for a plugin name: `.` becomes `-`.
fn package_name(name: &str) -> String {
    name.replace('.', "-")
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

const CARGO_TOML: &str = r#"[package]
name = "{package}"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
# A WebAssembly component for Warren's plugin directory (cargo build --release --target wasm32-wasip2);
# natively, `cargo test` runs the tests in src/lib.rs.
crate-type = ["cdylib"]

[dependencies]
{sdk}

# Smaller, faster plugins: the release profile Warren's own plugins use (about 35 % smaller).
[profile.release]
opt-level = 3
lto = true
codegen-units = 1
panic = "abort"
strip = true

# A crate of its own, even when created inside another workspace.
[workspace]
"#;

const README: &str = r#"# {name}

A Warren {kind} plugin, made with `warren plugin new`.

```sh
cargo test                                          # the plugin function, natively
cargo build --release --target wasm32-wasip2        # the component
warren plugin check target/wasm32-wasip2/release/{library}.wasm
warren plugin test target/wasm32-wasip2/release/{library}.wasm --message some.key
cp target/wasm32-wasip2/release/{library}.wasm /path/to/warren-plugins/
```

`rustup target add wasm32-wasip2` once if the target is missing. `warren plugin check` loads the file
as the broker would and says whether it would load it (and why not); `warren plugin test` runs it on
the real plugin host without a broker (`--binding KEY`, `--message KEY[=BODY]`, `--header NAME=VALUE`,
`--arguments JSON`, or `--input FILE` with the same in a TOML or JSON file). Copied into the broker's
plugin directory, it is live within a second and replaced live when the file changes. The plugin guide
(`docs/plugins.md` in Warren's repository) covers the message view, limits and failure policies.
"#;

const EXCHANGE: &str = r#"//! `{name}`: an exchange type that routes a message to every binding whose key is a prefix of
//! its routing key.

use warren_plugin_sdk::exchange::{Binding, Exchange, RoutesOn};
use warren_plugin_sdk::{Message, Table};

/// Checks the exchange.declare arguments; a refusal reaches the client as 406 PRECONDITION_FAILED.
fn init(arguments: &Table) -> Result<RoutesOn, String> {
    if arguments.get("x-unknown").is_some() {
        return Err("x-unknown is not an argument of {name}".into());
    }
    // Decisions depend on the routing key alone: the broker caches them per key and may ask for
    // many keys in one call.
    Ok(RoutesOn::RoutingKey)
}

/// Checks each binding; a refusal reaches the client as 406 PRECONDITION_FAILED.
fn validate_binding(_exchange: &Exchange, binding: &Binding) -> Result<(), String> {
    if binding.key.is_empty() {
        return Err("{name} needs a non-empty binding key (a routing key prefix)".into());
    }
    Ok(())
}

/// The ids of the bindings to route to.
#[warren_plugin_sdk::exchange(
    name = "{name}",
    description = "Routes to every binding whose key is a prefix of the routing key",
    init = init,
    validate_binding = validate_binding
)]
fn route(exchange: &Exchange, message: &Message) -> Vec<u32> {
    exchange
        .bindings()
        .iter()
        .filter(|b| message.routing_key().starts_with(b.key.as_str()))
        .map(|b| b.id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_to_every_binding_whose_key_is_a_prefix() {
        let exchange = Exchange::new(
            Table::new(),
            vec![
                Binding::new(1, "eu-orders", "orders.eu"),
                Binding::new(2, "all-orders", "orders"),
            ],
        );
        let route_of = |key: &str| route(&exchange, &Message::builder(key).build());
        assert_eq!(route_of("orders.eu.paid"), vec![1, 2]);
        assert_eq!(route_of("orders.us"), vec![2]);
        assert!(route_of("invoices").is_empty());
    }

    #[test]
    fn refuses_an_empty_binding_key() {
        let exchange = Exchange::new(Table::new(), Vec::new());
        assert!(validate_binding(&exchange, &Binding::new(1, "q", "")).is_err());
        assert_eq!(init(&Table::new()), Ok(RoutesOn::RoutingKey));
    }
}
"#;

const FILTER: &str = r#"//! `{name}`: a consumer filter that delivers the messages whose `type` property is the one the
//! consumer asked for (`basic.consume` arguments `x-filter = "{name}"`,
//! `x-filter-args = {"type": "…"}`) and leaves the others in the queue for other consumers.

use warren_plugin_sdk::filter::Decision;
use warren_plugin_sdk::{Message, Table, Value};

/// Checks `x-filter-args`; a refusal reaches the client as 406 PRECONDITION_FAILED.
fn init(config: &Table) -> Result<(), String> {
    match config.get("type") {
        Some(Value::Text(t)) if !t.is_empty() => Ok(()),
        _ => Err("x-filter-args needs a non-empty string 'type'".into()),
    }
}

/// Deliver, skip (stays for other consumers) or reject (dead-lettered or dropped).
#[warren_plugin_sdk::filter(
    name = "{name}",
    description = "Delivers the messages whose type property is x-filter-args' type",
    init = init
)]
fn filter(config: &Table, message: &Message) -> Decision {
    let wanted = config.get("type").and_then(Value::as_str);
    if message.property_str("type").as_deref() == wanted {
        Decision::Deliver
    } else {
        Decision::Skip
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivers_the_wanted_type_and_skips_the_rest() {
        let config = Table::new().with("type", "order.paid");
        let paid = Message::builder("k").property("type", "order.paid").build();
        let other = Message::builder("k").property("type", "order.created").build();
        assert_eq!(filter(&config, &paid), Decision::Deliver);
        assert_eq!(filter(&config, &other), Decision::Skip);
        assert_eq!(filter(&config, &Message::builder("k").build()), Decision::Skip);
    }

    #[test]
    fn refuses_a_configuration_without_a_type() {
        assert!(init(&Table::new()).is_err());
        assert!(init(&Table::new().with("type", "order.paid")).is_ok());
    }
}
"#;

const IDEMPOTENCY: &str = r#"//! `{name}`: an idempotency key for a queue (`x-idempotency = "{name}"`): the header named by
//! `x-idempotency-args` `header` (default `x-idempotency-key`), else the `message-id` property. The
//! broker remembers the keys of acked messages and does not deliver a message with a known key again.

use warren_plugin_sdk::{Message, Table, Value};

/// Checks `x-idempotency-args`; a refusal reaches the client as 406 PRECONDITION_FAILED.
fn init(config: &Table) -> Result<(), String> {
    match config.get("header") {
        None => Ok(()),
        Some(Value::Text(h)) if !h.is_empty() => Ok(()),
        Some(_) => Err("x-idempotency-args 'header' must be a non-empty string".into()),
    }
}

/// The key, or `None`: a message without one is always delivered.
#[warren_plugin_sdk::idempotency(
    name = "{name}",
    description = "Idempotency key from a header, else the message-id property",
    init = init
)]
fn key(config: &Table, message: &Message) -> Option<Vec<u8>> {
    let header = config
        .get("header")
        .and_then(Value::as_str)
        .unwrap_or("x-idempotency-key");
    match message.header(header) {
        Some(Value::Text(s)) => Some(s.into_bytes()),
        Some(Value::Bytes(b)) => Some(b),
        Some(Value::Integer(n)) => Some(n.to_string().into_bytes()),
        _ => message.property_str("message-id").map(String::into_bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_else_the_message_id() {
        let config = Table::new();
        let both = Message::builder("k")
            .header("x-idempotency-key", "order-7")
            .property("message-id", "m-1")
            .build();
        let id_only = Message::builder("k").property("message-id", "m-1").build();
        assert_eq!(key(&config, &both), Some(b"order-7".to_vec()));
        assert_eq!(key(&config, &id_only), Some(b"m-1".to_vec()));
        assert_eq!(key(&config, &Message::builder("k").build()), None);
    }

    #[test]
    fn a_configured_header() {
        let config = Table::new().with("header", "order-id");
        assert!(init(&config).is_ok());
        let m = Message::builder("k").header("order-id", 42).build();
        assert_eq!(key(&config, &m), Some(b"42".to_vec()));
        assert!(init(&Table::new().with("header", 1)).is_err());
    }
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_broker_would_refuse_are_refused() {
        assert!(check_name(Kind::Exchange, "prefix")
            .unwrap_err()
            .contains("must start with 'x-'"));
        assert!(check_name(Kind::Filter, "a b").is_err());
        assert!(check_name(Kind::Filter, "1f").is_err());
        assert!(check_name(Kind::Filter, &"f".repeat(256)).is_err());
        assert!(check_name(Kind::Exchange, "x-prefix").is_ok());
        assert!(check_name(Kind::Idempotency, "by.header_v2").is_ok());
        assert_eq!(package_name("by.header_v2"), "by-header_v2");
    }

    #[test]
    fn a_non_empty_directory_is_refused() {
        let dir = std::env::temp_dir().join(format!("warren-scaffold-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("keep"), "").unwrap();
        let e = create(Kind::Filter, "f", &dir, &Sdk::Registry).unwrap_err();
        assert!(e.contains("not empty"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_string(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
