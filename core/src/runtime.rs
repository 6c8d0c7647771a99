//! The async runtime agent and waypoint run on.

use std::future::Future;

use tokio::task::JoinHandle;
use tracing::{Instrument, Span};

/// Spawns `fut` inside `span`, or without it when the span is disabled: a task keeps what it
/// holds for its whole life, a connection's task lives as long as the connection, and a
/// disabled span would still take 40 bytes of it (enough to move the task into tokio's next
/// 128-byte size step).
pub fn spawn_in<F>(span: Span, fut: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    if span.is_disabled() {
        tokio::spawn(fut)
    } else {
        tokio::spawn(fut.instrument(span))
    }
}

/// With one worker everything runs on the calling thread: no wake-ups between threads, the
/// least CPU per request at moderate rates. More workers share the load, with work stealing.
pub fn build(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match worker_threads {
        0 | 1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    builder.enable_all().build()
}
