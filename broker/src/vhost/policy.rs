//! Policies: settings applied to queues and exchanges whose name matches a pattern (RabbitMQ
//! docs/policies.md). The highest-priority matching policy applies. Merge with declare arguments as
//! RabbitMQ does: numeric limits take the smaller of argument and policy; `overflow`, dead-lettering and
//! `alternate-exchange` take the argument when present.

use amq_protocol::types::ShortString;
use regex::Regex;
use serde_json::Value;

use crate::queue::{Overflow, QueueArgs};

/// What a policy applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ApplyTo {
    /// Queues only.
    Queues,
    /// Exchanges only.
    Exchanges,
    /// Both.
    All,
}

/// A validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Policy name.
    pub name: String,
    /// The policy as declared (pattern, apply-to, priority, definition), for the management API.
    pub source: PolicySource,
    pattern: Regex,
    apply_to: ApplyTo,
    priority: i32,
    message_ttl: Option<u64>,
    expires: Option<u64>,
    max_length: Option<u64>,
    max_length_bytes: Option<u64>,
    delivery_limit: Option<u64>,
    consumer_timeout: Option<u64>,
    overflow: Option<Overflow>,
    dead_letter_exchange: Option<ShortString>,
    dead_letter_routing_key: Option<ShortString>,
    alternate_exchange: Option<ShortString>,
}

fn number(key: &str, v: &Value, min: u64) -> Result<u64, String> {
    v.as_u64()
        .filter(|n| *n >= min)
        .ok_or_else(|| format!("'{key}' must be an integer >= {min}, got {v}"))
}

fn string(key: &str, v: &Value) -> Result<ShortString, String> {
    v.as_str()
        .and_then(|s| ShortString::try_new(s).ok())
        .ok_or_else(|| format!("'{key}' must be a short string, got {v}"))
}

/// A policy as declared: what the management API and definitions export show.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicySource {
    /// The regular expression, as written.
    pub pattern: String,
    /// `queues`, `exchanges` or `all`.
    pub apply_to: String,
    /// Priority among matching policies.
    pub priority: i32,
    /// The definition, as written.
    pub definition: serde_json::Map<String, Value>,
}

impl Policy {
    /// Validates a policy from the config file or definitions.
    ///
    /// # Errors
    /// A bad pattern, `apply-to`, or an unknown or invalid definition key, as a readable message.
    pub fn new(
        name: &str,
        pattern: &str,
        apply_to: &str,
        priority: i32,
        definition: &serde_json::Map<String, Value>,
    ) -> Result<Self, String> {
        let source = PolicySource {
            pattern: pattern.to_owned(),
            apply_to: apply_to.to_owned(),
            priority,
            definition: definition.clone(),
        };
        let pattern =
            Regex::new(pattern).map_err(|e| format!("policy '{name}': bad pattern: {e}"))?;
        let apply_to = match apply_to {
            "queues" => ApplyTo::Queues,
            "exchanges" => ApplyTo::Exchanges,
            "all" => ApplyTo::All,
            other => {
                return Err(format!(
                    "policy '{name}': apply-to must be queues, exchanges or all, got '{other}'"
                ))
            }
        };
        let mut p = Policy {
            name: name.to_owned(),
            source,
            pattern,
            apply_to,
            priority,
            message_ttl: None,
            expires: None,
            max_length: None,
            max_length_bytes: None,
            delivery_limit: None,
            consumer_timeout: None,
            overflow: None,
            dead_letter_exchange: None,
            dead_letter_routing_key: None,
            alternate_exchange: None,
        };
        let err = |e: String| format!("policy '{name}': {e}");
        for (key, v) in definition {
            match key.as_str() {
                "message-ttl" => p.message_ttl = Some(number(key, v, 0).map_err(err)?),
                "expires" => p.expires = Some(number(key, v, 1).map_err(err)?),
                "max-length" => p.max_length = Some(number(key, v, 0).map_err(err)?),
                "max-length-bytes" => p.max_length_bytes = Some(number(key, v, 0).map_err(err)?),
                "delivery-limit" => p.delivery_limit = Some(number(key, v, 0).map_err(err)?),
                "consumer-timeout" => p.consumer_timeout = Some(number(key, v, 1).map_err(err)?),
                "overflow" => {
                    p.overflow = Some(match v.as_str() {
                        Some("drop-head") => Overflow::DropHead,
                        Some("reject-publish") => Overflow::RejectPublish,
                        Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
                        _ => return Err(err(format!("'overflow' must be drop-head, reject-publish or reject-publish-dlx, got {v}"))),
                    });
                }
                "dead-letter-exchange" => {
                    p.dead_letter_exchange = Some(string(key, v).map_err(err)?)
                }
                "dead-letter-routing-key" => {
                    p.dead_letter_routing_key = Some(string(key, v).map_err(err)?)
                }
                "alternate-exchange" => p.alternate_exchange = Some(string(key, v).map_err(err)?),
                other => return Err(err(format!("unsupported definition key '{other}'"))),
            }
        }
        Ok(p)
    }

    fn applies(&self, queue: bool, name: &str) -> bool {
        let kind_ok = match self.apply_to {
            ApplyTo::All => true,
            ApplyTo::Queues => queue,
            ApplyTo::Exchanges => !queue,
        };
        kind_ok && self.pattern.is_match(name)
    }

    /// The highest-priority policy among `policies` that applies to the queue (or exchange) `name`.
    pub fn select<'a>(policies: &'a [Policy], queue: bool, name: &str) -> Option<&'a Policy> {
        policies
            .iter()
            .filter(|p| p.applies(queue, name))
            .max_by_key(|p| p.priority)
    }

    /// Merges this policy into a queue's declared arguments.
    pub fn apply_to_queue(&self, args: &mut QueueArgs) {
        fn min(arg: &mut Option<u64>, policy: Option<u64>) {
            *arg = match (*arg, policy) {
                (Some(a), Some(p)) => Some(a.min(p)),
                (a, p) => a.or(p),
            };
        }
        min(&mut args.message_ttl, self.message_ttl);
        min(&mut args.expires, self.expires);
        min(&mut args.max_length, self.max_length);
        min(&mut args.max_length_bytes, self.max_length_bytes);
        let mut limit = args.delivery_limit.map(u64::from);
        min(&mut limit, self.delivery_limit);
        args.delivery_limit = limit.map(|n| u32::try_from(n).unwrap_or(u32::MAX));
        if args.consumer_timeout.is_none() {
            args.consumer_timeout = self.consumer_timeout;
        }
        if !args.overflow_given {
            if let Some(o) = self.overflow {
                args.overflow = o;
            }
        }
        if args.dead_letter_exchange.is_none() {
            args.dead_letter_exchange = self.dead_letter_exchange.clone();
            if args.dead_letter_routing_key.is_none() {
                args.dead_letter_routing_key = self.dead_letter_routing_key.clone();
            }
        }
    }

    /// The policy's alternate exchange.
    pub fn alternate_exchange(&self) -> Option<&ShortString> {
        self.alternate_exchange.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(def: Value, apply_to: &str, priority: i32) -> Policy {
        Policy::new("p", "^orders", apply_to, priority, def.as_object().unwrap()).unwrap()
    }

    #[test]
    fn merges_like_rabbitmq() {
        let p = policy(
            json!({"message-ttl": 1000, "max-length": 10, "dead-letter-exchange": "pol-dlx", "overflow": "reject-publish"}),
            "queues",
            0,
        );
        let mut args = QueueArgs {
            message_ttl: Some(5000),
            max_length: Some(3),
            ..Default::default()
        };
        p.apply_to_queue(&mut args);
        assert_eq!(
            (args.message_ttl, args.max_length),
            (Some(1000), Some(3)),
            "smaller wins"
        );
        assert_eq!(
            args.dead_letter_exchange.as_ref().map(|s| s.as_str()),
            Some("pol-dlx")
        );
        assert_eq!(args.overflow, Overflow::RejectPublish);
        let mut own = QueueArgs {
            dead_letter_exchange: Some("mine".into()),
            ..Default::default()
        };
        p.apply_to_queue(&mut own);
        assert_eq!(
            own.dead_letter_exchange.as_ref().map(|s| s.as_str()),
            Some("mine"),
            "argument wins"
        );
    }

    #[test]
    fn selection_and_validation() {
        let low = policy(json!({"max-length": 1}), "all", 1);
        let high = policy(json!({"max-length": 2}), "queues", 5);
        let ex = policy(json!({"alternate-exchange": "ae"}), "exchanges", 9);
        let all = [low, high, ex];
        assert_eq!(
            Policy::select(&all, true, "orders.eu").map(|p| p.priority),
            Some(5)
        );
        assert_eq!(
            Policy::select(&all, false, "orders.eu").map(|p| p.priority),
            Some(9)
        );
        assert!(Policy::select(&all, true, "billing").is_none());
        let bad = |d: Value| Policy::new("p", ".*", "all", 0, d.as_object().unwrap()).unwrap_err();
        assert!(bad(json!({"message-ttl": -1})).contains("'message-ttl' must be an integer >= 0"));
        assert!(
            bad(json!({"max-priority": 5})).contains("unsupported definition key 'max-priority'")
        );
        assert!(Policy::new("p", "(", "all", 0, &Default::default()).is_err());
    }
}
