//! Resource alarms (RabbitMQ docs/alarms.md, docs/memory.md, docs/disk-alarms.md): when message memory
//! passes the high watermark or free disk space falls below the limit, publishing connections are
//! blocked (`connection.blocked` to clients with the capability, docs/connection-blocked.md) and their
//! sockets are not read until the alarm clears, so a traffic spike cannot exhaust the broker.
//!
//! Memory is measured as the bytes held by live messages ([`crate::message::message_bytes`]): exact,
//! cheap to read, and it falls as consumers drain queues (process RSS would not, with most allocators).
//! The monitor samples it every 50 ms; a publishing connection also checks it after each read batch
//! ([`raise_memory_alarm_if_over`]), so a fast publisher is blocked within one batch of crossing the
//! watermark rather than up to a tick later.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;

/// Which alarms are raised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlarmState {
    /// Message memory is over the high watermark.
    pub memory: bool,
    /// Free disk space is under the limit.
    pub disk: bool,
}

impl AlarmState {
    /// Whether publishers must be blocked.
    pub fn any(self) -> bool {
        self.memory || self.disk
    }

    /// The `reason` of connection.blocked, as RabbitMQ words it.
    pub fn reason(self) -> &'static str {
        if self.memory {
            "low on memory"
        } else {
            "low on disk space"
        }
    }
}

/// The effective limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Message bytes above which the memory alarm is raised.
    pub memory_bytes: u64,
    /// Free bytes below which the disk alarm is raised.
    pub disk_free_bytes: u64,
    /// Where free space is measured.
    pub disk_path: PathBuf,
}

impl Limits {
    /// Limits from the configuration; the relative watermark is a fraction of total RAM
    /// (`/proc/meminfo`, or 8 GiB where it cannot be read).
    pub fn from_config(config: &Config) -> Self {
        let total = total_memory().unwrap_or(8 << 30);
        let memory_bytes = config
            .memory_high_watermark_absolute
            .unwrap_or((total as f64 * config.memory_high_watermark) as u64);
        Limits {
            memory_bytes,
            disk_free_bytes: config.disk_free_limit,
            disk_path: config
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(".")),
        }
    }
}

fn total_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Checks the limits (memory every 50 ms, disk every second; a failing queue log write counts as a disk
/// alarm at once) and publishes the state on `alarms` until
/// `stop` is cancelled.
pub async fn monitor(
    limits: Limits,
    alarms: std::sync::Arc<watch::Sender<AlarmState>>,
    store: Option<std::sync::Arc<crate::store::Store>>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut disk = false;
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if n.is_multiple_of(20) {
            disk = match fs4::available_space(&limits.disk_path) {
                Ok(free) => free < limits.disk_free_bytes,
                Err(_) => false, // cannot measure: do not block publishers on a guess
            };
        }
        n += 1;
        let state = AlarmState {
            memory: crate::message::message_bytes() as u64 > limits.memory_bytes,
            // A failing queue log write (disk full, I/O error) raises the disk alarm too.
            disk: disk || store.as_ref().is_some_and(|s| s.io_error()),
        };
        set(&alarms, &limits, state);
    }
}

/// Publishes `state`, logging each alarm that changes.
fn set(alarms: &watch::Sender<AlarmState>, limits: &Limits, state: AlarmState) {
    alarms.send_if_modified(|current| {
        if *current == state {
            return false;
        }
        if state.memory != current.memory {
            if state.memory {
                warn!(
                    limit = limits.memory_bytes,
                    "memory alarm set: blocking publishers"
                );
            } else {
                info!("memory alarm cleared");
            }
        }
        if state.disk != current.disk {
            if state.disk {
                warn!(limit = limits.disk_free_bytes, path = %limits.disk_path.display(), "disk alarm set: blocking publishers");
            } else {
                info!("disk alarm cleared");
            }
        }
        *current = state;
        true
    });
}

/// Raises the memory alarm at once when message memory is over the watermark (the publish path's
/// check; the monitor clears it once memory falls). One atomic load when under it.
pub fn raise_memory_alarm_if_over(alarms: &watch::Sender<AlarmState>, limits: &Limits) {
    if crate::message::message_bytes() as u64 <= limits.memory_bytes || alarms.borrow().memory {
        return;
    }
    let state = AlarmState {
        memory: true,
        ..*alarms.borrow()
    };
    set(alarms, limits, state);
}
