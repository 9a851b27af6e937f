//! A plugin's stdout and stderr, as the broker's log: each line a plugin writes (`println!`,
//! Python `print`, `console.log`; `eprintln!` …) becomes one log event tagged with the plugin's name and
//! file — stdout at info (target `warren::plugin::stdout`), stderr at warn (`warren::plugin::stderr`).
//! A partial line waits for its end (or 4 KiB). Lines are rate-limited per instance (a burst of
//! [`LINE_BURST`], then [`LINES_PER_SECOND`]); what is dropped is counted and reported in one line
//! when output is allowed again, or when the instance goes away.

use crate::rate::TokenBucket;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Lines a plugin instance may log at once before the rate applies.
pub const LINE_BURST: f64 = 100.0;
/// Lines per second a plugin instance may log after its burst.
pub const LINES_PER_SECOND: f64 = 20.0;
/// Longest line kept whole; a longer one is split.
const LINE_MAX: usize = 4096;

/// Who writes: the plugin's name (`(loading)` before it has said it) and its file.
#[derive(Clone, Debug)]
pub struct Origin {
    /// Plugin name.
    pub plugin: Arc<str>,
    /// The file it was loaded from.
    pub file: Arc<str>,
}

impl Origin {
    /// The origin of `plugin` loaded from `file`.
    pub fn new(plugin: &str, file: &std::path::Path) -> Origin {
        Origin {
            plugin: Arc::from(plugin),
            file: Arc::from(file.display().to_string()),
        }
    }
}

/// Which stream a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

/// The line budget of one instance (its stdout and stderr together): a token bucket. Lines still
/// unreported when the instance goes away are reported then.
#[derive(Debug)]
struct LineBudget {
    origin: Origin,
    bucket: TokenBucket,
    /// Lines dropped since the last report.
    dropped: u64,
}

impl Drop for LineBudget {
    fn drop(&mut self) {
        if self.dropped > 0 {
            report_dropped(&self.origin, self.dropped);
        }
    }
}

impl LineBudget {
    /// Whether one more line may be logged now; counts it as dropped if not.
    fn take(&mut self, now: Instant) -> bool {
        if self.bucket.take(now) {
            true
        } else {
            self.dropped += 1;
            false
        }
    }
}

/// One stream of one instance, writing lines to the log.
#[derive(Debug)]
struct OutputToLog {
    origin: Origin,
    stream: Stream,
    line: Vec<u8>,
    budget: Arc<Mutex<LineBudget>>,
}

impl OutputToLog {
    fn take(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' || self.line.len() >= LINE_MAX {
                self.emit();
            }
            if b != b'\n' {
                self.line.push(b);
            }
        }
    }

    fn emit(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let (allowed, dropped) = {
            let mut budget = crate::sync::lock(&self.budget);
            let allowed = budget.take(Instant::now());
            let dropped = if allowed {
                std::mem::take(&mut budget.dropped)
            } else {
                0
            };
            (allowed, dropped)
        };
        if dropped > 0 {
            report_dropped(&self.origin, dropped);
        }
        if allowed {
            let text = String::from_utf8_lossy(&self.line);
            let Origin { plugin, file } = &self.origin;
            match self.stream {
                Stream::Stdout => {
                    tracing::info!(target: "warren::plugin::stdout", plugin = %plugin, file = %file, "{text}")
                }
                Stream::Stderr => {
                    tracing::warn!(target: "warren::plugin::stderr", plugin = %plugin, file = %file, "{text}")
                }
            }
        }
        self.line.clear();
    }
}

fn report_dropped(origin: &Origin, dropped: u64) {
    tracing::warn!(target: "warren::plugin::stderr", plugin = %origin.plugin, file = %origin.file, dropped, "plugin output over {LINES_PER_SECOND} lines/s: {dropped} lines not logged");
}

impl Drop for OutputToLog {
    fn drop(&mut self) {
        self.emit();
    }
}

#[wasmtime_wasi::async_trait]
impl wasmtime_wasi::p2::Pollable for OutputToLog {
    async fn ready(&mut self) {}
}

impl wasmtime_wasi::p2::OutputStream for OutputToLog {
    fn write(&mut self, bytes: bytes::Bytes) -> wasmtime_wasi::p2::StreamResult<()> {
        self.take(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> wasmtime_wasi::p2::StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> wasmtime_wasi::p2::StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for OutputToLog {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.take(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.emit();
        std::task::Poll::Ready(Ok(()))
    }
}

/// What the WASI context hands out as stdout or stderr: a fresh `OutputToLog` per stream, all of one
/// instance sharing one line budget.
#[derive(Debug)]
pub struct PluginOutput {
    origin: Origin,
    stream: Stream,
    budget: Arc<Mutex<LineBudget>>,
}

impl PluginOutput {
    /// Stdout and stderr of one instance of `origin`.
    pub fn pair(origin: &Origin) -> (PluginOutput, PluginOutput) {
        let budget = Arc::new(Mutex::new(LineBudget {
            origin: origin.clone(),
            bucket: TokenBucket::new(LINE_BURST, LINES_PER_SECOND),
            dropped: 0,
        }));
        let stream = |stream| PluginOutput {
            origin: origin.clone(),
            stream,
            budget: Arc::clone(&budget),
        };
        (stream(Stream::Stdout), stream(Stream::Stderr))
    }

    fn open(&self) -> OutputToLog {
        OutputToLog {
            origin: self.origin.clone(),
            stream: self.stream,
            line: Vec::new(),
            budget: Arc::clone(&self.budget),
        }
    }
}

impl wasmtime_wasi::cli::IsTerminal for PluginOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for PluginOutput {
    fn p2_stream(&self) -> Box<dyn wasmtime_wasi::p2::OutputStream> {
        Box::new(self.open())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.open())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate_and_dropped_lines_are_counted() {
        let start = Instant::now();
        let mut b = LineBudget {
            origin: Origin::new("x-test", std::path::Path::new("test.wasm")),
            bucket: TokenBucket::new(LINE_BURST, LINES_PER_SECOND),
            dropped: 0,
        };
        let allowed = (0..150).filter(|_| b.take(start)).count();
        assert_eq!(allowed, 100, "the burst");
        assert_eq!(b.dropped, 50);
        // One second later: twenty more.
        let later = start + Duration::from_secs(1);
        let allowed = (0..30).filter(|_| b.take(later)).count();
        assert_eq!(allowed, 20);
        assert_eq!(b.dropped, 60);
        b.dropped = 0; // reported; nothing left for the drop report
    }
}
