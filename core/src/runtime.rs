//! The async runtime agent and waypoint run on.

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
