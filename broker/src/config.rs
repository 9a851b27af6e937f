//! Broker configuration: defaults, a TOML file, `WARREN_*` environment variables and the command line,
//! later sources overriding earlier ones. Validated once at load; passed down explicitly (no global).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

/// A user allowed to connect (SASL PLAIN / AMQPLAIN). Give `password` or RabbitMQ's `password_hash`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// User name.
    pub name: String,
    /// Plain password (hashed at load).
    #[serde(default)]
    pub password: Option<String>,
    /// Password hash in RabbitMQ's `rabbit_password_hashing_sha256` format (base64).
    #[serde(default)]
    pub password_hash: Option<String>,
    /// Tags (`administrator`, …).
    #[serde(default)]
    pub tags: Vec<String>,
    /// User limits (RabbitMQ docs/user-limits.md): `limits = { max-connections = 10, max-channels = 100 }`.
    #[serde(default)]
    pub limits: crate::limits::UserLimits,
}

/// A user's permissions in a vhost: regular expressions over resource names (RabbitMQ
/// docs/access-control.md). The empty string grants nothing.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Permission {
    /// User name.
    pub user: String,
    /// Vhost name.
    #[serde(default = "default_vhost")]
    pub vhost: String,
    /// Declare/delete.
    pub configure: String,
    /// Publish/bind as destination.
    pub write: String,
    /// Consume/get/purge/bind as source.
    pub read: String,
}

/// A policy (RabbitMQ docs/policies.md): queue/exchange settings for entities whose name matches.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Vhost the policy applies in.
    #[serde(default = "default_vhost")]
    pub vhost: String,
    /// Policy name.
    pub name: String,
    /// Regular expression over entity names.
    pub pattern: String,
    /// `queues`, `exchanges` or `all`.
    #[serde(default = "default_apply_to", rename = "apply-to", alias = "apply_to")]
    pub apply_to: String,
    /// Settings: `message-ttl`, `expires`, `max-length`, `max-length-bytes`, `overflow`,
    /// `dead-letter-exchange`, `dead-letter-routing-key`, `delivery-limit`, `consumer-timeout`,
    /// `alternate-exchange`.
    pub definition: serde_json::Map<String, serde_json::Value>,
    /// Among matching policies the highest priority applies.
    #[serde(default)]
    pub priority: i32,
}

/// TLS listeners (`[tls]`), with RabbitMQ's `ssl_options` names (docs/ssl.md).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Addresses to accept AMQPS connections on, `HOST:PORT` (RabbitMQ's convention is port 5671).
    pub listen: Vec<String>,
    /// The server's certificate chain, PEM.
    pub certfile: PathBuf,
    /// The server's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub keyfile: PathBuf,
    /// CA certificates client certificates are verified against, PEM (needed by `verify_peer`).
    #[serde(default)]
    pub cacertfile: Option<PathBuf>,
    /// `verify_none` (default: no client certificate asked for) or `verify_peer`.
    #[serde(default)]
    pub verify: TlsVerify,
    /// With `verify_peer`: refuse clients that present no certificate (default false).
    #[serde(default)]
    pub fail_if_no_peer_cert: bool,
}

/// Whether client certificates are asked for and verified (RabbitMQ `ssl_options.verify`).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TlsVerify {
    /// No client certificate is requested.
    #[default]
    VerifyNone,
    /// A client certificate is requested and verified against `cacertfile`.
    VerifyPeer,
}

/// Which part of a client certificate is the user name for SASL EXTERNAL (RabbitMQ
/// `ssl_cert_login_from`).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CertLoginFrom {
    /// The subject's distinguished name, RFC 4514 (RabbitMQ's default).
    #[default]
    DistinguishedName,
    /// The subject's first common name (CN).
    CommonName,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines (colours only when standard output is a terminal).
    #[default]
    Text,
    /// One JSON object per line (tracing-subscriber's JSON formatter): timestamp, level, target,
    /// fields.
    Json,
}

/// The management HTTP API (`[management]`), RabbitMQ's `management.tcp.*`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ManagementConfig {
    /// Serve the API at all (default true).
    pub enabled: bool,
    /// Address to serve it on, `HOST:PORT` (default `127.0.0.1:15672`, RabbitMQ's port).
    pub listen: String,
}

impl Default for ManagementConfig {
    fn default() -> Self {
        ManagementConfig {
            enabled: true,
            listen: "127.0.0.1:15672".into(),
        }
    }
}

/// The Prometheus endpoint (`[prometheus]`), RabbitMQ's `prometheus.tcp.*`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct PrometheusConfig {
    /// Serve metrics at all (default true).
    pub enabled: bool,
    /// Address to serve them on, `HOST:PORT` (default `127.0.0.1:15692`, RabbitMQ's port).
    pub listen: String,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        PrometheusConfig {
            enabled: true,
            listen: "127.0.0.1:15692".into(),
        }
    }
}

/// A cluster member as another node's config names it: `name=HOST:PORT` on the command line.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterPeer {
    /// Node name.
    pub name: String,
    /// Its inter-node address, `HOST:PORT`.
    pub address: String,
}

/// Cluster membership (`[cluster]`; `--cluster` and the `--cluster-*` flags): this node's name and
/// inter-node address, the other members, and the shared secret the links authenticate with
/// (RabbitMQ's Erlang cookie). The nodes that form a cluster list the same set of nodes; a node added
/// later joins through any of them (`join`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's name (e.g. `warren@n1`), unique in the cluster.
    pub node: String,
    /// The inter-node listen address, `HOST:PORT` (default `127.0.0.1:25672`, RabbitMQ's port).
    pub listen: String,
    /// The other members (for a joining node: members to ask).
    pub peers: Vec<ClusterPeer>,
    /// Join a running cluster through `peers` instead of forming one with them (`--cluster-join`):
    /// the leader adds this node once it has caught up. Only a node without Raft state joins; a
    /// restarted member rejoins with its log whatever this says.
    pub join: bool,
    /// The shared secret, inline (prefer `secret_file`).
    pub secret: String,
    /// A file holding the shared secret (its first line).
    pub secret_file: Option<PathBuf>,
    /// Metadata log entries between Raft snapshots (default 5 000); a fifth of that many entries is
    /// kept behind each snapshot for followers slightly behind, one further behind installs the
    /// snapshot.
    pub snapshot_every: Option<u64>,
}

fn default_vhost() -> String {
    "/".into()
}

fn default_apply_to() -> String {
    "all".into()
}

/// All settings. Field names are the TOML keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Addresses to accept AMQP connections on, `HOST:PORT` (default `127.0.0.1:5672`).
    pub listen: Vec<String>,
    /// TLS (AMQPS) listeners, beside the plain ones; none by default.
    pub tls: Option<TlsConfig>,
    /// The management HTTP API.
    pub management: ManagementConfig,
    /// The Prometheus endpoint.
    pub prometheus: PrometheusConfig,
    /// Where SASL EXTERNAL takes the user name from a verified client certificate.
    pub ssl_cert_login_from: CertLoginFrom,
    /// Where durable state is kept; `None` keeps everything in memory (the binary defaults to
    /// `warren-data`).
    pub data_dir: Option<PathBuf>,
    /// Directory of `.wasm` plugins (components targeting `wit/warren-plugin.wit`), loaded at start
    /// and watched for changes.
    pub plugin_dir: Option<PathBuf>,
    /// Wall-clock budget of one plugin call, ms (default 100); a call past it is stopped and the
    /// plugin's failure policy applies.
    pub plugin_call_timeout: u64,
    /// Wall-clock budget of instantiating a plugin (and of its `describe` when loaded), ms (default
    /// 2000); past it the load is refused, or the instance counts as a fault.
    pub plugin_instantiate_timeout: u64,
    /// Linear memory one plugin instance may use, octets (default 64 MiB).
    pub plugin_memory_limit: u64,
    /// How far a plugin's memory cap grows, octets (default 256 MiB): each time an instance breaches
    /// its cap, the plugin's next instances get twice the cap, up to this (so a garbage-collected
    /// plugin whose steady state needs more than `plugin_memory_limit` stops breaching).
    pub plugin_memory_ceiling: u64,
    /// Most entries in one exchange's plugin key-value store (`warren:plugin@0.4.0` `host`
    /// interface; default 1 000 000). Past it `kv-set` of a new key fails with `quota-exceeded`
    /// unless the plugin bounded the store itself (`max-entries`, evicting the oldest write).
    pub plugin_kv_max_entries: u64,
    /// Most octets of keys and values in one exchange's plugin key-value store (default 64 MiB).
    pub plugin_kv_max_bytes: u64,
    /// Log filter in `tracing_subscriber::EnvFilter` syntax, e.g. `info` or `warren=debug`.
    pub log: String,
    /// Log line format: `text` (default) or `json` (one JSON object per line).
    pub log_format: LogFormat,
    /// Users; default `guest`/`guest`.
    pub users: Vec<User>,
    /// Permissions; default: `guest` may do everything in `/`.
    pub permissions: Vec<Permission>,
    /// Users that may only connect over loopback (RabbitMQ `loopback_users`; default `["guest"]`).
    pub loopback_users: Vec<String>,
    /// Policies applied to queues and exchanges as they are declared.
    pub policies: Vec<Policy>,
    /// RabbitMQ-format definitions JSON loaded at start (vhosts, users, permissions, policies,
    /// exchanges, queues, bindings).
    pub definitions: Option<PathBuf>,
    /// Virtual hosts; default `["/"]`.
    pub vhosts: Vec<String>,
    /// Vhost limits by vhost name (RabbitMQ docs/vhosts.md "Limits"):
    /// `[vhost_limits."/"]` with `max-connections` and `max-queues`.
    pub vhost_limits: std::collections::HashMap<String, crate::limits::VhostLimits>,
    /// Most client connections the broker accepts at once (RabbitMQ `connection_max`; default: no
    /// limit). Past it a new socket is closed as soon as it is accepted.
    pub connection_max: Option<u64>,
    /// Most connections that may be in the handshake (not yet logged in and open) at once (default
    /// 2048); past it a new socket is closed as soon as it is accepted, so unauthenticated clients
    /// cannot hold more than this many sockets and buffers.
    pub unauthenticated_connection_max: u64,
    /// Most consumers one channel may have (RabbitMQ `consumer_max_per_channel`; default: no limit).
    pub consumer_max_per_channel: Option<u64>,
    /// Octets of unfinished message bodies (sent in several frames, not yet complete) one connection
    /// may hold, all its channels together (default 4 × `max_message_size`); past it the connection is
    /// closed with 506 RESOURCE_ERROR.
    pub partial_content_limit: Option<u64>,
    /// Failed logins a source address may make before it is throttled (default 20).
    pub login_failure_burst: u32,
    /// Failed logins per second a throttled address gets back, and connections per second it may
    /// then start (default 10; 0 turns throttling off).
    pub login_failure_rate: f64,
    /// Heartbeat interval the server proposes in connection.tune, seconds (RabbitMQ default 60; 0 = off).
    pub heartbeat: u16,
    /// Largest frame the server accepts, octets (connection.tune frame_max; default 131072).
    pub frame_max: u32,
    /// Most channels per connection (connection.tune channel_max; RabbitMQ default 2047).
    pub channel_max: u16,
    /// Largest message body accepted, octets (RabbitMQ `max_message_size`, default 16 MiB).
    pub max_message_size: u64,
    /// Memory high watermark as a fraction of total RAM (RabbitMQ `vm_memory_high_watermark.relative`,
    /// default 0.4); message memory above it blocks publishers.
    pub memory_high_watermark: f64,
    /// Absolute memory high watermark in bytes; overrides the fraction when set.
    pub memory_high_watermark_absolute: Option<u64>,
    /// Free disk space (bytes, on `data_dir` or the working directory) below which publishers are blocked
    /// (RabbitMQ `disk_free_limit`, default 50 MB).
    pub disk_free_limit: u64,
    /// Octets of ready messages a queue keeps in memory (bodies plus 256 per message); beyond it new
    /// messages are paged out — a durable queue's to its log, a transient queue's to a scratch log
    /// under `<data-dir>/transient` — and read back in order (default 128 MiB: a consumer briefly
    /// behind a fast producer, a few hundred thousand small messages, does not page).
    pub queue_memory_limit: u64,
    /// Size at which a queue log starts a new segment file, octets (default 16 MiB); emptied segments
    /// are deleted.
    pub segment_size: u64,
    /// Delivery acknowledgement timeout, ms (RabbitMQ `consumer_timeout`, default 30 min); a queue's
    /// `x-consumer-timeout` overrides it.
    pub consumer_timeout: u64,
    /// Cluster membership; none for a single node.
    pub cluster: Option<ClusterConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec!["127.0.0.1:5672".into()],
            tls: None,
            management: ManagementConfig::default(),
            prometheus: PrometheusConfig::default(),
            ssl_cert_login_from: CertLoginFrom::default(),
            data_dir: None,
            plugin_dir: None,
            plugin_call_timeout: 100,
            plugin_instantiate_timeout: 2000,
            plugin_memory_limit: 64 << 20,
            plugin_memory_ceiling: 256 << 20,
            plugin_kv_max_entries: 1_000_000,
            plugin_kv_max_bytes: 64 << 20,
            log: "info".into(),
            log_format: LogFormat::default(),
            users: vec![User {
                name: "guest".into(),
                password: Some("guest".into()),
                password_hash: None,
                tags: vec!["administrator".into()],
                limits: Default::default(),
            }],
            permissions: vec![Permission {
                user: "guest".into(),
                vhost: "/".into(),
                configure: ".*".into(),
                write: ".*".into(),
                read: ".*".into(),
            }],
            loopback_users: vec!["guest".into()],
            policies: Vec::new(),
            definitions: None,
            vhosts: vec!["/".into()],
            vhost_limits: std::collections::HashMap::new(),
            connection_max: None,
            unauthenticated_connection_max: 2048,
            consumer_max_per_channel: None,
            partial_content_limit: None,
            login_failure_burst: 20,
            login_failure_rate: 10.0,
            heartbeat: 60,
            frame_max: 131_072,
            channel_max: 2047,
            max_message_size: 16 * 1024 * 1024,
            consumer_timeout: 1_800_000,
            cluster: None,
            memory_high_watermark: 0.4,
            memory_high_watermark_absolute: None,
            disk_free_limit: 50_000_000,
            queue_memory_limit: 128 << 20,
            segment_size: 16 << 20,
        }
    }
}

impl Config {
    /// The effective [`Config::partial_content_limit`], octets.
    pub fn partial_content_limit(&self) -> u64 {
        self.partial_content_limit
            .unwrap_or(self.max_message_size.saturating_mul(4))
    }

    /// Reads a TOML file over the defaults.
    ///
    /// # Errors
    /// The file cannot be read or parsed, or the result is invalid.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        let config: Config = toml::from_str(&text)
            .with_context(|| format!("parsing config file {}", path.display()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values a broker cannot run with.
    ///
    /// # Errors
    /// A message naming the bad setting.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.listen.is_empty() && self.tls.as_ref().is_none_or(|t| t.listen.is_empty()) {
            bail!("no listen address configured");
        }
        if self.frame_max < 4096 {
            bail!(
                "frame_max must be at least 4096 (AMQP 0-9-1 frame-min-size), got {}",
                self.frame_max
            );
        }
        if self.vhosts.is_empty() {
            bail!("at least one vhost must be configured");
        }
        if self.plugin_memory_ceiling < self.plugin_memory_limit {
            bail!(
                "plugin_memory_ceiling ({}) must be at least plugin_memory_limit ({})",
                self.plugin_memory_ceiling,
                self.plugin_memory_limit
            );
        }
        if self.max_message_size > 512 * 1024 * 1024 {
            bail!("max_message_size may be at most 512 MiB, as in RabbitMQ");
        }
        if !(self.memory_high_watermark > 0.0 && self.memory_high_watermark <= 1.0) {
            bail!(
                "memory_high_watermark must be in (0, 1], got {}",
                self.memory_high_watermark
            );
        }
        for u in &self.users {
            if u.password.is_some() == u.password_hash.is_some() {
                bail!(
                    "user '{}' needs exactly one of password and password_hash",
                    u.name
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugin_memory_ceiling_below_the_limit_is_refused() {
        let c = Config {
            plugin_memory_limit: 128 << 20,
            plugin_memory_ceiling: 64 << 20,
            ..Config::default()
        };
        let e = c.validate().expect_err("refused").to_string();
        assert!(e.contains("plugin_memory_ceiling"), "{e}");
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn file_overrides_defaults_and_unknown_keys_fail() {
        let dir = std::env::temp_dir().join(format!("warren-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("warren.toml");
        std::fs::write(&path, "listen = [\"0.0.0.0:5673\"]\nheartbeat = 10\n[[users]]\nname = \"a\"\npassword = \"b\"\n")
            .unwrap();
        let c = Config::from_file(&path).unwrap();
        assert_eq!(c.listen, ["0.0.0.0:5673"]);
        assert_eq!(c.heartbeat, 10);
        assert_eq!(
            c.users,
            [User {
                name: "a".into(),
                password: Some("b".into()),
                password_hash: None,
                tags: vec![],
                limits: Default::default(),
            }]
        );
        std::fs::write(
            &path,
            "[[policies]]\nname = \"ttl\"\npattern = \"^t\"\napply-to = \"queues\"\ndefinition = { message-ttl = 5 }\n",
        )
        .unwrap();
        let c = Config::from_file(&path).unwrap();
        assert_eq!(
            c.policies[0].definition["message-ttl"],
            serde_json::json!(5)
        );
        assert_eq!(c.policies[0].vhost, "/");
        std::fs::write(&path, "[[users]]\nname = \"a\"\n").unwrap();
        assert!(
            Config::from_file(&path).is_err(),
            "a user needs a password or a hash"
        );
        assert_eq!(c.frame_max, 131_072);
        std::fs::write(&path, "listn = []\n").unwrap();
        assert!(Config::from_file(&path).is_err());
        std::fs::write(&path, "frame_max = 100\n").unwrap();
        assert!(Config::from_file(&path).is_err());
    }
}
