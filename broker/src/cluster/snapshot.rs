//! A Raft snapshot of the replicated metadata: the commands that recreate it (users, vhosts,
//! permissions, policies, exchanges, queues with their homes, bindings). Installing one on a node that
//! fell behind the leader's log applies those commands (declares of what exists are no-ops) and then
//! removes what the snapshot does not have.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use tracing::info;

use super::command::{table, with_applying, Command};
use super::link::NodeId;
use super::Cluster;
use crate::broker::Broker;
use crate::config::{Permission, Policy};
use crate::exchange::Destination;
use crate::vhost::BindingChange;

/// The snapshot document.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Snapshot {
    /// (proposing node, command), in an order that applies cleanly.
    commands: Vec<(NodeId, Command)>,
}

/// The node's connection id `owner` of an exclusive queue as (origin node, connection there).
fn owner_origin(me: NodeId, owner: u64) -> (NodeId, u64) {
    if owner >> 63 == 1 {
        ((owner >> 40) & ((1 << 23) - 1), owner & ((1 << 40) - 1))
    } else {
        (me, owner)
    }
}

/// The replicated metadata of `broker` as a snapshot.
pub(super) fn take(broker: &Broker, c: &Cluster) -> Snapshot {
    let me = c.me();
    let mut commands = Vec::new();
    {
        let auth = broker.auth();
        for u in auth.users() {
            commands.push((
                me,
                Command::PutUser {
                    name: u.name.clone(),
                    hash: u.password_hash(),
                    algorithm: u.hashing_algorithm().to_owned(),
                    tags: u.tags.clone(),
                },
            ));
        }
    }
    let vhosts = broker.vhost_list();
    for v in &vhosts {
        commands.push((
            me,
            Command::PutVhost {
                name: v.name.clone(),
            },
        ));
    }
    {
        let auth = broker.auth();
        for (user, vhost, p) in auth.permissions() {
            let [configure, write, read] = p.patterns().clone();
            commands.push((
                me,
                Command::PutPermission(Permission {
                    user: user.to_owned(),
                    vhost: vhost.to_owned(),
                    configure,
                    write,
                    read,
                }),
            ));
        }
    }
    for v in &vhosts {
        for (name, p) in v.policy_list() {
            commands.push((
                me,
                Command::PutPolicy(Policy {
                    vhost: v.name.clone(),
                    name,
                    pattern: p.pattern,
                    apply_to: p.apply_to,
                    definition: p.definition,
                    priority: p.priority,
                }),
            ));
        }
        let exchanges = v.exchange_list();
        for x in &exchanges {
            if x.name.as_str().is_empty() || x.name.as_str().starts_with("amq.") {
                continue;
            }
            commands.push((
                me,
                Command::ExchangeDeclare {
                    vhost: v.name.clone(),
                    name: x.name.to_string(),
                    kind: x.kind.to_string(),
                    durable: x.durable,
                    auto_delete: x.auto_delete,
                    internal: x.internal,
                    arguments: table(&x.arguments),
                },
            ));
        }
        for q in v.queue_list() {
            let (origin, connection) = match q.exclusive_owner {
                Some(owner) => owner_origin(me, owner),
                None => (q.home().unwrap_or(me), 0),
            };
            commands.push((
                origin,
                Command::QueueDeclare {
                    vhost: v.name.clone(),
                    name: q.name.to_string(),
                    durable: q.durable,
                    exclusive: q.exclusive_owner.is_some(),
                    auto_delete: q.auto_delete,
                    arguments: table(&q.arguments),
                    connection,
                },
            ));
        }
        for x in &exchanges {
            for b in x.bindings() {
                let (destination, to_queue, origin, connection) = match &b.destination {
                    Destination::Queue(q) => {
                        let (o, conn) = q.exclusive_owner.map_or((me, 0), |o| owner_origin(me, o));
                        (q.name.to_string(), true, o, conn)
                    }
                    Destination::Exchange(e) => (e.to_string(), false, me, 0),
                };
                commands.push((
                    origin,
                    Command::Binding {
                        vhost: v.name.clone(),
                        source: x.name.to_string(),
                        destination,
                        to_queue,
                        key: b.key.to_string(),
                        arguments: table(&b.arguments),
                        bind: true,
                        connection,
                    },
                ));
            }
        }
    }
    Snapshot { commands }
}

/// Makes `broker`'s replicated metadata what `snapshot` holds.
pub(super) fn install(broker: &Broker, c: &Cluster, snapshot: Snapshot) {
    let me = c.me();
    let mut users = HashSet::new();
    let mut vhosts = HashSet::new();
    let mut permissions = HashSet::new();
    let mut policies = HashSet::new();
    let mut exchanges = HashSet::new();
    let mut queues = HashSet::new();
    let mut bindings = HashSet::new();
    for (origin, command) in &snapshot.commands {
        match command {
            Command::PutUser { name, .. } => {
                users.insert(name.clone());
            }
            Command::PutVhost { name } => {
                vhosts.insert(name.clone());
            }
            Command::PutPermission(p) => {
                permissions.insert((p.vhost.clone(), p.user.clone()));
            }
            Command::PutPolicy(p) => {
                policies.insert((p.vhost.clone(), p.name.clone()));
            }
            Command::ExchangeDeclare { vhost, name, .. } => {
                exchanges.insert((vhost.clone(), name.clone()));
            }
            Command::QueueDeclare { vhost, name, .. } => {
                queues.insert((vhost.clone(), name.clone()));
            }
            Command::Binding {
                vhost,
                source,
                destination,
                to_queue,
                key,
                ..
            } => {
                bindings.insert((
                    vhost.clone(),
                    source.clone(),
                    destination.clone(),
                    *to_queue,
                    key.clone(),
                ));
            }
            _ => {}
        }
        let _ = command.apply(broker, me, *origin);
    }
    with_applying(me, || {
        for v in broker.vhost_list() {
            if !vhosts.contains(&v.name) {
                let _ = broker.delete_vhost(&v.name);
                continue;
            }
            for q in v.queue_list() {
                if !queues.contains(&(v.name.clone(), q.name.to_string())) {
                    v.remove_queue(&q);
                }
            }
            for x in v.exchange_list() {
                let name = x.name.to_string();
                if name.is_empty() || name.starts_with("amq.") {
                    continue;
                }
                if !exchanges.contains(&(v.name.clone(), name.clone())) {
                    let _ = v.exchange_delete(&name, false);
                }
            }
            for x in v.exchange_list() {
                for b in x.bindings() {
                    let (dest, to_queue) = match &b.destination {
                        Destination::Queue(q) => (q.name.to_string(), true),
                        Destination::Exchange(e) => (e.to_string(), false),
                    };
                    let key = (
                        v.name.clone(),
                        x.name.to_string(),
                        dest.clone(),
                        to_queue,
                        b.key.to_string(),
                    );
                    if bindings.contains(&key) {
                        continue;
                    }
                    let _ = if to_queue {
                        let owner = match &b.destination {
                            Destination::Queue(q) => q.exclusive_owner.unwrap_or(0),
                            Destination::Exchange(_) => 0,
                        };
                        v.queue_bind(
                            &dest,
                            x.name.as_str(),
                            &b.key,
                            &b.arguments,
                            owner,
                            BindingChange::Unbind,
                        )
                    } else {
                        v.exchange_bind(
                            &dest,
                            x.name.as_str(),
                            &b.key,
                            &b.arguments,
                            BindingChange::Unbind,
                        )
                    };
                }
            }
            for (name, _) in v.policy_list() {
                if !policies.contains(&(v.name.clone(), name.clone())) {
                    let _ = broker.delete_policy(&v.name, &name);
                }
            }
        }
        let existing: Vec<(String, String)> = broker
            .auth()
            .permissions()
            .into_iter()
            .map(|(u, v, _)| (v.to_owned(), u.to_owned()))
            .collect();
        for (vhost, user) in existing {
            if !permissions.contains(&(vhost.clone(), user.clone())) {
                let _ = broker.delete_permission(&vhost, &user);
            }
        }
        let names: Vec<String> = broker
            .auth()
            .users()
            .iter()
            .map(|u| u.name.clone())
            .collect();
        for name in names {
            if !users.contains(&name) {
                let _ = broker.delete_user(&name);
            }
        }
    });
    info!(
        commands = snapshot.commands.len(),
        "cluster: snapshot installed"
    );
}
