//! Resource alarms (RabbitMQ docs/alarms.md, docs/memory.md, docs/disk-alarms.md): when message memory
//! passes the high watermark or free disk space falls below the limit, publishing connections are
//! blocked (`connection.blocked` to clients with the capability, docs/connection-blocked.md) and their
//! sockets are not read until the alarm clears, so a traffic spike cannot exhaust the broker.
//!
//! Memory is measured as [`crate::memory`] describes: accounted memory (messages, bodies still arriving,
//! queues, exchanges, bindings) against the watermark, and the process's RSS against the relative
//! watermark of the container's or machine's memory. The monitor samples both every 50 ms; a
//! publishing connection also checks accounted memory after each read batch
//! ([`raise_memory_alarm_if_over`]), so a fast publisher is blocked within one batch of crossing the
//! watermark rather than up to a tick later.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::memory::Memory;

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
    /// Accounted octets (messages, bodies arriving, entities) above which the memory alarm is raised.
    pub memory_bytes: u64,
    /// Resident octets of the process above which the memory alarm is raised: the relative watermark
    /// of the container's (cgroup v2 `memory.max`) or machine's memory.
    pub process_bytes: u64,
    /// Free bytes below which the disk alarm is raised.
    pub disk_free_bytes: u64,
    /// Where free space is measured.
    pub disk_path: PathBuf,
}

impl Limits {
    /// Limits from the configuration; the relative watermark is a fraction of the memory the process
    /// may use (cgroup v2 `memory.max`, else RAM; 8 GiB where neither can be read).
    pub fn from_config(config: &Config) -> Self {
        let total = crate::memory::available_bytes().unwrap_or(8 << 30);
        let relative = (total as f64 * config.memory_high_watermark) as u64;
        let memory_bytes = config.memory_high_watermark_absolute.unwrap_or(relative);
        Limits {
            memory_bytes,
            process_bytes: relative,
            disk_free_bytes: config.disk_free_limit,
            disk_path: config
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(".")),
        }
    }
}

/// Whether either memory measure is over its limit.
fn memory_over(limits: &Limits, memory: Memory) -> bool {
    memory.accounted() > limits.memory_bytes
        || crate::memory::resident_bytes().is_some_and(|rss| rss > limits.process_bytes)
}

/// Checks the limits (memory every 50 ms — the broker's `memory` account and the process's RSS —, disk
/// every second; a failing queue log write counts as a disk alarm at once) and publishes the state on
/// `alarms` until `stop` is cancelled.
pub(crate) async fn monitor(
    limits: Limits,
    memory: Memory,
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
            memory: memory_over(&limits, memory),
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

/// Raises the memory alarm at once when the broker's accounted `memory` is over the watermark (the
/// publish path's check; the monitor clears it once memory falls). Three atomic loads when under it.
pub(crate) fn raise_memory_alarm_if_over(
    alarms: &watch::Sender<AlarmState>,
    limits: &Limits,
    memory: Memory,
) {
    if memory.accounted() <= limits.memory_bytes || alarms.borrow().memory {
        return;
    }
    let state = AlarmState {
        memory: true,
        ..*alarms.borrow()
    };
    set(alarms, limits, state);
}
