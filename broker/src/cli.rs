//! Command line (clap). Each option can also come from a `WARREN_*` environment variable; both override
//! the config file.

use std::path::PathBuf;

use clap::Parser;

use crate::config::{Config, LogFormat};

/// Where the binary keeps durable state unless told otherwise (the library's default is none).
pub const DEFAULT_DATA_DIR: &str = "warren-data";

/// Warren: an AMQP 0-9-1 message broker, wire-compatible with RabbitMQ.
#[derive(Debug, Parser)]
#[command(name = "warren", version, about)]
pub struct Cli {
    /// TOML config file (see README "Configuration").
    #[arg(long, env = "WARREN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to accept AMQP connections on, HOST:PORT; repeat for several (default 127.0.0.1:5672).
    /// In the environment, separate several with commas.
    #[arg(long, env = "WARREN_LISTEN", value_delimiter = ',')]
    pub listen: Vec<String>,
    /// Directory for durable state: durable exchanges, queues and bindings, persistent messages
    /// (default `warren-data` in the working directory).
    #[arg(long, env = "WARREN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Directory of .wasm plugins.
    #[arg(long, env = "WARREN_PLUGIN_DIR")]
    pub plugin_dir: Option<PathBuf>,
    /// Log filter, e.g. `info`, `debug`, `warren=trace`.
    #[arg(long, env = "WARREN_LOG")]
    pub log: Option<String>,
    /// Log line format: `text` or `json`.
    #[arg(long, env = "WARREN_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Address of the management HTTP API, HOST:PORT (default 127.0.0.1:15672), or `off`.
    #[arg(long, env = "WARREN_MANAGEMENT_LISTEN")]
    pub management_listen: Option<String>,
    /// Address of the Prometheus endpoint, HOST:PORT (default 127.0.0.1:15692), or `off`.
    #[arg(long, env = "WARREN_PROMETHEUS_LISTEN")]
    pub prometheus_listen: Option<String>,
    /// RabbitMQ-format definitions JSON to load at start.
    #[arg(long, env = "WARREN_DEFINITIONS")]
    pub definitions: Option<PathBuf>,
    /// Run as a member of a cluster (with `--cluster-node`, `--cluster-listen`, `--cluster-peer`, and
    /// the secret in `--cluster-secret-file` or WARREN_CLUSTER_SECRET), or as `[cluster]` in the
    /// config file says.
    #[arg(long)]
    pub cluster: bool,
    /// This node's name in the cluster, e.g. `warren@n1`.
    #[arg(long, env = "WARREN_CLUSTER_NODE")]
    pub cluster_node: Option<String>,
    /// Inter-node listen address, HOST:PORT (default 127.0.0.1:25672).
    #[arg(long, env = "WARREN_CLUSTER_LISTEN")]
    pub cluster_listen: Option<String>,
    /// Another member, `NAME=HOST:PORT`; repeat for each.
    #[arg(
        long = "cluster-peer",
        env = "WARREN_CLUSTER_PEERS",
        value_delimiter = ','
    )]
    pub cluster_peers: Vec<String>,
    /// Join a running cluster through the `--cluster-peer` members instead of forming one with
    /// them (RabbitMQ's `join_cluster`); a node that already has cluster state ignores it.
    #[arg(long, env = "WARREN_CLUSTER_JOIN")]
    pub cluster_join: bool,
    /// File holding the cluster's shared secret (RabbitMQ's Erlang cookie equivalent).
    #[arg(long, env = "WARREN_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// Metadata log entries between Raft snapshots (default 5000).
    #[arg(long, env = "WARREN_CLUSTER_SNAPSHOT_EVERY")]
    pub cluster_snapshot_every: Option<u64>,
    /// A companion command instead of running the broker.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Companion commands of the binary (`crate::companions`).
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Prints a password hash in RabbitMQ's format (rabbit_password_hashing_sha256, base64), for
    /// `password_hash` in `[[users]]` or a definitions file; reads the password from standard input
    /// when it is not given.
    HashPassword {
        /// The password (prefer standard input: arguments show in the process list).
        password: Option<String>,
    },
    /// Exits 0 when a broker answers the AMQP protocol header at ADDRESS with connection.start within
    /// 5 s, else prints why and exits 1 (a container health check).
    Ping {
        /// HOST:PORT of the AMQP listener.
        #[arg(default_value = "127.0.0.1:5672")]
        address: String,
    },
    /// Tools for plugin authors.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

/// `warren plugin …`: tools for plugin authors, run without a broker.
#[derive(Debug, clap::Subcommand)]
pub enum PluginCommand {
    /// Loads FILE as the broker would and reports its kind, name, version, WIT package and world,
    /// exports and imports, size and compile time; exits 0 when the broker would load it, 1 with the
    /// broker's reason when it would refuse it.
    Check {
        /// The plugin file (a WebAssembly component).
        file: PathBuf,
    },
    /// Runs FILE in-process on the plugin host with the given arguments, bindings and messages and
    /// prints each decision; for an exchange that routes on the routing key, also runs the batch
    /// path (`route-keys`) and fails when it disagrees with `route`. Exits 0 when everything
    /// passed, 1 otherwise.
    Test {
        /// The plugin file (a WebAssembly component).
        file: PathBuf,
        /// Arguments, bindings, messages (with headers and properties) and common headers from a
        /// TOML file, or JSON when the name ends in `.json` (keys `arguments`, `bindings`,
        /// `messages`, `headers`; see `docs/plugins.md`); the options below add to it.
        #[arg(long)]
        input: Option<PathBuf>,
        /// Declare arguments (exchange) or configuration (`x-filter-args`, `x-idempotency-args`),
        /// a JSON object.
        #[arg(long)]
        arguments: Option<String>,
        /// A binding key (ids 0, 1, … in order); repeat for several.
        #[arg(long = "binding")]
        bindings: Vec<String>,
        /// A message: `ROUTING_KEY`, or `ROUTING_KEY=BODY` (split at the first `=`); repeat.
        #[arg(long = "message")]
        messages: Vec<String>,
        /// A header every message carries, `NAME=VALUE`; repeat.
        #[arg(long = "header")]
        headers: Vec<String>,
    },
    /// Creates a plugin crate in DIR (default: ./NAME): Cargo.toml with the SDK dependency and the
    /// size-optimised release profile, src/lib.rs with a plugin function of the kind and tests that
    /// run natively with `cargo test`, a README and a .gitignore.
    New {
        /// What the plugin is.
        #[arg(long, value_enum, default_value = "exchange")]
        kind: crate::plugin::Kind,
        /// The plugin's name: the exchange type (starting with `x-`), or the filter's or idempotency
        /// plugin's name clients give.
        name: String,
        /// Where to create the crate (must not exist, or be empty).
        dir: Option<PathBuf>,
        /// Take `warren-plugin-sdk` from this checkout (default: the SDK of the repository this
        /// binary was built from when it is still there, else the registry release).
        #[arg(long)]
        sdk_path: Option<PathBuf>,
    },
}

impl Cli {
    /// The effective configuration: defaults, then the config file, then these options.
    ///
    /// # Errors
    /// The config file cannot be read or parsed, or the result is invalid.
    pub fn into_config(self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if !self.listen.is_empty() {
            config.listen = self.listen;
        }
        config.data_dir = self
            .data_dir
            .or(config.data_dir)
            .or_else(|| Some(PathBuf::from(DEFAULT_DATA_DIR)));
        if self.plugin_dir.is_some() {
            config.plugin_dir = self.plugin_dir;
        }
        if let Some(log) = self.log {
            config.log = log;
        }
        if let Some(format) = self.log_format {
            config.log_format = format;
        }
        match self.management_listen.as_deref() {
            Some("off") => config.management.enabled = false,
            Some(addr) => {
                config.management.enabled = true;
                addr.clone_into(&mut config.management.listen);
            }
            None => {}
        }
        match self.prometheus_listen.as_deref() {
            Some("off") => config.prometheus.enabled = false,
            Some(addr) => {
                config.prometheus.enabled = true;
                addr.clone_into(&mut config.prometheus.listen);
            }
            None => {}
        }
        if self.definitions.is_some() {
            config.definitions = self.definitions;
        }
        if self.cluster || self.cluster_node.is_some() || config.cluster.is_some() {
            let mut c = config.cluster.take().unwrap_or_default();
            if let Some(node) = self.cluster_node {
                c.node = node;
            }
            if let Some(listen) = self.cluster_listen {
                c.listen = listen;
            }
            for p in self.cluster_peers {
                let Some((name, address)) = p.split_once('=') else {
                    anyhow::bail!("--cluster-peer {p}: expected NAME=HOST:PORT");
                };
                c.peers.push(crate::config::ClusterPeer {
                    name: name.to_owned(),
                    address: address.to_owned(),
                });
            }
            if let Some(f) = self.cluster_secret_file {
                c.secret_file = Some(f);
            }
            if self.cluster_join {
                c.join = true;
            }
            if let Some(n) = self.cluster_snapshot_every {
                c.snapshot_every = Some(n.max(1));
            }
            if let Ok(secret) = std::env::var("WARREN_CLUSTER_SECRET") {
                c.secret = secret;
            }
            if let Some(f) = &c.secret_file {
                let text = std::fs::read_to_string(f).map_err(|e| {
                    anyhow::anyhow!("cannot read the cluster secret file {}: {e}", f.display())
                })?;
                c.secret = text.lines().next().unwrap_or_default().trim().to_owned();
            }
            if c.node.is_empty() {
                anyhow::bail!("a cluster node needs a name (--cluster-node or [cluster] node)");
            }
            if c.listen.is_empty() {
                c.listen = "127.0.0.1:25672".into();
            }
            config.cluster = Some(c);
        }
        config.validate()?;
        Ok(config)
    }
}
