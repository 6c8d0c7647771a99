//! Access logs: one JSON object per line, per connection (agent) or per request (waypoint).
//!
//! Lines are gathered in memory and written out by a background thread once per
//! `flush_interval`, or sooner when `FLUSH_BYTES` are waiting, as Envoy does for its
//! access-log files. Formatting one line costs about a microsecond; writing it on its own
//! was one system call per request, and going through `tracing`'s JSON formatter cost more
//! than routing the request. Memory is bounded: past `MAX_BUFFERED` lines are dropped and
//! counted rather than queued.
//!
//! Each line has the shape of the process's `tracing` lines (`timestamp`, `level`, `target`,
//! `message`, then the fields), so one log pipeline reads both.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde::Serialize;

/// Past this many waiting bytes the writer is woken early.
const FLUSH_BYTES: usize = 64 * 1024;
/// Past this many waiting bytes lines are dropped: stdout is not keeping up.
const MAX_BUFFERED: usize = 4 * 1024 * 1024;

/// Where access-log lines go. Cloning shares the destination.
#[derive(Clone, Default)]
pub struct AccessLog {
    shared: Option<Arc<Shared>>,
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    dropped: AtomicU64,
    /// The writer thread, joined by `close`.
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    closed: bool,
}

/// The fixed head of every line; the entry's own fields follow it, flattened.
#[derive(Serialize)]
struct Line<'a, E> {
    timestamp: Timestamp,
    level: &'static str,
    target: &'static str,
    message: &'a str,
    #[serde(flatten)]
    entry: &'a E,
}

// === impl AccessLog ===

impl AccessLog {
    /// No access log: `write` does nothing.
    pub fn off() -> Self {
        Self::default()
    }

    /// Lines go to the process's stdout, in batches.
    pub fn stdout(flush_interval: Duration) -> Self {
        Self::to_writer(std::io::stdout(), flush_interval)
    }

    /// As configured: to stdout every `flush_interval`, or off when None.
    pub fn stdout_or_off(flush_interval: Option<Duration>) -> Self {
        flush_interval.map_or_else(Self::off, Self::stdout)
    }

    /// Lines go to `out`, in batches written by a background thread.
    pub fn to_writer(mut out: impl Write + Send + 'static, flush_interval: Duration) -> Self {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            dropped: AtomicU64::new(0),
            writer: Mutex::new(None),
        });
        let bg = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut batch = Vec::new();
                let mut dropped_seen = 0;
                loop {
                    let closed = {
                        let guard = bg.pending.lock().unwrap_or_else(|e| e.into_inner());
                        let (mut p, _) = bg
                            .wake
                            .wait_timeout_while(guard, flush_interval, |p| {
                                !p.closed && p.buf.len() < FLUSH_BYTES
                            })
                            .unwrap_or_else(|e| e.into_inner());
                        std::mem::swap(&mut p.buf, &mut batch);
                        p.closed
                    };
                    if !batch.is_empty() {
                        // A failed write loses this batch only; stdout may come back.
                        let _ = out.write_all(&batch).and_then(|()| out.flush());
                        batch.clear();
                        // Keep a typical batch's capacity, not a burst's.
                        batch.shrink_to(FLUSH_BYTES);
                    }
                    let dropped = bg.dropped.load(Ordering::Relaxed);
                    if dropped > dropped_seen {
                        tracing::warn!(
                            "access log: {} lines dropped, stdout is not keeping up",
                            dropped - dropped_seen
                        );
                        dropped_seen = dropped;
                    }
                    if closed {
                        return;
                    }
                }
            });
        match spawned {
            Ok(handle) => {
                *shared.writer.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
                Self {
                    shared: Some(shared),
                }
            }
            Err(e) => {
                tracing::error!("access log disabled: cannot start its writer thread: {e}");
                Self::off()
            }
        }
    }

    pub fn enabled(&self) -> bool {
        self.shared.is_some()
    }

    /// Adds one line: `message` and `entry`'s fields (a struct or map).
    pub fn write<E: Serialize>(&self, message: &str, entry: &E) {
        let Some(shared) = &self.shared else { return };
        let line = Line {
            timestamp: Timestamp::now(),
            level: "INFO",
            target: "access",
            message,
            entry,
        };
        let mut p = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.closed || p.buf.len() >= MAX_BUFFERED {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let start = p.buf.len();
        if serde_json::to_writer(&mut p.buf, &line).is_err() {
            p.buf.truncate(start);
            return;
        }
        p.buf.push(b'\n');
        if p.buf.len() >= FLUSH_BYTES {
            shared.wake.notify_one();
        }
    }

    /// Lines dropped because the writer fell `MAX_BUFFERED` bytes behind.
    pub fn dropped(&self) -> u64 {
        self.shared
            .as_ref()
            .map_or(0, |s| s.dropped.load(Ordering::Relaxed))
    }

    /// Writes what is waiting and stops the writer; later lines are dropped. For shutdown.
    pub fn close(&self) {
        let Some(shared) = &self.shared else { return };
        shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .closed = true;
        shared.wake.notify_one();
        let Some(writer) = shared
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        // The last batch is written once the thread has ended. Waiting is bounded: a stdout
        // that stays blocked must not hold up shutdown.
        for _ in 0..200 {
            if writer.is_finished() {
                let _ = writer.join();
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// RFC 3339 UTC with microseconds, as `tracing-subscriber` writes it, without allocating.
struct Timestamp(time::OffsetDateTime);

impl Timestamp {
    fn now() -> Self {
        Self(time::OffsetDateTime::now_utc())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = &self.0;
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.microsecond()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[derive(Serialize)]
    struct Entry<'a> {
        path: &'a str,
        response_code: u16,
        #[serde(rename = "src.addr")]
        src_addr: &'a str,
    }

    fn lines(sink: &Sink) -> Vec<serde_json::Value> {
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn lines_are_json_with_the_tracing_head_and_the_entry_fields() {
        let sink = Sink::default();
        let log = AccessLog::to_writer(sink.clone(), Duration::from_secs(3600));
        for code in [200, 503] {
            let e = Entry {
                path: "/a\"b",
                response_code: code,
                src_addr: "10.0.0.1:5",
            };
            log.write("request", &e);
        }
        // Nothing is written before the interval or a close.
        assert!(sink.0.lock().unwrap().is_empty());
        log.close();
        let got = lines(&sink);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0]["level"], "INFO");
        assert_eq!(got[0]["target"], "access");
        assert_eq!(got[0]["message"], "request");
        assert_eq!(got[0]["path"], "/a\"b");
        assert_eq!(got[1]["response_code"], 503);
        assert_eq!(got[1]["src.addr"], "10.0.0.1:5");
        let ts = got[0]["timestamp"].as_str().unwrap();
        assert!(
            time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).is_ok(),
            "{ts}"
        );
        // After close, lines are dropped and counted.
        log.write("request", &got[0]);
        assert_eq!(log.dropped(), 1);
    }

    #[test]
    fn the_interval_flushes_without_a_close() {
        let sink = Sink::default();
        let log = AccessLog::to_writer(sink.clone(), Duration::from_millis(20));
        log.write("connection complete", &serde_json::json!({"bytes": 1}));
        let mut n = 0;
        for _ in 0..250 {
            n = lines(&sink).len();
            if n == 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(n, 1);
        log.close();
    }

    #[test]
    fn off_writes_nothing() {
        let log = AccessLog::off();
        assert!(!log.enabled());
        log.write("request", &serde_json::json!({"a": 1}));
        log.close();
        assert_eq!(log.dropped(), 0);
    }
}
