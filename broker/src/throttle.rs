//! Failed-login throttling per source address.
//!
//! Each address may fail to log in `burst` times for free; the budget refills at `rate` failures per
//! second. An address that has spent it is penalised: each new connection from it waits for its own
//! slot, `1 / rate` seconds after the previous one's, before the broker sends connection.start — so
//! many connections in parallel guess no faster than one after another. A successful login clears the
//! penalty. A connection whose slot is further away than the handshake timeout is closed at once.
//! (RabbitMQ has no such throttle; it answers about 1 000 wrong passwords a second on this machine,
//! Warren about 6 000 without one.)

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Addresses remembered at most; past it the oldest entries go (an attacker with many addresses gets
/// each one's free budget, nothing more).
const MAX_TRACKED: usize = 100_000;

/// One address's failure budget and the next free slot while it is penalised.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Failures still free (refills at `rate` per second up to `burst`).
    budget: f64,
    /// When `budget` was last brought up to date.
    updated: Instant,
    /// The earliest time the next connection from this address may start its handshake.
    next_slot: Instant,
}

/// What a new connection from an address must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead now.
    Now,
    /// Wait this long, then go ahead.
    After(Duration),
    /// Too far in the queue: close the socket.
    Refuse,
}

/// Failed-login budgets by source address; shared by all connections.
#[derive(Debug)]
pub struct LoginThrottle {
    burst: f64,
    rate: f64,
    entries: Mutex<HashMap<IpAddr, Entry>>,
}

impl LoginThrottle {
    /// `burst` free failures per address, refilled at `rate` per second (`rate` 0 turns throttling
    /// off).
    pub fn new(burst: u32, rate: f64) -> Self {
        LoginThrottle {
            burst: f64::from(burst),
            rate,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn refill(&self, e: &mut Entry, now: Instant) {
        let elapsed = now.saturating_duration_since(e.updated).as_secs_f64();
        e.budget = (e.budget + elapsed * self.rate).min(self.burst);
        e.updated = now;
    }

    /// Decides when a new connection from `ip` may start; `max_wait` is how long it may be made to
    /// wait at most (the handshake timeout).
    pub fn admit(&self, ip: IpAddr, max_wait: Duration) -> Admission {
        if self.rate <= 0.0 {
            return Admission::Now;
        }
        let now = Instant::now();
        let mut entries = crate::sync::lock(&self.entries);
        let Some(e) = entries.get_mut(&ip) else {
            return Admission::Now;
        };
        self.refill(e, now);
        if e.budget >= 1.0 {
            return Admission::Now;
        }
        let slot = e.next_slot.max(now);
        if slot.duration_since(now) > max_wait {
            return Admission::Refuse;
        }
        e.next_slot = slot + Duration::from_secs_f64(1.0 / self.rate);
        if slot <= now {
            Admission::Now
        } else {
            Admission::After(slot - now)
        }
    }

    /// Records a failed login from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        if self.rate <= 0.0 {
            return;
        }
        let now = Instant::now();
        let mut entries = crate::sync::lock(&self.entries);
        if entries.len() >= MAX_TRACKED && !entries.contains_key(&ip) {
            if let Some(oldest) = entries
                .iter()
                .min_by_key(|(_, e)| e.updated)
                .map(|(ip, _)| *ip)
            {
                entries.remove(&oldest);
            }
        }
        let e = entries.entry(ip).or_insert(Entry {
            budget: self.burst,
            updated: now,
            next_slot: now,
        });
        self.refill(e, now);
        e.budget -= 1.0;
    }

    /// Records a successful login from `ip`: its penalty ends.
    pub fn succeeded(&self, ip: IpAddr) {
        let mut entries = crate::sync::lock(&self.entries);
        entries.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_is_free_then_slots_are_spaced() {
        let t = LoginThrottle::new(3, 10.0);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let wait = Duration::from_secs(10);
        for _ in 0..3 {
            assert_eq!(t.admit(ip, wait), Admission::Now);
            t.failed(ip);
        }
        // Budget spent: the first slot is now, each next one 100 ms later.
        assert_eq!(t.admit(ip, wait), Admission::Now);
        let Admission::After(d) = t.admit(ip, wait) else {
            panic!("second connection waits")
        };
        assert!(d > Duration::from_millis(50) && d <= Duration::from_millis(100));
        let Admission::After(d) = t.admit(ip, wait) else {
            panic!("third waits longer")
        };
        assert!(d > Duration::from_millis(150));
        assert_eq!(t.admit(ip, Duration::from_millis(100)), Admission::Refuse);
        assert_eq!(t.admit(other, wait), Admission::Now, "per address");
        t.succeeded(ip);
        assert_eq!(t.admit(ip, wait), Admission::Now);
        let off = LoginThrottle::new(0, 0.0);
        off.failed(ip);
        assert_eq!(off.admit(ip, wait), Admission::Now);
    }
}
