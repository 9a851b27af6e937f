//! Batch routing: decisions an exchange type computes for a run of messages in one go
//! ([`super::ExchangeType::prepare`]) and hands back, as a value, to the routing of each of those
//! messages ([`super::ExchangeType::route_prepared`]).
//!
//! Worth it for plugin types: a plugin call costs ~0.5 µs of fixed machinery (entering the
//! component, lowering and lifting) — far more in an interpreted guest such as a componentize-py
//! plugin — which one `route-keys` call (decisions by routing key alone) or `route-messages` call
//! (decisions on the whole message) shares among up to [`super::ExchangeType::batch_limit`]
//! messages. The decisions
//! travel with the publishes that asked for them (the channel holds the [`RouteBatch`]), so there is
//! no per-thread state and nothing assumes where the routing runs.

use std::ops::Range;
use std::sync::Arc;

use super::Exchange;

/// Routing decisions for a run of routing keys, in publish order: for each key, the ids of the bindings
/// it matched (the exchange type's own numbering), in the flat form of the WIT `route-keys` answer.
/// Made and read only by the exchange type that answered [`super::ExchangeType::prepare`].
#[derive(Debug, Default)]
pub struct Prepared {
    /// The state of the exchange (bindings, plugin instance) the decisions were made for; the type
    /// compares it with its current one and routes normally when they differ.
    pub generation: u64,
    /// The keys asked for, concatenated; key `i` ends at `key_ends[i]`.
    pub keys: Vec<u8>,
    /// End offset of each key in `keys`.
    pub key_ends: Vec<u32>,
    /// The binding ids decided, concatenated; key `i`'s end at `id_ends[i]`.
    pub ids: Vec<u32>,
    /// End offset of each key's ids in `ids`.
    pub id_ends: Vec<u32>,
    /// For decisions made on whole messages: the address of each key's message (decisions are
    /// then taken only for that very message); empty when the decisions depend on the key alone.
    pub messages: Vec<usize>,
    /// The next key expected to be routed.
    next: usize,
}

impl Prepared {
    /// The ids decided for `key` of `message` when it is the next key in line (then consumed);
    /// `None` when the next key differs, or the decisions were made on whole messages and the next
    /// one is another message (that message then routes normally).
    pub fn take(&mut self, key: &str, message: &crate::message::MessageRef) -> Option<&[u32]> {
        if let Some(&expected) = self.messages.get(self.next) {
            if expected != Self::address(message) {
                return None;
            }
        }
        let range = self.next_range(key)?;
        self.next += 1;
        self.ids.get(range)
    }

    /// A message's identity for [`Prepared::messages`].
    pub fn address(message: &crate::message::MessageRef) -> usize {
        Arc::as_ptr(message) as usize
    }

    fn next_range(&self, key: &str) -> Option<Range<usize>> {
        let i = self.next;
        let end = *self.key_ends.get(i)? as usize;
        let start = i.checked_sub(1).map_or(0, |p| self.key_ends[p] as usize);
        if self.keys.get(start..end)? != key.as_bytes() {
            return None;
        }
        let id_start = i.checked_sub(1).map_or(0, |p| self.id_ends[p] as usize);
        Some(id_start..*self.id_ends.get(i)? as usize)
    }

    /// Whether `id_ends` has one ascending entry per key, within `ids` (else the answer is unusable).
    pub fn is_well_formed(&self) -> bool {
        self.id_ends.len() == self.key_ends.len()
            && self.id_ends.windows(2).all(|w| w[0] <= w[1])
            && self
                .id_ends
                .last()
                .is_none_or(|&e| e as usize <= self.ids.len())
    }

    /// How many keys were asked for.
    pub fn len(&self) -> usize {
        self.key_ends.len()
    }

    /// Whether no key was asked for.
    pub fn is_empty(&self) -> bool {
        self.key_ends.is_empty()
    }
}

/// Decisions prepared by one exchange, to be passed to [`crate::vhost::VHost::route`] for each of the
/// messages they were made for; ignored when routing through any other exchange.
#[derive(Debug)]
pub struct RouteBatch {
    /// The exchange that prepared them.
    pub exchange: Arc<Exchange>,
    /// Its decisions.
    pub decisions: Prepared,
}

impl RouteBatch {
    /// Whether these decisions are `exchange`'s.
    pub fn is_for(&self, exchange: &Arc<Exchange>) -> bool {
        Arc::ptr_eq(&self.exchange, exchange)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Message, MessageRef};
    use amq_protocol::protocol::BasicProperties;

    fn message(key: &str) -> MessageRef {
        Arc::new(Message::new(
            crate::memory::MemoryAccount::leaked(),
            "x".into(),
            key.into(),
            BasicProperties::default(),
            bytes::Bytes::new(),
            bytes::Bytes::new(),
        ))
    }

    fn prepared(keys: &[&str], ids: &[&[u32]]) -> Prepared {
        let mut p = Prepared::default();
        for k in keys {
            p.keys.extend_from_slice(k.as_bytes());
            p.key_ends.push(p.keys.len() as u32);
        }
        for i in ids {
            p.ids.extend_from_slice(i);
            p.id_ends.push(p.ids.len() as u32);
        }
        p
    }

    #[test]
    fn decisions_are_taken_in_order() {
        let m = message("any");
        let mut p = prepared(&["a", "bb", "a"], &[&[1], &[], &[1, 2]]);
        assert!(p.is_well_formed());
        assert_eq!(p.take("a", &m), Some(&[1][..]));
        assert_eq!(p.take("bb", &m), Some(&[][..]));
        assert_eq!(p.take("a", &m), Some(&[1, 2][..]));
        assert_eq!(p.take("a", &m), None, "all consumed");
    }

    #[test]
    fn a_key_out_of_line_is_not_answered_and_consumes_nothing() {
        let m = message("any");
        let mut p = prepared(&["a", "b"], &[&[1], &[2]]);
        assert_eq!(p.take("b", &m), None);
        assert_eq!(p.take("a", &m), Some(&[1][..]));
        assert_eq!(p.take("b", &m), Some(&[2][..]));
    }

    #[test]
    fn decisions_on_whole_messages_are_taken_only_for_their_message() {
        let (first, second, other) = (message("a"), message("a"), message("a"));
        let mut p = prepared(&["a", "a"], &[&[1], &[2]]);
        p.messages = vec![Prepared::address(&first), Prepared::address(&second)];
        assert_eq!(p.take("a", &other), None, "same key, another message");
        assert_eq!(p.take("a", &first), Some(&[1][..]));
        assert_eq!(
            p.take("cc-key", &second),
            None,
            "its CC key: routed normally"
        );
        assert_eq!(p.take("a", &second), Some(&[2][..]));
    }

    #[test]
    fn malformed_answers_are_detected() {
        assert!(
            !prepared(&["a", "b"], &[&[1]]).is_well_formed(),
            "one answer short"
        );
        let mut p = prepared(&["a", "b"], &[&[1], &[2]]);
        p.id_ends = vec![2, 1];
        assert!(!p.is_well_formed(), "descending ends");
        p.id_ends = vec![1, 9];
        assert!(!p.is_well_formed(), "past the ids");
    }
}
