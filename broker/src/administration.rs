//! Run-time administration: users, vhosts, permissions and policies created, changed and deleted while
//! the broker runs (the management API's `PUT`/`DELETE` and definitions import), with RabbitMQ's
//! effects: a deleted vhost loses its queues, exchanges and connections ("vhost '…' is deleted"), a
//! deleted user its permissions and connections ("user '…' is deleted"), and a policy change is
//! re-applied to the vhost's existing queues and exchanges.
//!
//! Each change is written to the data directory's administration record (`store::admin`) before it
//! takes effect and before the caller is answered, so it survives a restart (kill -9 included);
//! without a data directory changes last until the broker stops. Permission changes apply to
//! connections opened afterwards (RabbitMQ caches permissions per connection too).

use std::collections::HashSet;

use anyhow::Context;

use crate::auth::{Auth, HashingAlgorithm};
use crate::broker::Broker;
use crate::cluster::command::Command;
use crate::config::{Permission, Policy};
use crate::store::admin::{upsert, AdminRecord, StoredUser};
use crate::sync::{lock, write};
use crate::vhost::VHost;

/// Why a run-time change was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The object (or the vhost or user it names) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request is invalid (bad pattern, bad policy definition, bad hash); the reason says why.
    #[error("{0}")]
    BadRequest(String),
    /// The change could not be made durable; nothing changed.
    #[error("cannot write the administration record: {0}")]
    Io(String),
    /// In a cluster: the change could not be committed (no quorum, or no answer in time).
    #[error("{0}")]
    Unavailable(String),
}

/// A user's credentials as set at run time (RabbitMQ `PUT /api/users/{name}`).
#[derive(Debug, Clone)]
pub enum Credentials {
    /// A plain password, hashed here with SHA-256.
    Password(String),
    /// A RabbitMQ password hash (base64) of the given algorithm; the empty hash means no password.
    Hash(String, HashingAlgorithm),
    /// Neither: the user cannot log in with a password (RabbitMQ clears the password).
    None,
}

/// Applies the record's overrides to what the config file and the definitions file gave, at start.
/// Returns the vhosts the record deleted (their config-file objects are skipped).
///
/// # Errors
/// A stored user hash that does not decode, or a stored permission pattern that does not compile.
pub(crate) fn apply_record(
    record: &AdminRecord,
    auth: &mut Auth,
    vhosts: &mut Vec<String>,
    permissions: &mut Vec<Permission>,
    policies: &mut Vec<Policy>,
) -> anyhow::Result<HashSet<String>> {
    for e in &record.users {
        let Some(name) = e.key.first() else { continue };
        match &e.value {
            Some(u) => add_stored_user(auth, u).context("administration record")?,
            None => {
                auth.remove_user(name);
                permissions.retain(|p| &p.user != name);
            }
        }
    }
    let mut deleted = HashSet::new();
    for e in &record.vhosts {
        let Some(name) = e.key.first() else { continue };
        vhosts.retain(|v| v != name);
        match &e.value {
            Some(_) => {
                vhosts.push(name.clone());
                deleted.remove(name);
            }
            None => {
                deleted.insert(name.clone());
            }
        }
    }
    permissions.retain(|p| !deleted.contains(&p.vhost));
    policies.retain(|p| !deleted.contains(&p.vhost));
    for e in &record.permissions {
        let [vhost, user] = e.key.as_slice() else {
            continue;
        };
        permissions.retain(|p| !(&p.vhost == vhost && &p.user == user));
        if let Some(p) = &e.value {
            permissions.push(p.clone());
        }
    }
    for e in &record.policies {
        let [vhost, name] = e.key.as_slice() else {
            continue;
        };
        policies.retain(|p| !(&p.vhost == vhost && &p.name == name));
        if let Some(p) = &e.value {
            policies.push(p.clone());
        }
    }
    Ok(deleted)
}

fn add_stored_user(auth: &mut Auth, u: &StoredUser) -> anyhow::Result<()> {
    if u.password_hash.is_empty() {
        auth.add_user_without_password(&u.name, u.tags.clone());
        return Ok(());
    }
    let algorithm = HashingAlgorithm::from_rabbit_name(&u.hashing_algorithm).ok_or_else(|| {
        anyhow::anyhow!(
            "user '{}' uses unsupported hashing algorithm '{}'",
            u.name,
            u.hashing_algorithm
        )
    })?;
    auth.add_user_hashed(&u.name, &u.password_hash, algorithm, u.tags.clone())?;
    Ok(())
}

impl Broker {
    /// The cluster to propose a run-time change to: none on a single node and while this thread
    /// applies a committed change (which then acts locally).
    fn replicated(&self) -> Option<&std::sync::Arc<crate::cluster::Cluster>> {
        self.cluster
            .get()
            .filter(|_| crate::cluster::command::applying().is_none())
    }

    /// Writes `change` into the administration record (when there is a data directory) before the
    /// caller applies it; `f` runs with the record's lock held, so changes are applied in the order
    /// they are recorded.
    fn record<T>(
        &self,
        change: impl FnOnce(&mut AdminRecord),
        apply: impl FnOnce() -> T,
    ) -> Result<T, AdminError> {
        let mut record = lock(&self.admin);
        let mut next = record.clone();
        change(&mut next);
        if let Some(dir) = &self.config.data_dir {
            next.save(dir).map_err(|e| AdminError::Io(e.to_string()))?;
        }
        *record = next;
        Ok(apply())
    }

    /// Creates or replaces the user `name` (RabbitMQ `PUT /api/users/{name}`); `true` when created.
    ///
    /// # Errors
    /// [`AdminError::BadRequest`] for a hash that is not base64 of a salt and a digest.
    pub fn put_user(
        &self,
        name: &str,
        credentials: Credentials,
        tags: Vec<String>,
    ) -> Result<bool, AdminError> {
        let mut scratch = Auth::default();
        match &credentials {
            Credentials::Password(p) => scratch.add_user(name, p, tags.clone()),
            Credentials::Hash(h, _) if h.is_empty() => {
                scratch.add_user_without_password(name, tags.clone());
            }
            Credentials::Hash(h, alg) => scratch
                .add_user_hashed(name, h, *alg, tags.clone())
                .map_err(|e| AdminError::BadRequest(e.to_string()))?,
            Credentials::None => scratch.add_user_without_password(name, tags.clone()),
        }
        let user = scratch
            .user(name)
            .cloned()
            .ok_or_else(|| AdminError::BadRequest(format!("user '{name}' not created")))?;
        let stored = StoredUser {
            name: name.to_owned(),
            password_hash: user.password_hash(),
            hashing_algorithm: user.hashing_algorithm().to_owned(),
            tags,
        };
        if let Some(c) = self.replicated() {
            return c.replicate(Command::PutUser {
                name: stored.name,
                hash: stored.password_hash,
                algorithm: stored.hashing_algorithm,
                tags: stored.tags,
            });
        }
        self.record(
            |r| upsert(&mut r.users, vec![name.to_owned()], Some(stored.clone())),
            || {
                let mut auth = write(&self.auth);
                let created = auth.user(name).is_none();
                // Cannot fail: the hash was decoded above.
                let _ = add_stored_user(&mut auth, &stored);
                created
            },
        )
    }

    /// Deletes the user `name` with its permissions and closes its connections (RabbitMQ
    /// `DELETE /api/users/{name}`).
    ///
    /// # Errors
    /// [`AdminError::NotFound`] for an unknown user.
    pub fn delete_user(&self, name: &str) -> Result<(), AdminError> {
        if self.auth().user(name).is_none() {
            return Err(AdminError::NotFound(format!("user '{name}' not found")));
        }
        if let Some(c) = self.replicated() {
            return c.replicate(Command::DeleteUser {
                name: name.to_owned(),
            });
        }
        let granted: Vec<String> = self
            .auth()
            .permissions()
            .into_iter()
            .filter(|(u, _, _)| *u == name)
            .map(|(_, v, _)| v.to_owned())
            .collect();
        self.record(
            |r| {
                upsert(&mut r.users, vec![name.to_owned()], None);
                for v in &granted {
                    upsert(&mut r.permissions, vec![v.clone(), name.to_owned()], None);
                }
            },
            || {
                write(&self.auth).remove_user(name);
            },
        )?;
        self.close_connections_where(|user, _| user == name, &format!("user '{name}' is deleted"));
        Ok(())
    }

    /// Creates the vhost `name` (RabbitMQ `PUT /api/vhosts/{name}`); `false` when it exists already.
    ///
    /// # Errors
    /// [`AdminError::BadRequest`] for a name that is empty or longer than 255 octets;
    /// [`AdminError::Io`] when what the data directory holds for it cannot be read.
    pub fn put_vhost(&self, name: &str) -> Result<bool, AdminError> {
        if name.is_empty() || name.len() > 255 {
            return Err(AdminError::BadRequest(
                "vhost names are 1 to 255 octets".to_owned(),
            ));
        }
        if self.vhost(name).is_some() {
            return Ok(false);
        }
        if let Some(c) = self.replicated() {
            return c.replicate(Command::PutVhost {
                name: name.to_owned(),
            });
        }
        let v = VHost::new(
            name,
            std::sync::Arc::clone(&self.registry),
            self.store.clone(),
            self.memory,
        );
        if let Some(c) = self.cluster.get() {
            v.set_cluster(std::sync::Arc::clone(c));
        }
        v.recover().map_err(|e| AdminError::Io(format!("{e:#}")))?;
        self.record(
            |r| upsert(&mut r.vhosts, vec![name.to_owned()], Some(name.to_owned())),
            || {
                write(&self.vhosts).entry(name.to_owned()).or_insert(v);
            },
        )?;
        Ok(true)
    }

    /// Deletes the vhost `name` and everything in it, closing its connections (RabbitMQ
    /// `DELETE /api/vhosts/{name}`).
    ///
    /// # Errors
    /// [`AdminError::NotFound`] for an unknown vhost.
    pub fn delete_vhost(&self, name: &str) -> Result<(), AdminError> {
        let Some(v) = self.vhost(name) else {
            return Err(AdminError::NotFound(format!("vhost '{name}' not found")));
        };
        if let Some(c) = self.replicated() {
            return c.replicate(Command::DeleteVhost {
                name: name.to_owned(),
            });
        }
        let granted: Vec<String> = self
            .auth()
            .permissions()
            .into_iter()
            .filter(|(_, vh, _)| *vh == name)
            .map(|(u, _, _)| u.to_owned())
            .collect();
        let policies: Vec<String> = v.policies().into_iter().map(|p| p.name).collect();
        self.record(
            |r| {
                upsert(&mut r.vhosts, vec![name.to_owned()], None);
                for u in &granted {
                    upsert(&mut r.permissions, vec![name.to_owned(), u.clone()], None);
                }
                for p in &policies {
                    upsert(&mut r.policies, vec![name.to_owned(), p.clone()], None);
                }
            },
            || {
                write(&self.vhosts).remove(name);
                write(&self.auth).remove_vhost_permissions(name);
            },
        )?;
        self.close_connections_where(
            |_, vhost| vhost == name,
            &format!("vhost '{name}' is deleted"),
        );
        v.delete();
        Ok(())
    }

    /// Sets `user`'s permissions in `vhost` (RabbitMQ `PUT /api/permissions/{vhost}/{user}`); `true`
    /// when there were none.
    ///
    /// # Errors
    /// [`AdminError::NotFound`] for an unknown user or vhost, [`AdminError::BadRequest`] for a pattern
    /// that does not compile.
    pub fn put_permission(&self, p: Permission) -> Result<bool, AdminError> {
        if self.vhost(&p.vhost).is_none() {
            return Err(AdminError::NotFound(format!(
                "vhost '{}' not found",
                p.vhost
            )));
        }
        if self.auth().user(&p.user).is_none() {
            return Err(AdminError::NotFound(format!("user '{}' not found", p.user)));
        }
        crate::auth::Permission::new(&p.configure, &p.write, &p.read)
            .map_err(|e| AdminError::BadRequest(format!("invalid permission pattern: {e}")))?;
        if let Some(c) = self.replicated() {
            return c.replicate(Command::PutPermission(p));
        }
        self.record(
            |r| {
                upsert(
                    &mut r.permissions,
                    vec![p.vhost.clone(), p.user.clone()],
                    Some(p.clone()),
                )
            },
            || {
                let mut auth = write(&self.auth);
                let created = auth.permission(&p.user, &p.vhost).is_none();
                // Cannot fail: the patterns compiled above.
                let _ = auth.set_permission(&p.user, &p.vhost, &p.configure, &p.write, &p.read);
                created
            },
        )
    }

    /// Removes `user`'s permissions in `vhost` (RabbitMQ `DELETE /api/permissions/{vhost}/{user}`).
    ///
    /// # Errors
    /// [`AdminError::NotFound`] when there are none.
    pub fn delete_permission(&self, vhost: &str, user: &str) -> Result<(), AdminError> {
        if self.auth().permission(user, vhost).is_none() {
            return Err(AdminError::NotFound(format!(
                "no permissions for user '{user}' in vhost '{vhost}'"
            )));
        }
        if let Some(c) = self.replicated() {
            return c.replicate(Command::DeletePermission {
                vhost: vhost.to_owned(),
                user: user.to_owned(),
            });
        }
        self.record(
            |r| {
                upsert(
                    &mut r.permissions,
                    vec![vhost.to_owned(), user.to_owned()],
                    None,
                )
            },
            || {
                write(&self.auth).remove_permission(user, vhost);
            },
        )
    }

    /// Sets the policy `p` (RabbitMQ `PUT /api/policies/{vhost}/{name}`) and re-applies the vhost's
    /// policies to its existing queues and exchanges; `true` when created.
    ///
    /// # Errors
    /// [`AdminError::NotFound`] for an unknown vhost, [`AdminError::BadRequest`] for an invalid
    /// pattern, `apply-to` or definition (the reason names it).
    pub fn put_policy(&self, p: Policy) -> Result<bool, AdminError> {
        let v = self
            .vhost(&p.vhost)
            .ok_or_else(|| AdminError::NotFound(format!("vhost '{}' not found", p.vhost)))?;
        let compiled = crate::vhost::policy::Policy::new(
            &p.name,
            &p.pattern,
            &p.apply_to,
            p.priority,
            &p.definition,
        )
        .map_err(AdminError::BadRequest)?;
        if let Some(c) = self.replicated() {
            return c.replicate(Command::PutPolicy(p));
        }
        self.record(
            |r| {
                upsert(
                    &mut r.policies,
                    vec![p.vhost.clone(), p.name.clone()],
                    Some(p.clone()),
                )
            },
            || {
                let mut list = v.policies();
                let created = !list.iter().any(|x| x.name == p.name);
                list.retain(|x| x.name != p.name);
                list.push(compiled);
                v.set_policies(list);
                created
            },
        )
    }

    /// Deletes the policy `name` of `vhost` (RabbitMQ `DELETE /api/policies/{vhost}/{name}`) and
    /// re-applies the remaining policies to the vhost's queues and exchanges.
    ///
    /// # Errors
    /// [`AdminError::NotFound`] for an unknown vhost or policy.
    pub fn delete_policy(&self, vhost: &str, name: &str) -> Result<(), AdminError> {
        let v = self
            .vhost(vhost)
            .ok_or_else(|| AdminError::NotFound(format!("vhost '{vhost}' not found")))?;
        if !v.policies().iter().any(|p| p.name == name) {
            return Err(AdminError::NotFound(format!(
                "policy '{name}' not found in vhost '{vhost}'"
            )));
        }
        if let Some(c) = self.replicated() {
            return c.replicate(Command::DeletePolicy {
                vhost: vhost.to_owned(),
                name: name.to_owned(),
            });
        }
        self.record(
            |r| {
                upsert(
                    &mut r.policies,
                    vec![vhost.to_owned(), name.to_owned()],
                    None,
                )
            },
            || {
                let mut list = v.policies();
                list.retain(|x| x.name != name);
                v.set_policies(list);
            },
        )
    }

    /// Closes (connection-forced, 320) every open connection whose user and vhost `pick` selects.
    fn close_connections_where(&self, pick: impl Fn(&str, &str) -> bool, reason: &str) {
        for c in self.connection_table.list() {
            if let Some(o) = c.opened.get() {
                if pick(&o.user, &o.vhost) {
                    c.close_with(reason);
                }
            }
        }
    }
}

impl Broker {
    /// Imports RabbitMQ-format definitions at run time (RabbitMQ `POST /api/definitions`): vhosts,
    /// users (with their hashes and limits), permissions, policies, vhost limits, then exchanges,
    /// queues and bindings through the same declares as the definitions file at start. Existing
    /// objects are replaced (users, permissions, policies) or must be equivalent (exchanges,
    /// queues), as in RabbitMQ; objects imported before a failure stay.
    ///
    /// # Errors
    /// [`AdminError::BadRequest`] naming the first object refused.
    pub(crate) fn import_definitions(
        &self,
        d: &crate::definitions::Definitions,
    ) -> Result<(), AdminError> {
        for v in &d.vhosts {
            self.put_vhost(&v.name)?;
        }
        for u in &d.users {
            let credentials = match (&u.password_hash, &u.password) {
                (Some(h), _) => Credentials::Hash(
                    h.clone(),
                    u.algorithm()
                        .map_err(|e| AdminError::BadRequest(format!("{e:#}")))?,
                ),
                (None, Some(p)) => Credentials::Password(p.clone()),
                (None, None) => Credentials::None,
            };
            self.put_user(&u.name, credentials, u.tag_list())?;
            let limits = u
                .user_limits()
                .map_err(|e| AdminError::BadRequest(format!("{e:#}")))?;
            self.user_limits.set(&u.name, limits);
        }
        for p in &d.permissions {
            self.put_permission(p.clone())?;
        }
        for p in &d.policies {
            self.put_policy(p.clone())?;
        }
        let limits = d
            .vhost_limits()
            .map_err(|e| AdminError::BadRequest(format!("{e:#}")))?;
        for (name, l) in limits {
            if let Some(v) = self.vhost(&name) {
                v.set_limits(l);
            }
        }
        self.declare_definitions(d, &HashSet::new())
            .map_err(|e| AdminError::BadRequest(format!("{e:#}")))
    }
}
