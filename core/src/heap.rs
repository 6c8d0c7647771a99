//! Giving freed heap back to the system.
//!
//! glibc's allocator keeps memory freed by a burst (many connections, large copies), so
//! without this an idle proxy keeps the RSS of its busiest moment. Two settings fix that:
//!
//! - one arena for all threads ([`configure`]). glibc gives threads that contend arenas of
//!   their own, and never shrinks the top of those (not even `malloc_trim` does): after a
//!   throughput test, each worker's arena kept megabytes. Small allocations still come from
//!   per-thread caches without taking the arena's lock. The agent uses it (its idle memory
//!   fell from 22 to 15 MiB); the waypoint does not: in the same session's L7 benchmark its
//!   CPU per request rose by about a sixth with one arena, and its memory was not a problem.
//! - a periodic `malloc_trim` ([`spawn_trimmer`]), which returns whole free pages; on a heap
//!   of a few MiB it takes well under a millisecond, so it is cheap at any rate of traffic.

use std::time::Duration;

/// How often freed pages are returned.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(10);

/// Sets the allocator up for a long-running proxy. Call first in `main`, before threads start.
pub fn configure() {
    // SAFETY: mallopt only changes the allocator's own parameters.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

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
