//! A quorum queue as the rest of the broker sees it: every node holds the queue as a [`Queue`] whose
//! [`RemoteHome`] is a [`QuorumHome`], which turns each operation into a replicated [`Op`].

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use super::state::{Content, How, Op, OpResult, QueueId};
use super::{hand, LocalConsumer, Quorum, Waiter, RETRIES};
use crate::broker::Broker;
use crate::message::MessageRef;
use crate::queue::{
    ConsumeRefused, Consumer, Overflow, PublishOutcome, Queue, QueueCounts, QueuedMessage,
    RemoteHome, Settle,
};
use crate::store::DurableWait;
use crate::sync::lock;

/// The message a quorum queue's content stands for on this node.
pub(super) fn message(b: &Broker, c: &Content) -> MessageRef {
    super::super::remote::build(
        b,
        &c.exchange,
        &c.routing_key,
        c.properties.clone(),
        c.body.clone(),
    )
}

/// A quorum queue's operations, replicated. See the module docs.
#[derive(Debug)]
pub(crate) struct QuorumHome {
    quorum: Weak<Quorum>,
    queue: QueueId,
}

impl QuorumHome {
    /// The home of quorum queue `name` in `vhost`.
    pub(crate) fn new(quorum: &Arc<Quorum>, vhost: &str, name: &str) -> Arc<QuorumHome> {
        Arc::new(QuorumHome {
            quorum: Arc::downgrade(quorum),
            queue: (vhost.to_owned(), name.to_owned()),
        })
    }
}

impl RemoteHome for QuorumHome {
    fn replicated(&self) -> bool {
        true
    }

    /// Drops the queue's replicated state: proposed by the node whose queue.delete it was (every
    /// node applies the metadata change; one proposal is enough).
    fn deleted(&self) {
        let Some(q) = self.quorum.upgrade() else {
            return;
        };
        match crate::cluster::command::applying() {
            Some(origin) if origin != q.me => {}
            _ => q.send(
                Op::Delete {
                    queue: self.queue.clone(),
                },
                Waiter::Retry(RETRIES),
            ),
        }
    }

    fn node(&self) -> u64 {
        self.quorum
            .upgrade()
            .map_or(0, |q| q.leader().unwrap_or(q.me))
    }

    fn publish(
        &self,
        queue: &Queue,
        message: MessageRef,
        _own_ttl: Option<u64>,
    ) -> (PublishOutcome, Option<DurableWait>) {
        let Some(q) = self.quorum.upgrade() else {
            return (PublishOutcome::Rejected, None);
        };
        let args = queue.args();
        let op = Op::Enqueue {
            queue: self.queue.clone(),
            content: Arc::new(Content {
                exchange: message.exchange.to_string(),
                routing_key: message.routing_key.to_string(),
                properties: message.raw_properties.clone(),
                body: message.body.clone(),
            }),
            max_length: args.max_length,
            max_bytes: args.max_length_bytes,
            reject: args.overflow != Overflow::DropHead,
        };
        let wait = q.publish(op);
        (PublishOutcome::Enqueued, Some(wait))
    }

    fn get(&self, _queue: &Arc<Queue>, no_ack: bool) -> Option<(QueuedMessage, u32)> {
        let q = self.quorum.upgrade()?;
        let b = q.cluster.upgrade().and_then(|c| c.broker())?;
        let Some(OpResult::Got(Some((m, left)))) = q.call(Op::Get {
            queue: self.queue.clone(),
            key: q.key(0),
            no_ack,
        }) else {
            return None;
        };
        Some((
            QueuedMessage {
                seq: m.id,
                message: message(&b, &m.content),
                redelivered: m.redelivered,
                expires_at: None,
                delivery_count: m.delivery_count,
                logged: false,
            },
            left,
        ))
    }

    fn settle(&self, queue: &Queue, seqs: Vec<u64>, how: Settle) {
        let Some(q) = self.quorum.upgrade() else {
            return;
        };
        q.send(
            Op::Settle {
                queue: self.queue.clone(),
                node: q.me,
                incarnation: q.incarnation,
                ids: seqs,
                how: match how {
                    Settle::Ack => How::Ack,
                    Settle::Reject => How::Reject,
                    Settle::Requeue => How::Requeue,
                },
                delivery_limit: queue.args().delivery_limit,
            },
            Waiter::Retry(RETRIES),
        );
    }

    fn consume(
        &self,
        queue: &Arc<Queue>,
        consumer: &Arc<Consumer>,
        on_added: &mut dyn FnMut(),
    ) -> Result<(), ConsumeRefused> {
        let q = self.quorum.upgrade().ok_or(ConsumeRefused::Deleted)?;
        let id = q.next_consumer.fetch_add(1, Ordering::Relaxed) + 1;
        lock(&q.consumers).insert(
            id,
            LocalConsumer {
                id: self.queue.clone(),
                queue: Arc::clone(queue),
                consumer: Arc::clone(consumer),
                held: Some(Vec::new()),
                handed: std::collections::BTreeSet::new(),
            },
        );
        let result = q.call(Op::Checkout {
            queue: self.queue.clone(),
            key: q.key(id),
            prefetch: u32::from(consumer.prefetch),
            no_ack: consumer.no_ack,
            exclusive: consumer.exclusive,
        });
        match result {
            Some(OpResult::Ok) => {}
            Some(_) => {
                lock(&q.consumers).remove(&id);
                return Err(ConsumeRefused::ExclusiveInUse);
            }
            None => {
                lock(&q.consumers).remove(&id);
                // It may have been committed all the same.
                q.send(
                    Op::Cancel {
                        queue: self.queue.clone(),
                        key: q.key(id),
                    },
                    Waiter::Retry(RETRIES),
                );
                return Err(ConsumeRefused::Unavailable(format!(
                    "quorum queue '{}' in vhost '{}' has no leader a majority agrees on; try again",
                    self.queue.1, self.queue.0
                )));
            }
        }
        on_added();
        // What was assigned to it meanwhile, in order, then directly.
        let b = q.cluster.upgrade().and_then(|c| c.broker());
        loop {
            let held = {
                let mut consumers = lock(&q.consumers);
                let Some(lc) = consumers.get_mut(&id) else {
                    break;
                };
                match lc.held.as_mut().map(std::mem::take) {
                    Some(h) if !h.is_empty() => {
                        if !consumer.no_ack {
                            lc.handed.extend(h.iter().map(|m| m.id));
                        }
                        h
                    }
                    _ => {
                        lc.held = None;
                        break;
                    }
                }
            };
            if let Some(b) = b.as_deref() {
                for m in held {
                    hand(b, queue, consumer, m);
                }
            }
        }
        Ok(())
    }

    fn cancel(&self, _queue: &Queue, consumer: &Arc<Consumer>) {
        let Some(q) = self.quorum.upgrade() else {
            return;
        };
        let id = {
            let mut consumers = lock(&q.consumers);
            let id = consumers
                .iter()
                .find(|(_, lc)| Arc::ptr_eq(&lc.consumer, consumer))
                .map(|(id, _)| *id);
            if let Some(id) = id {
                consumers.remove(&id);
            }
            id
        };
        if let Some(id) = id {
            q.send(
                Op::Cancel {
                    queue: self.queue.clone(),
                    key: q.key(id),
                },
                Waiter::Retry(RETRIES),
            );
        }
    }

    fn purge(&self, _queue: &Queue) -> u32 {
        let Some(q) = self.quorum.upgrade() else {
            return 0;
        };
        match q.call(Op::Purge {
            queue: self.queue.clone(),
        }) {
            Some(OpResult::Count(n)) => n,
            _ => 0,
        }
    }

    fn counts(&self, _queue: &Queue) -> QueueCounts {
        let Some(q) = self.quorum.upgrade() else {
            return QueueCounts {
                messages: 0,
                consumers: 0,
                unacked: 0,
            };
        };
        q.read(&self.queue, |s| {
            let n = |x: usize| u32::try_from(x).unwrap_or(u32::MAX);
            QueueCounts {
                messages: s.map_or(0, |s| n(s.ready())),
                consumers: s.map_or(0, |s| n(s.consumers())),
                unacked: s.map_or(0, |s| n(s.unacked())),
            }
        })
    }
}
