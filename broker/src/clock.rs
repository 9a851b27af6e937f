//! Wall-clock time, where a time is stored or sent rather than waited for (deadlines use tokio's
//! monotonic `Instant`): log records' expiry, idempotency windows, the `x-death` `time` field.

/// The current wall-clock time in milliseconds since the Unix epoch (0 if the clock is before it).
/// Used where a time is stored or sent: log records' expiry, idempotency windows, `x-death` `time`.
pub(crate) fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
