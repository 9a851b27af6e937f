//! What the memory alarm measures (RabbitMQ docs/memory.md, docs/alarms.md).
//!
//! Two measures, both checked by [`crate::alarm`]:
//! - **Accounted memory**, compared with the watermark (`memory_high_watermark`, or
//!   `memory_high_watermark_absolute`): the octets of live messages, of message bodies still arriving
//!   ([`crate::content`]), and an estimate of what each queue, exchange and binding costs. It is exact
//!   or close, cheap to read (atomic counters), and falls as soon as the things it counts are freed.
//! - **The process's resident memory** (RSS, `/proc/self/statm`), compared with the relative watermark
//!   of the memory the process may use — the cgroup v2 `memory.max` of its container when one is set,
//!   else the machine's RAM — as RabbitMQ compares its total memory. It catches growth the counters do
//!   not see. RSS seldom falls when memory is freed (allocators keep it), so this is a backstop, set
//!   high by default (0.4 of RAM), not the everyday measure.

use std::sync::atomic::{AtomicUsize, Ordering};

/// One broker's accounted memory: three counters of octets. Every message, unfinished body, queue,
/// exchange and binding of the broker charges it; the broker's alarm reads it. Each broker has its own
/// (tests run many brokers in one process), borrowed for the process's life ([`Memory`]) so that a
/// message carries it without a reference count on the publish path.
#[derive(Debug, Default)]
pub struct MemoryAccount {
    /// Octets held by live messages (bodies and encoded properties).
    messages: AtomicUsize,
    /// Octets reserved by message bodies still arriving.
    partial: AtomicUsize,
    /// Estimated octets of queues, exchanges and bindings.
    entities: AtomicUsize,
}

/// A broker's [`MemoryAccount`], as everything that charges it holds it.
pub type Memory = &'static MemoryAccount;

/// The account the crate's unit tests charge.
#[cfg(test)]
pub(crate) static TEST_MEMORY: MemoryAccount = MemoryAccount::new();

impl MemoryAccount {
    /// An empty account (for a `static`).
    pub const fn new() -> Self {
        MemoryAccount {
            messages: AtomicUsize::new(0),
            partial: AtomicUsize::new(0),
            entities: AtomicUsize::new(0),
        }
    }

    /// A new account that lives as long as the process: one per broker (three counters; a process
    /// that starts brokers over and over, like the test suite, keeps 24 octets per broker).
    pub fn leaked() -> Memory {
        Box::leak(Box::new(MemoryAccount::new()))
    }

    fn counter(&self, account: Account) -> &AtomicUsize {
        match account {
            Account::Messages => &self.messages,
            Account::Partial => &self.partial,
            Account::Entities => &self.entities,
        }
    }

    /// Adds `n` octets to `account`.
    pub fn add(&self, account: Account, n: usize) {
        self.counter(account).fetch_add(n, Ordering::Relaxed);
    }

    /// Takes `n` octets from `account` (what [`MemoryAccount::add`] put there).
    pub fn sub(&self, account: Account, n: usize) {
        self.counter(account).fetch_sub(n, Ordering::Relaxed);
    }

    /// Octets now in `account`.
    pub fn get(&self, account: Account) -> usize {
        self.counter(account).load(Ordering::Relaxed)
    }

    /// Accounted memory: messages, bodies still arriving, entities.
    pub fn accounted(&self) -> u64 {
        (self.get(Account::Messages) + self.get(Account::Partial) + self.get(Account::Entities))
            as u64
    }
}

/// What a queue costs beyond its name and arguments, octets: measured as ~1.35 KiB per queue (RSS of
/// 200 000 declared queues), less what the name and arguments add.
pub(crate) const QUEUE_OVERHEAD: usize = 1280;
/// What a queued message costs beside its body, octets: the management API's per-queue `memory`
/// estimate and the queue paging limit's per-message charge (measured: 1 000 000 queued 16 B
/// messages, paging off, take ~258 MiB of RSS: the shared `Message`, its routing key, its own copy of
/// a small body, its queue entry).
pub(crate) const QUEUED_MESSAGE_OVERHEAD: usize = 256;
/// What an exchange costs beyond its name and arguments, octets.
pub(crate) const EXCHANGE_OVERHEAD: usize = 512;
/// What a binding costs beyond its key and arguments, octets.
pub(crate) const BINDING_OVERHEAD: usize = 128;

/// Encoded octets of a field table, 0 when empty (no encoding then): what arguments add to an entity.
pub(crate) fn table_cost(t: &amq_protocol::types::FieldTable) -> usize {
    if t.inner().is_empty() {
        0
    } else {
        crate::protocol::values::encode_table(t).len()
    }
}

/// Which counter a [`Charge`] or an adjustment goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Account {
    /// Live messages.
    Messages,
    /// Bodies still arriving.
    Partial,
    /// Queues, exchanges and bindings.
    Entities,
}

/// Octets charged to an account for as long as the value lives.
#[derive(Debug)]
pub(crate) struct Charge {
    memory: Memory,
    account: Account,
    octets: usize,
}

impl Charge {
    /// Charges `octets` to `memory`'s `account` until dropped.
    pub(crate) fn new(memory: Memory, account: Account, octets: usize) -> Self {
        memory.add(account, octets);
        Charge {
            memory,
            account,
            octets,
        }
    }

    /// The memory account charged.
    pub(crate) fn memory(&self) -> Memory {
        self.memory
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.memory.sub(self.account, self.octets);
    }
}

/// The process's resident set size, octets (`/proc/self/statm`); `None` where it cannot be read.
pub(crate) fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

/// The kernel's page size (statm counts pages), read once from the first mapping in
/// `/proc/self/smaps`; 4 KiB where it cannot be read.
fn page_size() -> u64 {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        std::fs::read_to_string("/proc/self/smaps")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("KernelPageSize:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .map_or(4096, |kib| kib * 1024)
    })
}

/// The memory this process may use, octets: its cgroup v2 `memory.max` when set (a container's
/// limit), else the machine's RAM (`/proc/meminfo` MemTotal); `None` when neither can be read.
pub(crate) fn available_bytes() -> Option<u64> {
    let ram = total_ram();
    match cgroup_limit() {
        Some(limit) => Some(ram.map_or(limit, |r| r.min(limit))),
        None => ram,
    }
}

fn total_ram() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The memory limit of the process's cgroup: v2 `memory.max` of the cgroup named `0::/path` in
/// `/proc/self/cgroup` ("max" means none), else v1 `memory.limit_in_bytes` of the `memory`
/// controller's cgroup (v1 reports "no limit" as a huge number, which the RAM bound then wins over).
fn cgroup_limit() -> Option<u64> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let root = std::path::Path::new("/sys/fs/cgroup");
    let v2 = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .and_then(|path| {
            let file = root.join(path.trim_start_matches('/')).join("memory.max");
            std::fs::read_to_string(file).ok()
        });
    if let Some(text) = v2 {
        return parse_memory_max(&text);
    }
    let path = cgroup.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then_some(path)
    })?;
    let file = root
        .join("memory")
        .join(path.trim_start_matches('/'))
        .join("memory.limit_in_bytes");
    parse_memory_max(&std::fs::read_to_string(file).ok()?)
}

/// A cgroup v2 `memory.max` value: octets, or `None` for "max".
fn parse_memory_max(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_measures_and_cgroup_values() {
        assert!(resident_bytes().is_some_and(|r| r > 0));
        assert!(available_bytes().is_some_and(|a| a > 0));
        assert_eq!(parse_memory_max("max\n"), None);
        assert_eq!(parse_memory_max("536870912\n"), Some(536_870_912));
    }

    #[test]
    fn accounts_are_per_broker_and_charges_give_back() {
        let (a, b) = (MemoryAccount::leaked(), MemoryAccount::leaked());
        let charge = Charge::new(a, Account::Entities, 100);
        a.add(Account::Messages, 10);
        assert_eq!((a.accounted(), b.accounted()), (110, 0));
        drop(charge);
        a.sub(Account::Messages, 10);
        assert_eq!(a.accounted(), 0);
    }
}
