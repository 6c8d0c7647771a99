//! The data path's threads. Each worker is a single-threaded runtime on its own thread; a pod
//! is given one at enrollment, and everything its traffic does runs there: its three
//! listeners, every connection they accept, and the HBONE connections that pod's outbound
//! traffic opens (the pool keys them by source pod). A tunnel's tasks wake each other on one
//! thread, never across threads, and the control plane (config, enrollment, admin and metrics
//! endpoints, certificate renewal) stays on the main thread.
//!
//! Why not one work-stealing runtime for everything, as before: on a 2-vCPU VM (AMD EPYC
//! host, four paired runs; docs/benchmarks.md, session 16), per-pod workers used 15 % less
//! agent CPU at 1000 rps, had 16 % lower p99, carried 17 % more single-stream throughput and
//! spent 14 % less CPU per GB. The cost: one pod's traffic is served by one thread, as one
//! HBONE connection is by one waypoint worker; load spreads over workers by pod.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use lanyard_core::runtime::{self, Scheduling};
use tokio::runtime::Handle;
use tracing::warn;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("starting data-path worker {0}: {1}")]
    Start(usize, std::io::Error),
}

pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
}

// === impl Workers ===

impl Workers {
    /// Starts `n` (at least one) worker threads, scheduled as `scheduling`, each running its
    /// runtime until the process exits.
    pub fn start(n: usize, scheduling: Scheduling) -> Result<Self, Error> {
        let mut handles = Vec::with_capacity(n.max(1));
        for i in 0..n.max(1) {
            let (tx, rx) = mpsc::sync_channel(1);
            std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || match runtime::build(1) {
                    Ok(rt) => {
                        // Only a cost, never a fault: the worker serves either way.
                        if let Err(e) = runtime::set_thread_scheduling(scheduling) {
                            warn!(
                                worker = i,
                                ?scheduling,
                                "scheduling policy not applied: {e}"
                            );
                        }
                        let _ = tx.send(Ok(rt.handle().clone()));
                        rt.block_on(std::future::pending::<()>());
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                })
                .map_err(|e| Error::Start(i, e))?;
            let handle = rx
                .recv()
                .map_err(|_| Error::Start(i, std::io::Error::other("thread exited")))?
                .map_err(|e| Error::Start(i, e))?;
            handles.push(handle);
        }
        Ok(Workers {
            handles,
            next: AtomicUsize::new(0),
        })
    }

    /// The worker for a newly enrolled pod: each in turn.
    pub fn next(&self) -> &Handle {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        &self.handles[i % self.handles.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_are_spread_over_every_worker_in_turn() {
        let workers = Workers::start(3, Scheduling::Normal).unwrap();
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let (tx, rx) = mpsc::channel();
                workers.next().spawn(async move {
                    let _ = tx.send(std::thread::current().name().map(str::to_string));
                });
                rx.recv_timeout(std::time::Duration::from_secs(5))
                    .unwrap()
                    .unwrap()
            })
            .collect();
        assert_eq!(
            threads,
            ["worker-0", "worker-1", "worker-2", "worker-0", "worker-1", "worker-2"]
        );
    }

    #[test]
    fn workers_run_with_the_scheduling_asked_for() {
        for (scheduling, policy) in [
            (Scheduling::Batch, libc::SCHED_BATCH),
            (Scheduling::Normal, libc::SCHED_OTHER),
        ] {
            let workers = Workers::start(1, scheduling).unwrap();
            let (tx, rx) = mpsc::channel();
            workers.next().spawn(async move {
                // SAFETY: plain query of the calling thread.
                let _ = tx.send(unsafe { libc::sched_getscheduler(0) });
            });
            let got = rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
            assert_eq!(got, policy, "{scheduling:?}");
        }
    }
}
