//! Giving freed heap back to the system.
//!
//! glibc's allocator keeps memory freed by a burst (many connections, large copies) in its
//! per-thread arenas, so without this an idle proxy keeps the RSS of its busiest moment.
//! `malloc_trim` returns whole free pages of every arena; on a heap of a few MiB it takes
//! well under a millisecond, so a periodic call is cheap at any rate of traffic.

use std::time::Duration;

/// How often freed pages are returned.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(10);

/// Returns free heap pages now.
pub fn trim() {
    // SAFETY: malloc_trim only walks the allocator's own state, under its own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Trims every `every` on the current runtime, for the process's life.
pub fn spawn_trimmer(every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            trim();
        }
    });
}
