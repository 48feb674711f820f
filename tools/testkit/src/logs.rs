//! Capturing what the services log, for tests that assert on log lines (no secret in them, the
//! request id on them).
//!
//! `capture` installs the process-wide subscriber, because tracing caches per callsite whether
//! anyone listens, and a thread-local subscriber in a binary whose other tests run without one
//! would miss events. So: one such test binary per capture, with one test in it.

use std::sync::{Arc, Mutex};

/// Everything logged since `capture` was called, as text lines in the default format.
#[derive(Clone, Default)]
pub struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    /// The text captured so far.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().expect("no panic while writing a log line").clone())
            .expect("log lines are UTF-8")
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("no panic while writing a log line").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the process-wide subscriber at `level` and returns what it will capture. Panics if
/// a subscriber is already installed (call it once per test binary).
pub fn capture(level: tracing::Level) -> CapturedLogs {
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    let subscriber =
        tracing_subscriber::fmt().with_max_level(level).with_writer(move || writer.clone()).with_ansi(false).finish();
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber of this test binary");
    logs
}
