//! `topic`: binding keys are dot-separated words where `*` matches exactly one word and `#` matches zero
//! or more; routing keys are matched word by word (RabbitMQ docs/exchanges.md, `rabbit_exchange_type_topic`).
//!
//! Bindings are kept in a trie keyed by word, so routing cost follows the routing key's length and the
//! wildcards on its path, not the number of bindings. As in RabbitMQ, the empty key has zero words and
//! `a..b` has an empty middle word.

use std::collections::HashMap;

use super::{Binding, Destination, ExchangeType, RouteError};
use crate::message::MessageRef;

/// Most words a 255-byte key can have (127 dots).
const MAX_WORDS: usize = 128;

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    star: Option<Box<Node>>,
    hash: Option<Box<Node>>,
    destinations: Vec<Destination>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.star.is_none()
            && self.hash.is_none()
            && self.destinations.is_empty()
    }

    fn child_mut(&mut self, word: &str) -> &mut Node {
        match word {
            "*" => self.star.get_or_insert_with(Default::default),
            "#" => self.hash.get_or_insert_with(Default::default),
            _ => self.children.entry(word.into()).or_default(),
        }
    }

    /// Removes `dest` under the path `words`; returns whether this node is now empty.
    fn remove(&mut self, words: &[&str], dest: &Destination) -> bool {
        match words.split_first() {
            None => {
                if let Some(pos) = self.destinations.iter().position(|d| d.same(dest)) {
                    self.destinations.swap_remove(pos);
                }
            }
            Some((&"*", rest)) => {
                if self.star.as_mut().is_some_and(|n| n.remove(rest, dest)) {
                    self.star = None;
                }
            }
            Some((&"#", rest)) => {
                if self.hash.as_mut().is_some_and(|n| n.remove(rest, dest)) {
                    self.hash = None;
                }
            }
            Some((word, rest)) => {
                if self
                    .children
                    .get_mut(*word)
                    .is_some_and(|n| n.remove(rest, dest))
                {
                    self.children.remove(*word);
                }
            }
        }
        self.is_empty()
    }

    fn collect(&self, words: &[&str], out: &mut Vec<Destination>) {
        if let Some(hash) = &self.hash {
            // `#` consumes any number of words, including none.
            for skip in 0..=words.len() {
                hash.collect(&words[skip..], out);
            }
        }
        let Some((word, rest)) = words.split_first() else {
            out.extend(self.destinations.iter().cloned());
            return;
        };
        if let Some(child) = self.children.get(*word) {
            child.collect(rest, out);
        }
        if let Some(star) = &self.star {
            star.collect(rest, out);
        }
    }
}

/// Splits `key` into words on the stack; returns how many. The empty key has zero words.
fn split_words<'a>(key: &'a str, words: &mut [&'a str; MAX_WORDS]) -> usize {
    if key.is_empty() {
        return 0;
    }
    let mut n = 0;
    for word in key.split('.') {
        if n == MAX_WORDS {
            break; // unreachable for short strings; keeps an over-long key from overflowing
        }
        words[n] = word;
        n += 1;
    }
    n
}

/// Splits a binding key, collapsing runs of `#` (`#.#` matches exactly what `#` matches). Without this a
/// key such as `#.#.#.#.#` makes matching combinatorial in the routing key's length.
fn split_binding_key<'a>(key: &'a str, words: &mut [&'a str; MAX_WORDS]) -> usize {
    let n = split_words(key, words);
    let mut kept = 0;
    for i in 0..n {
        if words[i] == "#" && kept > 0 && words[kept - 1] == "#" {
            continue;
        }
        words[kept] = words[i];
        kept += 1;
    }
    kept
}

/// Trie of binding keys.
#[derive(Debug, Default)]
pub struct Topic {
    root: Node,
}

impl ExchangeType for Topic {
    fn bind(&mut self, binding: &Binding) {
        let mut words = [""; MAX_WORDS];
        let n = split_binding_key(binding.key.as_str(), &mut words);
        let mut node = &mut self.root;
        for word in &words[..n] {
            node = node.child_mut(word);
        }
        node.destinations.push(binding.destination.clone());
    }

    fn unbind(&mut self, binding: &Binding) {
        let mut words = [""; MAX_WORDS];
        let n = split_binding_key(binding.key.as_str(), &mut words);
        self.root.remove(&words[..n], &binding.destination);
    }

    fn route(
        &self,
        routing_key: &str,
        _message: &MessageRef,
        out: &mut Vec<Destination>,
    ) -> Result<(), RouteError> {
        let mut words = [""; MAX_WORDS];
        let n = split_words(routing_key, &mut words);
        self.root.collect(&words[..n], out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::test_support::{queue, route_names};
    use amq_protocol::types::FieldTable;

    /// (binding key, routing key, matches) — cases from RabbitMQ's topic exchange tests and docs.
    const CASES: &[(&str, &str, bool)] = &[
        ("a.b.c", "a.b.c", true),
        ("a.*.c", "a.b.c", true),
        ("a.*.c", "a.c", false),
        ("a.#", "a", true),
        ("a.#", "a.b.c", true),
        ("#.c", "c", true),
        ("#.c", "a.b.c", true),
        ("#", "", true),
        ("#", "anything.at.all", true),
        ("*", "", false),
        ("*", "a", true),
        ("*", "a.b", false),
        ("", "", true),
        ("", "a", false),
        ("a.#.b", "a.b", true),
        ("a.#.b", "a.x.y.b", true),
        ("a.#.b", "a.x.y.c", false),
        ("#.#", "a.b", true),
        ("*.#", "", false),
        ("*.#", "a", true),
        ("a.*", "a.", true),
        ("a..b", "a..b", true),
        ("a.*.b", "a..b", true),
        ("*.*.*", "a.b", false),
        ("#.a.#", "x.a.y", true),
        ("#.a.#", "x.b.y", false),
        ("a.b", "a.b.c", false),
        ("*.b.#", "a.b", true),
    ];

    #[test]
    fn matches_like_rabbitmq() {
        for (binding, key, expected) in CASES {
            let mut t = Topic::default();
            let got = route_names(&mut t, &[("q", binding)], key);
            assert_eq!(
                !got.is_empty(),
                *expected,
                "binding {binding:?} routing key {key:?}"
            );
        }
    }

    #[test]
    fn unbind_removes_only_that_binding() {
        let mut t = Topic::default();
        let q1 = queue("q1");
        let b1 = Binding {
            destination: Destination::Queue(q1),
            key: "a.*".into(),
            arguments: FieldTable::default(),
        };
        t.bind(&b1);
        assert_eq!(route_names(&mut t, &[("q2", "a.#")], "a.b"), ["q1", "q2"]);
        t.unbind(&b1);
        let mut out = Vec::new();
        t.route(
            "a.b",
            &crate::exchange::test_support::message("a.b", None),
            &mut out,
        )
        .expect("native types always route");
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].name(), "q2");
        assert!(t.root.star.is_none(), "empty branch pruned");
    }

    #[test]
    fn runs_of_hash_collapse_and_stay_cheap() {
        let binding = vec!["#"; 120].join(".");
        let key = vec!["w"; 128].join(".");
        let mut t = Topic::default();
        // Without collapsing, this match explores ~C(247, 120) paths and never finishes.
        assert_eq!(route_names(&mut t, &[("q", &binding)], &key), ["q"]);
        let mut words = [""; MAX_WORDS];
        let n = split_binding_key("a.#.#.b.#", &mut words);
        assert_eq!(&words[..n], ["a", "#", "b", "#"]);
        // Unbinding the uncollapsed key removes the collapsed binding.
        let q = queue("q2");
        let b = Binding {
            destination: Destination::Queue(q),
            key: "x.#.#".into(),
            arguments: FieldTable::default(),
        };
        t.bind(&b);
        t.unbind(&b);
        assert!(t.root.children.is_empty());
    }

    #[test]
    fn many_words_do_not_overflow() {
        let key = vec!["w"; 128].join(".");
        let mut t = Topic::default();
        assert_eq!(route_names(&mut t, &[("q", "#")], &key), ["q"]);
    }
}
