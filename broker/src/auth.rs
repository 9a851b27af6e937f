//! Users, password hashes and per-vhost permissions (RabbitMQ docs/access-control.md, docs/passwords.md).
//!
//! Passwords are stored as RabbitMQ does with `rabbit_password_hashing_sha256` (the default):
//! base64 of a 4-byte salt followed by SHA-256(salt ‖ password), so hashes move between RabbitMQ
//! definitions and Warren; `rabbit_password_hashing_sha512` hashes (salt ‖ SHA-512) are accepted too.
//! A login for an unknown user hashes the password all the same, so its timing does not tell which
//! users exist.
//! Permissions are three regular expressions (configure, write, read) matched against resource names,
//! unanchored as in RabbitMQ; the empty pattern grants nothing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use rand::RngCore;
use regex::Regex;
use sha2::{Digest, Sha256, Sha512};

/// Which permission an operation needs (RabbitMQ docs/access-control.md "How Permissions Work").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Declare or delete a resource.
    Configure,
    /// Publish to an exchange, bind a queue or exchange as destination.
    Write,
    /// Consume, get, purge; be the source of a binding.
    Read,
}

/// A user's permissions in one vhost.
#[derive(Debug, Clone)]
pub struct Permission {
    configure: Option<Regex>,
    write: Option<Regex>,
    read: Option<Regex>,
    /// The three patterns as written (configure, write, read).
    patterns: [String; 3],
}

fn pattern(p: &str) -> Result<Option<Regex>, regex::Error> {
    if p.is_empty() {
        Ok(None)
    } else {
        Regex::new(p).map(Some)
    }
}

impl Permission {
    /// Compiles the three patterns.
    ///
    /// # Errors
    /// An invalid regular expression.
    pub fn new(configure: &str, write: &str, read: &str) -> Result<Self, regex::Error> {
        Ok(Permission {
            configure: pattern(configure)?,
            write: pattern(write)?,
            read: pattern(read)?,
            patterns: [configure.to_owned(), write.to_owned(), read.to_owned()],
        })
    }

    /// The configure, write and read patterns as written.
    pub fn patterns(&self) -> &[String; 3] {
        &self.patterns
    }

    /// Full access (`.*` for all three).
    pub fn all() -> Self {
        Permission::new(".*", ".*", ".*").unwrap_or(Permission {
            configure: None,
            write: None,
            read: None,
            patterns: Default::default(),
        })
    }

    /// Whether `access` to the resource named `name` is granted.
    pub fn allows(&self, access: Access, name: &str) -> bool {
        let re = match access {
            Access::Configure => &self.configure,
            Access::Write => &self.write,
            Access::Read => &self.read,
        };
        re.as_ref().is_some_and(|r| r.is_match(name))
    }
}

/// A user that may log in.
#[derive(Debug, Clone)]
pub struct User {
    /// User name.
    pub name: String,
    /// Salted hash (salt ‖ digest).
    hash: Vec<u8>,
    /// The algorithm of `hash`.
    algorithm: HashingAlgorithm,
    /// Tags (`administrator`, `monitoring`, …), kept for the management API.
    pub tags: Vec<String>,
}

impl User {
    /// The password hash as RabbitMQ shows it: base64 of salt ‖ digest.
    pub fn password_hash(&self) -> String {
        BASE64.encode(&self.hash)
    }

    /// RabbitMQ's name of the hash's algorithm (`rabbit_password_hashing_sha256`, …).
    pub fn hashing_algorithm(&self) -> &'static str {
        self.algorithm.rabbit_name()
    }
}

/// A password hashing algorithm of RabbitMQ's (docs/passwords.md "Hashing algorithms"): a 4-byte salt
/// followed by the digest of salt ‖ password.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HashingAlgorithm {
    /// `rabbit_password_hashing_sha256`, RabbitMQ's default (36 octets with the salt).
    #[default]
    Sha256,
    /// `rabbit_password_hashing_sha512` (68 octets with the salt).
    Sha512,
}

impl HashingAlgorithm {
    /// The algorithm RabbitMQ names `name` in definitions (`hashing_algorithm`); `None` for others.
    pub fn from_rabbit_name(name: &str) -> Option<Self> {
        match name {
            "rabbit_password_hashing_sha256" => Some(Self::Sha256),
            "rabbit_password_hashing_sha512" => Some(Self::Sha512),
            _ => None,
        }
    }

    /// RabbitMQ's name for the algorithm.
    pub fn rabbit_name(self) -> &'static str {
        match self {
            Self::Sha256 => "rabbit_password_hashing_sha256",
            Self::Sha512 => "rabbit_password_hashing_sha512",
        }
    }

    /// Octets of a stored hash: salt and digest.
    fn hash_len(self) -> usize {
        match self {
            Self::Sha256 => 4 + 32,
            Self::Sha512 => 4 + 64,
        }
    }

    fn digest(self, salt: &[u8], password: &str) -> Vec<u8> {
        match self {
            Self::Sha256 => Sha256::new()
                .chain_update(salt)
                .chain_update(password.as_bytes())
                .finalize()
                .to_vec(),
            Self::Sha512 => Sha512::new()
                .chain_update(salt)
                .chain_update(password.as_bytes())
                .finalize()
                .to_vec(),
        }
    }
}

/// Hashes `password` in RabbitMQ's `rabbit_password_hashing_sha256` format (base64).
pub(crate) fn hash_password(password: &str) -> String {
    let mut salt = [0u8; 4];
    rand::thread_rng().fill_bytes(&mut salt);
    let mut out = salt.to_vec();
    out.extend_from_slice(
        &Sha256::new()
            .chain_update(salt)
            .chain_update(password.as_bytes())
            .finalize(),
    );
    BASE64.encode(out)
}

fn verify(hash: &[u8], algorithm: HashingAlgorithm, password: &str) -> bool {
    if hash.len() != algorithm.hash_len() {
        return false;
    }
    let (salt, digest) = hash.split_at(4);
    let computed = algorithm.digest(salt, password);
    // Constant-time comparison: no early exit on the first differing byte.
    computed
        .iter()
        .zip(digest)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// Why a user could not be added.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UserError {
    /// The password hash is not base64 of a salt and a digest of the named algorithm.
    #[error("password hash of user '{0}' is not a base64 {1} hash")]
    BadHash(String, &'static str),
    /// A permission pattern does not compile.
    #[error("permission pattern for user '{user}' in vhost '{vhost}': {source}")]
    BadPattern {
        /// User.
        user: String,
        /// Vhost.
        vhost: String,
        /// The regex error.
        source: regex::Error,
    },
}

/// All users and permissions.
#[derive(Debug, Default)]
pub struct Auth {
    users: HashMap<String, User>,
    permissions: HashMap<(String, String), Arc<Permission>>,
    loopback_users: HashSet<String>,
}

impl Auth {
    /// Adds (or replaces) a user from a plain password.
    pub fn add_user(&mut self, name: &str, password: &str, tags: Vec<String>) {
        let hash = BASE64.decode(hash_password(password)).unwrap_or_default();
        self.users.insert(
            name.to_owned(),
            User {
                name: name.to_owned(),
                hash,
                algorithm: HashingAlgorithm::Sha256,
                tags,
            },
        );
    }

    /// Adds (or replaces) a user from a RabbitMQ password hash (base64) of `algorithm`.
    ///
    /// # Errors
    /// A hash that is not base64 of a 4-octet salt and a digest of `algorithm` (36 octets for SHA-256,
    /// 68 for SHA-512).
    pub fn add_user_hashed(
        &mut self,
        name: &str,
        hash_b64: &str,
        algorithm: HashingAlgorithm,
        tags: Vec<String>,
    ) -> Result<(), UserError> {
        let hash = BASE64
            .decode(hash_b64)
            .ok()
            .filter(|h| h.len() == algorithm.hash_len())
            .ok_or_else(|| UserError::BadHash(name.to_owned(), algorithm.rabbit_name()))?;
        self.users.insert(
            name.to_owned(),
            User {
                name: name.to_owned(),
                hash,
                algorithm,
                tags,
            },
        );
        Ok(())
    }

    /// Adds (or replaces) a user without a password: it cannot log in with one (RabbitMQ's answer to
    /// a user given neither `password` nor `password_hash`; SASL EXTERNAL still works).
    pub fn add_user_without_password(&mut self, name: &str, tags: Vec<String>) {
        self.users.insert(
            name.to_owned(),
            User {
                name: name.to_owned(),
                hash: Vec::new(),
                algorithm: HashingAlgorithm::Sha256,
                tags,
            },
        );
    }

    /// Removes the user `name` and its permissions; whether it existed.
    pub fn remove_user(&mut self, name: &str) -> bool {
        self.permissions.retain(|(u, _), _| u != name);
        self.users.remove(name).is_some()
    }

    /// Removes `user`'s permissions in `vhost`; whether there were any.
    pub fn remove_permission(&mut self, user: &str, vhost: &str) -> bool {
        self.permissions
            .remove(&(user.to_owned(), vhost.to_owned()))
            .is_some()
    }

    /// Removes every permission in `vhost` (the vhost is deleted).
    pub fn remove_vhost_permissions(&mut self, vhost: &str) {
        self.permissions.retain(|(_, v), _| v != vhost);
    }

    /// Grants `user` permissions in `vhost`.
    ///
    /// # Errors
    /// A pattern that does not compile.
    pub fn set_permission(
        &mut self,
        user: &str,
        vhost: &str,
        configure: &str,
        write: &str,
        read: &str,
    ) -> Result<(), UserError> {
        let p =
            Permission::new(configure, write, read).map_err(|source| UserError::BadPattern {
                user: user.to_owned(),
                vhost: vhost.to_owned(),
                source,
            })?;
        self.permissions
            .insert((user.to_owned(), vhost.to_owned()), Arc::new(p));
        Ok(())
    }

    /// Users that may only connect from the loopback interface (RabbitMQ `loopback_users`).
    pub fn set_loopback_users(&mut self, users: impl IntoIterator<Item = String>) {
        self.loopback_users = users.into_iter().collect();
    }

    /// Checks credentials; `from_loopback` says whether the client connected over loopback.
    ///
    /// An unknown user costs the same hashing as a known one (against a fixed hash), so the time a
    /// refusal takes does not tell whether the user exists.
    pub fn authenticate(&self, name: &str, password: &str, from_loopback: bool) -> Option<&User> {
        let Some(user) = self.users.get(name) else {
            /// salt ‖ SHA-256 of nothing in particular: no password matches it in practice, and the
            /// answer is ignored anyway.
            const UNKNOWN_USER_HASH: [u8; 36] = [0x5a; 36];
            std::hint::black_box(verify(
                &UNKNOWN_USER_HASH,
                HashingAlgorithm::Sha256,
                password,
            ));
            return None;
        };
        if !verify(&user.hash, user.algorithm, password) {
            return None;
        }
        if self.loopback_users.contains(name) && !from_loopback {
            return None;
        }
        Some(user)
    }

    /// Checks a user authenticated outside SASL (a verified TLS client certificate, SASL EXTERNAL): it
    /// must exist, and a loopback-only user must come over loopback. No password is involved.
    pub fn authenticate_external(&self, name: &str, from_loopback: bool) -> Option<&User> {
        let user = self.users.get(name)?;
        if self.loopback_users.contains(name) && !from_loopback {
            return None;
        }
        Some(user)
    }

    /// Every user, by name.
    pub fn users(&self) -> Vec<&User> {
        let mut v: Vec<&User> = self.users.values().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The user named `name`.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    /// Every permission as (user, vhost, permission), by user then vhost.
    pub fn permissions(&self) -> Vec<(&str, &str, &Permission)> {
        let mut v: Vec<(&str, &str, &Permission)> = self
            .permissions
            .iter()
            .map(|((u, vh), p)| (u.as_str(), vh.as_str(), &**p))
            .collect();
        v.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        v
    }

    /// `user`'s permissions in `vhost`, if any (none means no access to the vhost).
    pub fn permission(&self, user: &str, vhost: &str) -> Option<Arc<Permission>> {
        self.permissions
            .get(&(user.to_owned(), vhost.to_owned()))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_match_rabbitmq_format() {
        let h = hash_password("secret");
        let raw = BASE64.decode(&h).unwrap();
        assert_eq!(raw.len(), 36);
        assert!(verify(&raw, HashingAlgorithm::Sha256, "secret"));
        assert!(!verify(&raw, HashingAlgorithm::Sha256, "Secret"));
        // A hash produced by RabbitMQ (`rabbitmqctl hash_password guest`) for the password "guest".
        let mut auth = Auth::default();
        auth.add_user_hashed(
            "g",
            "9/1i+jKFRpbTRV1PtRnzFFYibT3cEpP92JeZ8YKGtflf4e/u",
            HashingAlgorithm::Sha256,
            vec![],
        )
        .unwrap();
        assert!(auth.authenticate("g", "guest", true).is_some());
        assert!(auth.authenticate("g", "nope", true).is_none());
        assert!(auth
            .add_user_hashed("bad", "not base64!", HashingAlgorithm::Sha256, vec![])
            .is_err());
        // A SHA-256 hash is not a SHA-512 one.
        assert!(auth
            .add_user_hashed(
                "g5",
                "9/1i+jKFRpbTRV1PtRnzFFYibT3cEpP92JeZ8YKGtflf4e/u",
                HashingAlgorithm::Sha512,
                vec![],
            )
            .is_err());
    }

    /// rabbit_password_hashing_sha512: salt ‖ SHA-512(salt ‖ password), built here independently.
    #[test]
    fn sha512_hashes_verify() {
        let salt = [1u8, 2, 3, 4];
        let mut raw = salt.to_vec();
        raw.extend_from_slice(&Sha512::digest([&salt[..], b"s3cret"].concat()));
        let mut auth = Auth::default();
        auth.add_user_hashed("u", &BASE64.encode(&raw), HashingAlgorithm::Sha512, vec![])
            .unwrap();
        assert!(auth.authenticate("u", "s3cret", true).is_some());
        assert!(auth.authenticate("u", "s3cre", true).is_none());
        assert!(auth.authenticate("nobody", "s3cret", true).is_none());
        assert_eq!(
            HashingAlgorithm::from_rabbit_name("rabbit_password_hashing_sha512"),
            Some(HashingAlgorithm::Sha512)
        );
        assert_eq!(
            HashingAlgorithm::from_rabbit_name("rabbit_password_hashing_md5"),
            None
        );
    }

    #[test]
    fn loopback_users_and_permissions() {
        let mut auth = Auth::default();
        auth.add_user("guest", "guest", vec![]);
        auth.set_loopback_users(["guest".to_owned()]);
        assert!(auth.authenticate("guest", "guest", true).is_some());
        assert!(auth.authenticate("guest", "guest", false).is_none());
        auth.set_permission("guest", "/", "^tmp-", "", ".*")
            .unwrap();
        let p = auth.permission("guest", "/").unwrap();
        assert!(p.allows(Access::Configure, "tmp-1"));
        assert!(!p.allows(Access::Configure, "orders"));
        assert!(
            !p.allows(Access::Write, "anything"),
            "empty pattern grants nothing"
        );
        assert!(p.allows(Access::Read, "orders"));
        assert!(auth.permission("guest", "/other").is_none());
    }
}
