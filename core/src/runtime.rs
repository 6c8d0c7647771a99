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

/// How the kernel schedules the data path's worker threads.
///
/// `Batch` (`SCHED_BATCH`): a worker woken by a packet does not preempt the task running on
/// its CPU; it runs when that task blocks or its slice ends, or at once on an idle CPU. On a
/// request path the task running is usually the app that just wrote the request, about to
/// wait for the answer: preempted, it would be switched out and back in only to go to sleep.
/// Measured on a 2-vCPU VM (docs/benchmarks.md, session 17): the agents' CPU at 1000 rps a
/// fifth lower and p50 a quarter lower, p99 within the spread between runs. A worker still
/// gets its full fair share of CPU; it only waits longer for it when every CPU is busy.
/// `Normal` is the kernel's default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheduling {
    Normal,
    Batch,
}

impl std::str::FromStr for Scheduling {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "normal" => Ok(Scheduling::Normal),
            "batch" => Ok(Scheduling::Batch),
            _ => Err(format!(
                "{s:?} is not a scheduling policy (batch or normal)"
            )),
        }
    }
}

/// Applies `scheduling` to the calling thread only (Linux schedules threads, not processes).
/// Needs no privilege: neither policy raises priority.
pub fn set_thread_scheduling(scheduling: Scheduling) -> std::io::Result<()> {
    let policy = match scheduling {
        Scheduling::Normal => libc::SCHED_OTHER,
        Scheduling::Batch => libc::SCHED_BATCH,
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the call's duration; pid 0 is this thread.
    if unsafe { libc::sched_setscheduler(0, policy, &param) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy_of_a_thread_set_to(s: Scheduling) -> i32 {
        std::thread::spawn(move || {
            set_thread_scheduling(s).unwrap();
            // SAFETY: plain query of the calling thread.
            unsafe { libc::sched_getscheduler(0) }
        })
        .join()
        .unwrap()
    }

    #[test]
    fn scheduling_applies_to_the_calling_thread_only() {
        // SAFETY: plain queries of the calling thread.
        let before = unsafe { libc::sched_getscheduler(0) };
        assert_eq!(
            policy_of_a_thread_set_to(Scheduling::Batch),
            libc::SCHED_BATCH
        );
        assert_eq!(
            policy_of_a_thread_set_to(Scheduling::Normal),
            libc::SCHED_OTHER
        );
        assert_eq!(unsafe { libc::sched_getscheduler(0) }, before);
    }

    #[test]
    fn scheduling_parses_its_two_names_and_nothing_else() {
        assert_eq!("batch".parse(), Ok(Scheduling::Batch));
        assert_eq!("normal".parse(), Ok(Scheduling::Normal));
        assert!("BATCH".parse::<Scheduling>().is_err());
        assert!("fifo".parse::<Scheduling>().unwrap_err().contains("fifo"));
    }
}
