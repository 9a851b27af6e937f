//! Message content on its way in: bodies that arrive in several frames, and the copy that keeps a small
//! message waiting in a queue from pinning its publisher's read buffer.
//!
//! A body in several frames is assembled in a [`PartialBody`], which grows geometrically (never past
//! the declared body size) and is charged, by capacity, against its connection's [`ContentBudget`] and
//! the memory alarm's account of bodies still arriving ([`crate::memory::Account::Partial`]). So a client that opens
//! many channels and leaves a large body unfinished on each cannot grow the broker unseen: past its
//! connection's budget it is closed with 506 RESOURCE_ERROR.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::memory::{Account, Memory};
use crate::message::MessageRef;

/// Content at most this long (properties and body) routed to a queue that keeps it until a consumer
/// comes is copied out of the read buffer into allocations of its own, so that a small message kept
/// for long holds only its own octets rather than the 64 KiB or more of buffer it arrived in (up to
/// 4 000× a 16-octet message). Longer content stays a zero-copy slice: copying costs in proportion to
/// size, while what a kept message can pin is at most ~64× its size past this bound. Messages to
/// queues with consumers are not copied: they leave in the order they came, so a read buffer's
/// messages are freed together (and the copy would cost the hot path; A/B in BENCHMARKS.md).
pub(crate) const SMALL_CONTENT_MAX: usize = 1024;

/// The first reservation of a body arriving in several frames, at most (then it doubles).
const FIRST_RESERVATION_MAX: usize = 1 << 20;

/// The property list of a message without properties: property flags 0.
static NO_PROPERTIES: [u8; 2] = [0, 0];

/// Gives a message of at most [`SMALL_CONTENT_MAX`] octets (properties and body) copies of its
/// octets in allocations of its own, when nothing else holds the message yet; unchanged otherwise.
/// Each copy is a plain `Vec` turned into `Bytes` (one allocation, no reference count until it is
/// cloned); an empty property list needs none. The lengths do not change, so the message's memory
/// accounting stays right.
pub(crate) fn own_small_content(message: &mut MessageRef) {
    if message.raw_properties.len() + message.body.len() <= SMALL_CONTENT_MAX {
        own_content(message);
    }
}

/// [`own_small_content`] whatever the size: for a message kept for a long time (a delayed message),
/// whose slice of a read buffer would pin the whole buffer meanwhile.
pub(crate) fn own_content(message: &mut MessageRef) {
    let Some(m) = Arc::get_mut(message) else {
        return;
    };
    m.raw_properties = if m.raw_properties[..] == NO_PROPERTIES {
        Bytes::from_static(&NO_PROPERTIES)
    } else {
        Bytes::copy_from_slice(&m.raw_properties)
    };
    m.body = Bytes::copy_from_slice(&m.body);
}

/// Octets of unfinished bodies one connection may hold at once.
#[derive(Debug)]
pub(crate) struct ContentBudget {
    used: AtomicUsize,
    limit: usize,
    /// The broker's account, charged with what the bodies hold ([`Account::Partial`]).
    memory: Memory,
}

impl ContentBudget {
    /// A budget of `limit` octets, charged to `memory` as well.
    pub(crate) fn new(limit: usize, memory: Memory) -> Arc<Self> {
        Arc::new(ContentBudget {
            used: AtomicUsize::new(0),
            limit,
            memory,
        })
    }

    /// Octets charged now.
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// Growing a body would take its connection past its [`ContentBudget`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unfinished message bodies on this connection would exceed {limit} octets")]
pub(crate) struct BudgetExceeded {
    /// The connection's budget, octets.
    pub limit: usize,
}

/// A body arriving in several frames; its reservation is charged until it is frozen or dropped.
#[derive(Debug)]
pub(crate) struct PartialBody {
    buf: BytesMut,
    charged: usize,
    budget: Arc<ContentBudget>,
}

impl PartialBody {
    /// An empty body charged to `budget`.
    pub(crate) fn new(budget: Arc<ContentBudget>) -> Self {
        PartialBody {
            buf: BytesMut::new(),
            charged: 0,
            budget,
        }
    }

    /// Octets received so far.
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing was received yet.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Appends `data` to a body declared `expected` octets long (the caller has checked that it fits).
    ///
    /// # Errors
    /// [`BudgetExceeded`] when the growth this needs does not fit the connection's budget; nothing is
    /// appended then.
    pub(crate) fn extend(&mut self, data: &[u8], expected: usize) -> Result<(), BudgetExceeded> {
        let needed = self.buf.len() + data.len();
        if needed > self.buf.capacity() {
            let grown = (2 * self.buf.capacity()).max(FIRST_RESERVATION_MAX.min(expected));
            let target = needed.max(grown.min(expected));
            let delta = target.saturating_sub(self.charged);
            let used = self.budget.used.fetch_add(delta, Ordering::AcqRel);
            if used + delta > self.budget.limit {
                self.budget.used.fetch_sub(delta, Ordering::AcqRel);
                return Err(BudgetExceeded {
                    limit: self.budget.limit,
                });
            }
            self.budget.memory.add(Account::Partial, delta);
            self.charged += delta;
            self.buf.reserve(target - self.buf.len());
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// The complete body (its charge is released).
    pub(crate) fn freeze(mut self) -> Bytes {
        std::mem::take(&mut self.buf).freeze()
    }
}

impl Drop for PartialBody {
    fn drop(&mut self) {
        if self.charged > 0 {
            self.budget.used.fetch_sub(self.charged, Ordering::AcqRel);
            self.budget.memory.sub(Account::Partial, self.charged);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_charged_until_done_and_refused_past_the_budget() {
        let budget = ContentBudget::new(3 << 20, &crate::memory::TEST_MEMORY);
        let mut a = PartialBody::new(Arc::clone(&budget));
        a.extend(&[1; 1000], 4 << 20).unwrap();
        assert_eq!(budget.used(), 1 << 20, "first reservation: 1 MiB");
        a.extend(&vec![2; 1 << 20], 4 << 20).unwrap();
        assert_eq!(budget.used(), 2 << 20, "then it doubles");
        let mut b = PartialBody::new(Arc::clone(&budget));
        assert_eq!(
            b.extend(&vec![3; (1 << 20) + 1], 2 << 20),
            Err(BudgetExceeded { limit: 3 << 20 })
        );
        assert!(b.is_empty());
        drop(b);
        let body = a.freeze();
        assert_eq!(body.len(), 1000 + (1 << 20));
        assert_eq!(budget.used(), 0);
        // A small body reserves only what it is declared to be.
        let mut c = PartialBody::new(Arc::clone(&budget));
        c.extend(b"abc", 10).unwrap();
        assert_eq!(budget.used(), 10);
        drop(c);
        assert_eq!(budget.used(), 0);
    }

    fn message(raw_properties: Bytes, body: Bytes) -> MessageRef {
        Arc::new(crate::message::Message::new(
            &crate::memory::TEST_MEMORY,
            "x".into(),
            "k".into(),
            amq_protocol::protocol::BasicProperties::default(),
            raw_properties,
            body,
        ))
    }

    #[test]
    fn small_content_gets_its_own_allocation() {
        let buffer = Bytes::from(vec![7u8; 64 * 1024]);
        let mut m = message(buffer.slice(0..10), buffer.slice(10..40));
        own_small_content(&mut m);
        assert_eq!((m.raw_properties.len(), m.body.len()), (10, 30));
        assert_eq!(&m.body[..], &[7u8; 30][..]);
        // Neither points into the 64 KiB buffer any more.
        let range = buffer.as_ptr() as usize..buffer.as_ptr() as usize + buffer.len();
        assert!(!range.contains(&(m.body.as_ptr() as usize)));
        assert!(!range.contains(&(m.raw_properties.as_ptr() as usize)));
        let mut big = message(Bytes::new(), buffer.slice(..));
        own_small_content(&mut big);
        assert_eq!(
            big.body.as_ptr(),
            buffer.as_ptr(),
            "large bodies stay zero-copy"
        );
        // A message someone else holds is left as it is.
        let mut shared = message(Bytes::new(), buffer.slice(0..8));
        let other = Arc::clone(&shared);
        own_small_content(&mut shared);
        assert_eq!(shared.body.as_ptr(), buffer.as_ptr());
        drop(other);
    }
}
