//! The configuration table of a filter or idempotency instance (`x-filter-args` /
//! `x-idempotency-args`), decoded once by `init` and kept for the instance's life.

use std::cell::RefCell;

use crate::table::Table;

thread_local! {
    static CONFIG: RefCell<Table> = RefCell::new(Table::default());
}

/// Decodes `bytes`, lets the plugin's `check` refuse it, and keeps it.
pub(crate) fn init(check: fn(&Table) -> Result<(), String>, bytes: &[u8]) -> Result<(), String> {
    let config = Table::decode(bytes).map_err(|e| e.to_string())?;
    check(&config)?;
    CONFIG.set(config);
    Ok(())
}

/// Runs `f` with the kept configuration.
pub(crate) fn with<R>(f: impl FnOnce(&Table) -> R) -> R {
    CONFIG.with_borrow(f)
}
