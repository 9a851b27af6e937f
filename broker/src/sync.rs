//! The broker's one lock-poison policy: a lock whose holder panicked is taken anyway.
//!
//! Broker state behind a std lock is updated in steps that cannot panic halfway (invariant in
//! ARCHITECTURE.md: nothing on an input path panics), so a poisoned lock still guards consistent data;
//! refusing it would turn one bug into a failure of every later operation on that queue, exchange or
//! channel. Every std `Mutex` / `RwLock` in the broker is taken through these functions.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `mutex`, recovering the guard of a poisoned lock.
pub(crate) fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Read-locks `lock`, recovering the guard of a poisoned lock.
pub(crate) fn read<T: ?Sized>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

/// Write-locks `lock`, recovering the guard of a poisoned lock.
pub(crate) fn write<T: ?Sized>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

/// The value inside `mutex` through an exclusive reference, poisoned or not.
pub(crate) fn get_mut<T: ?Sized>(mutex: &mut Mutex<T>) -> &mut T {
    mutex.get_mut().unwrap_or_else(|e| e.into_inner())
}
