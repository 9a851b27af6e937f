//! The run-time administration record: users, vhosts, permissions and policies created, changed or
//! deleted while the broker runs (the management API, definitions import), as one JSON document in
//! the data directory (`admin.json`), replaced atomically after every change.
//!
//! The record holds overrides, keyed like RabbitMQ's objects: an entry either sets the object or
//! (`deleted`) removes it. At start the config file and the definitions file are read first and the
//! record's entries are applied over them, so an object changed at run time keeps its change across
//! restarts while objects never touched at run time still follow the config file.

use std::path::Path;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::config::{Permission, Policy};

/// Version of this document's layout.
pub(crate) const ADMIN_VERSION: u32 = 1;

/// The file name inside the data directory.
pub(crate) const ADMIN_FILE: &str = "admin.json";

/// A user as set at run time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct StoredUser {
    /// User name.
    pub name: String,
    /// RabbitMQ password hash (base64 of salt ‖ digest).
    pub password_hash: String,
    /// RabbitMQ's name of the hashing algorithm.
    pub hashing_algorithm: String,
    /// Tags.
    pub tags: Vec<String>,
}

/// One override: the object, or its removal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Entry<T> {
    /// The object's key (user name; vhost name; `vhost` and `user`; `vhost` and policy name).
    pub key: Vec<String>,
    /// The object, or `None` when it was deleted.
    pub value: Option<T>,
}

/// The document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct AdminRecord {
    /// [`ADMIN_VERSION`] when written.
    pub format_version: u32,
    /// Users by name.
    pub users: Vec<Entry<StoredUser>>,
    /// Vhosts by name (the value is the name again).
    pub vhosts: Vec<Entry<String>>,
    /// Permissions by vhost and user.
    pub permissions: Vec<Entry<Permission>>,
    /// Policies by vhost and name.
    pub policies: Vec<Entry<Policy>>,
}

/// Sets or replaces the entry for `key` in `list`.
pub(crate) fn upsert<T>(list: &mut Vec<Entry<T>>, key: Vec<String>, value: Option<T>) {
    match list.iter_mut().find(|e| e.key == key) {
        Some(e) => e.value = value,
        None => list.push(Entry { key, value }),
    }
}

impl AdminRecord {
    /// Reads the record in `dir`; an empty record if there is none.
    ///
    /// # Errors
    /// Unreadable or malformed, or written by a newer version (refusing to start, as for every
    /// on-disk format).
    pub(crate) fn load(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(ADMIN_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let record: AdminRecord =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if record.format_version > ADMIN_VERSION {
            bail!(
                "{} was written by a newer Warren (administration record format {}, this build \
                 reads up to {ADMIN_VERSION}); refusing to start",
                path.display(),
                record.format_version
            );
        }
        Ok(record)
    }

    /// Writes the record into `dir` atomically.
    ///
    /// # Errors
    /// Any I/O error (the previous record stays).
    pub(crate) fn save(&mut self, dir: &Path) -> std::io::Result<()> {
        self.format_version = ADMIN_VERSION;
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        super::write_atomic(&dir.join(ADMIN_FILE), &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_newer_formats() {
        let dir = std::env::temp_dir().join(format!("warren-admin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(AdminRecord::load(&dir).unwrap(), AdminRecord::default());
        let mut r = AdminRecord::default();
        upsert(&mut r.vhosts, vec!["v".into()], Some("v".into()));
        upsert(&mut r.vhosts, vec!["v".into()], None);
        assert_eq!(r.vhosts.len(), 1, "one entry per key");
        r.save(&dir).unwrap();
        assert_eq!(AdminRecord::load(&dir).unwrap(), r);
        let newer = serde_json::json!({"format_version": ADMIN_VERSION + 1, "users": [],
            "vhosts": [], "permissions": [], "policies": []});
        std::fs::write(dir.join(ADMIN_FILE), newer.to_string()).unwrap();
        let err = AdminRecord::load(&dir).unwrap_err().to_string();
        assert!(err.contains("newer Warren"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
