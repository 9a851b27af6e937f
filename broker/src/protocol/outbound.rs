//! A connection's outgoing byte buffer, shared by everything that writes to the client.
//!
//! Method replies (from the connection task) and deliveries (from whichever task publishes into a queue)
//! append encoded frames under a short std `Mutex`; one writer task swaps the buffer out and writes it
//! with one syscall, so frames are flushed once per batch, not per frame (`../shared/DESIGN.md` §4).
//! Deliveries stop when the buffer passes [`Outbound::HIGH_WATER`] (a slow client cannot make the
//! broker buffer without bound) and resume when the writer has drained it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Outbound {
    buf: Mutex<BytesMut>,
    /// Bytes waiting in `buf`, readable without the lock.
    pending: AtomicUsize,
    /// Wakes the writer task.
    wake: Notify,
    /// Set when a delivery was held back for lack of buffer room; the writer then signals `resume`.
    stalled: AtomicBool,
    /// Signalled (to the connection task) once a stalled buffer has drained.
    pub resume: Notify,
    /// Negotiated frame_max, octets (body frames are split to fit).
    frame_max: AtomicUsize,
    /// No more writes are accepted; the writer flushes what is left and exits.
    closed: AtomicBool,
}

impl Outbound {
    /// Buffered bytes above which deliveries to this connection pause (1 MiB).
    pub(crate) const HIGH_WATER: usize = 1 << 20;
    /// Buffered bytes above which the connection's input is no longer handled (4 MiB): what the
    /// client asks for waits in its socket until it reads. Above [`Outbound::HIGH_WATER`], so that a
    /// consumer's acks keep flowing while deliveries to it are paused.
    pub(crate) const INPUT_HIGH_WATER: usize = 4 << 20;

    /// An empty buffer for a connection with the given `frame_max`.
    pub(crate) fn new(frame_max: usize) -> Self {
        Outbound {
            buf: Mutex::new(BytesMut::with_capacity(64 * 1024)),
            pending: AtomicUsize::new(0),
            wake: Notify::new(),
            stalled: AtomicBool::new(false),
            resume: Notify::new(),
            frame_max: AtomicUsize::new(frame_max),
            closed: AtomicBool::new(false),
        }
    }

    /// Appends frames written by `f` and wakes the writer. Ignored once closed.
    pub(crate) fn write<R>(&self, f: impl FnOnce(&mut BytesMut) -> R) -> Option<R> {
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        let mut buf = crate::sync::lock(&self.buf);
        let r = f(&mut buf);
        self.pending.store(buf.len(), Ordering::Release);
        drop(buf);
        self.wake.notify_one();
        Some(r)
    }

    /// Whether a delivery may be added now. Records a stall when not, so the writer signals `resume`.
    pub(crate) fn has_room(&self) -> bool {
        if self.pending.load(Ordering::Acquire) < Self::HIGH_WATER {
            return true;
        }
        self.stalled.store(true, Ordering::Release);
        // Re-check: the writer may have drained between the load and the store.
        self.pending.load(Ordering::Acquire) < Self::HIGH_WATER
    }

    /// Whether the connection's input may be handled now (buffer below
    /// [`Outbound::INPUT_HIGH_WATER`]). Records a stall when not, so the writer signals `resume`.
    pub(crate) fn has_room_for_input(&self) -> bool {
        if self.pending.load(Ordering::Acquire) < Self::INPUT_HIGH_WATER {
            return true;
        }
        self.stalled.store(true, Ordering::Release);
        self.pending.load(Ordering::Acquire) < Self::INPUT_HIGH_WATER
    }

    /// Negotiated frame_max in octets.
    pub(crate) fn frame_max(&self) -> usize {
        self.frame_max.load(Ordering::Relaxed)
    }

    /// Sets the negotiated frame_max (after connection.tune-ok).
    pub(crate) fn set_frame_max(&self, frame_max: usize) {
        self.frame_max.store(frame_max, Ordering::Relaxed);
    }

    /// Stops accepting writes; the writer flushes what is buffered and finishes.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Whether [`Outbound::close`] was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The writer task: flushes the buffer to `socket` each time it is woken, until closed and empty.
    ///
    /// # Errors
    /// The socket's I/O error; the buffer is then closed so nothing more accumulates.
    pub(crate) async fn run_writer<W: AsyncWrite + Unpin>(
        &self,
        mut socket: W,
    ) -> std::io::Result<()> {
        let mut spare = BytesMut::with_capacity(64 * 1024);
        loop {
            let batch = {
                let mut buf = crate::sync::lock(&self.buf);
                self.pending.store(0, Ordering::Release);
                std::mem::replace(&mut *buf, spare)
            };
            if !batch.is_empty() {
                if let Err(e) = socket.write_all(&batch).await {
                    self.close();
                    return Err(e);
                }
                if self.stalled.swap(false, Ordering::AcqRel) {
                    self.resume.notify_one();
                }
            }
            spare = batch;
            spare.clear();
            if spare.capacity() > 4 * Self::HIGH_WATER {
                // One burst should not pin a large buffer for the connection's lifetime.
                spare = BytesMut::with_capacity(64 * 1024);
            }
            if self.closed.load(Ordering::Acquire) && self.pending.load(Ordering::Acquire) == 0 {
                let _ = socket.flush().await;
                let _ = socket.shutdown().await;
                return Ok(());
            }
            if self.pending.load(Ordering::Acquire) == 0 {
                self.wake.notified().await;
            }
        }
    }
}
