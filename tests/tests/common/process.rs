//! The real `warren` binary as a child process: for tests that kill it with SIGKILL or measure its
//! memory. `WARREN_BIN` names the binary (default `target/debug/warren`; `cargo build --bin warren`
//! first, as `scripts/test.sh` does).
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};

/// A running broker process; killed (SIGKILL) when dropped.
pub struct Process {
    pub child: Child,
    pub port: u16,
    /// The management HTTP API's port.
    pub mgmt_port: u16,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The broker binary: `WARREN_BIN`, else `target/debug/warren`.
pub fn binary() -> PathBuf {
    let bin = std::env::var("WARREN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            let target = std::env::var("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
            target.join("debug/warren")
        });
    assert!(
        bin.exists(),
        "{} missing: run `cargo build --bin warren` first",
        bin.display()
    );
    bin
}

impl Process {
    /// The broker with its data in `dir`.
    pub fn start(dir: &Path) -> Process {
        Process::start_with(dir, None)
    }

    /// A command for the binary on fresh AMQP and management ports, logging at `log`, with its data in
    /// `dir`.
    fn command(dir: &Path, log: &str) -> (Command, u16, u16) {
        let port = free_port();
        let mgmt_port = free_port();
        let mut cmd = Command::new(binary());
        cmd.args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--management-listen",
            &format!("127.0.0.1:{mgmt_port}"),
            // A port of its own: brokers of parallel tests must not contend for 15692.
            "--prometheus-listen",
            "127.0.0.1:0",
            "--log",
            log,
            "--data-dir",
        ])
        .arg(dir);
        (cmd, port, mgmt_port)
    }

    /// Spawns `cmd` and waits (up to `tries` × 25 ms) until its AMQP port accepts connections.
    fn spawn(mut cmd: Command, port: u16, mgmt_port: u16, tries: u32) -> Process {
        let child = cmd.stderr(Stdio::inherit()).spawn().unwrap();
        for _ in 0..tries {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Process {
            child,
            port,
            mgmt_port,
        }
    }

    /// The broker with its data in `dir` and, if given, a config file holding `config` (TOML).
    pub fn start_with(dir: &Path, config: Option<&str>) -> Process {
        let (mut cmd, port, mgmt_port) = Process::command(dir, "warn");
        if let Some(text) = config {
            std::fs::create_dir_all(dir).unwrap();
            let path = dir.with_extension("toml");
            std::fs::write(&path, text).unwrap();
            cmd.arg("--config").arg(path);
        }
        cmd.stdout(Stdio::null());
        Process::spawn(cmd, port, mgmt_port, 200)
    }

    /// The broker with its data in `dir`, plugins from `plugins`, logging at info into the file `log`
    /// (without colours).
    pub fn start_logged(dir: &Path, plugins: &Path, log: &Path) -> Process {
        Process::start_logged_with(dir, plugins, log, None)
    }

    /// [`Process::start_logged`] with, if given, a config file holding `config` (TOML).
    pub fn start_logged_with(
        dir: &Path,
        plugins: &Path,
        log: &Path,
        config: Option<&str>,
    ) -> Process {
        let (mut cmd, port, mgmt_port) = Process::command(dir, "info");
        if let Some(text) = config {
            std::fs::create_dir_all(dir).unwrap();
            let path = dir.with_extension("toml");
            std::fs::write(&path, text).unwrap();
            cmd.arg("--config").arg(path);
        }
        let out = std::fs::File::create(log).expect("log file");
        cmd.arg("--plugin-dir")
            .arg(plugins)
            .env("NO_COLOR", "1")
            .stdout(out);
        Process::spawn(cmd, port, mgmt_port, 400)
    }

    /// The broker's address.
    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// A lapin connection as guest to `/`.
    pub async fn connect(&self) -> Connection {
        let uri = format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port);
        Connection::connect(&uri, ConnectionProperties::default())
            .await
            .unwrap()
    }

    /// The process's resident set size, octets (`VmRSS` in `/proc/PID/status`).
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("process status");
        let kib: u64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .expect("VmRSS");
        kib * 1024
    }

    /// SIGKILL.
    pub fn kill(self) {
        drop(self);
    }
}
