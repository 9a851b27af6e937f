//! The broker's lock policies, one home for each:
//!
//! - **Poison**: a lock whose holder panicked is taken anyway. Broker state behind a std lock is
//!   updated in steps that cannot panic halfway (invariant in ARCHITECTURE.md: nothing on an input
//!   path panics), so a poisoned lock still guards consistent data; refusing it would turn one bug
//!   into a failure of every later operation on that queue, exchange or channel. Every std `Mutex` /
//!   `RwLock` in the broker is taken through these functions.
//! - **Slow sections off the workers**: code that may block for milliseconds (a plugin call that
//!   outlived its first epoch tick) runs through [`off_worker`], which first hands the Tokio worker's
//!   other tasks to another thread (`tokio::task::block_in_place`). While any such section runs, a
//!   lock found contended is also waited for off the worker, since its holder may be that section:
//!   a looping plugin then delays only what waits for it, never the other connections that happened
//!   to be scheduled on the same worker thread (ARCHITECTURE.md "Sandbox").

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};

use tokio::runtime::{Handle, RuntimeFlavor};

/// Sections running through [`off_worker`] now, in any thread.
static SLOW_SECTIONS: AtomicUsize = AtomicUsize::new(0);

/// Decrements [`SLOW_SECTIONS`] when the section ends, even by unwinding.
struct SlowSection;

impl Drop for SlowSection {
    fn drop(&mut self) {
        SLOW_SECTIONS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs `f`, which may block for milliseconds, without holding up a Tokio worker: on a worker of the
/// multi-threaded runtime its other tasks are handed to another thread first
/// (`tokio::task::block_in_place`; the worker is taken back afterwards). On any other thread (a
/// current-thread runtime, a plain thread, a section already off its worker) `f` runs as it is.
pub(crate) fn off_worker<T>(f: impl FnOnce() -> T) -> T {
    SLOW_SECTIONS.fetch_add(1, Ordering::Relaxed);
    let _section = SlowSection;
    blocking(f)
}

/// Runs `f`, a wait that holds no lock (e.g. for a group commit's fsync), without holding up a Tokio
/// worker: as [`off_worker`], but not counted as a slow section, since no lock waits on it.
pub(crate) fn wait_off_worker<T>(f: impl FnOnce() -> T) -> T {
    blocking(f)
}

/// `block_in_place` where it is allowed, else `f` inline.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Waits for a contended lock with `wait`: off the worker while a slow section runs anywhere (the
/// holder may be in it), else in place (the usual case: a short critical section).
fn contended<G>(wait: impl FnOnce() -> G) -> G {
    if SLOW_SECTIONS.load(Ordering::Relaxed) == 0 {
        wait()
    } else {
        blocking(wait)
    }
}

/// Locks `mutex`, recovering the guard of a poisoned lock.
pub(crate) fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.try_lock() {
        Ok(g) => g,
        Err(TryLockError::Poisoned(e)) => e.into_inner(),
        Err(TryLockError::WouldBlock) => {
            contended(|| mutex.lock().unwrap_or_else(|e| e.into_inner()))
        }
    }
}

/// Read-locks `lock`, recovering the guard of a poisoned lock.
pub(crate) fn read<T: ?Sized>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    match lock.try_read() {
        Ok(g) => g,
        Err(TryLockError::Poisoned(e)) => e.into_inner(),
        Err(TryLockError::WouldBlock) => {
            contended(|| lock.read().unwrap_or_else(|e| e.into_inner()))
        }
    }
}

/// Write-locks `lock`, recovering the guard of a poisoned lock.
pub(crate) fn write<T: ?Sized>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    match lock.try_write() {
        Ok(g) => g,
        Err(TryLockError::Poisoned(e)) => e.into_inner(),
        Err(TryLockError::WouldBlock) => {
            contended(|| lock.write().unwrap_or_else(|e| e.into_inner()))
        }
    }
}

/// The value inside `mutex` through an exclusive reference, poisoned or not.
pub(crate) fn get_mut<T: ?Sized>(mutex: &mut Mutex<T>) -> &mut T {
    mutex.get_mut().unwrap_or_else(|e| e.into_inner())
}
