//! CPU time the hypervisor gave to other guests while a benchmark phase ran (the `steal`
//! column of `/proc/stat`). On this shared machine it has gone from nothing to over 90 %
//! within an hour, which turned latency figures into hundreds of milliseconds and direct
//! throughput from 47 to 6 Gb/s; a run's figures are only comparable to another's at similar steal, so each
//! bench reports it next to its table.

use anyhow::{Context, Result};

/// Above this share of stolen CPU, a phase's timings say more about the host than the code.
const UNRELIABLE: f64 = 0.10;
/// From this share of a latency run (what the report prints as 1 %), its percentiles are the
/// host's: at 1000 rps, 1 % of a 15-s run on two vCPUs is 300 ms of one vCPU's time, which can
/// hold back more than 1 % of the requests. Session 25 saw +2.1 ms added p99 with 1 % stolen
/// over a phase and +20 ms with 8 %, against +0.2 to +0.4 ms in quiet runs of the same build
/// (docs/benchmarks.md).
const TAIL_UNRELIABLE: f64 = 0.005;

/// Runs `phase` and returns its result with the share of CPU stolen while it ran.
pub fn during<T>(phase: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let start = Sample::now()?;
    let out = phase()?;
    Ok((out, start.stolen_since()?))
}

/// Aggregate CPU counters at one instant, in clock ticks.
#[derive(Clone, Copy, Debug)]
struct Sample {
    steal: u64,
    total: u64,
}

impl Sample {
    fn now() -> Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        parse(&stat).context("/proc/stat has no aggregate cpu line")
    }

    /// Share of all CPU time since `self` that was stolen, 0 to 1.
    fn stolen_since(&self) -> Result<f64> {
        let now = Self::now()?;
        Ok(share(self, &now))
    }
}

fn parse(stat: &str) -> Option<Sample> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is
    // already counted in user and nice, so only the first eight are summed.
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    (f.len() == 8).then(|| Sample {
        steal: f[7],
        total: f.iter().sum(),
    })
}

fn share(a: &Sample, b: &Sample) -> f64 {
    let total = b.total.saturating_sub(a.total);
    if total == 0 {
        return 0.0;
    }
    b.steal.saturating_sub(a.steal) as f64 / total as f64
}

/// One line for under a bench's table, naming each phase's steal, and a warning on stderr
/// when any phase is above [`UNRELIABLE`].
pub fn report(phases: &[(&str, f64)]) -> String {
    let (list, worst) = listed(phases);
    let verdict = if worst > UNRELIABLE {
        eprintln!(
            "warning: the hypervisor took {:.0} % of the CPU during a phase; timings of this run \
             are not comparable to a quiet run's",
            worst * 100.0
        );
        format!(
            " (above {:.0} %: timings unreliable, memory figures still hold)",
            UNRELIABLE * 100.0
        )
    } else {
        String::new()
    };
    format!("\nCPU stolen by the hypervisor during each phase: {list}{verdict}.\n")
}

/// One line naming the steal during each fixed-rate latency run alone, which a phase's share
/// can hide (a phase also holds throughput and memory runs); from [`TAIL_UNRELIABLE`] it says
/// that run's percentiles are not to be read.
pub fn report_latency(runs: &[(&str, f64)]) -> String {
    let (list, worst) = listed(runs);
    let verdict = if worst >= TAIL_UNRELIABLE {
        " (1 % or more: that run's percentiles unreliable)"
    } else {
        ""
    };
    format!("During the 1000-rps latency runs alone: {list}{verdict}.\n")
}

/// "name N %, …" and the largest share.
fn listed(shares: &[(&str, f64)]) -> (String, f64) {
    let list: Vec<String> = shares
        .iter()
        .map(|(name, s)| format!("{name} {:.0} %", s * 100.0))
        .collect();
    let worst = shares.iter().map(|s| s.1).fold(0.0, f64::max);
    (list.join(", "), worst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_a_share_of_all_ticks() {
        let a = parse("cpu  100 0 50 800 10 0 5 35 7 0\ncpu0 1 2 3 4 5 6 7 8\n").unwrap();
        let b = parse("cpu  150 0 70 900 10 0 5 65 9 0\n").unwrap();
        assert_eq!(a.total, 1000);
        // 30 of 200 ticks stolen; guest ticks (7 → 9) are not added twice.
        assert!((share(&a, &b) - 0.15).abs() < 1e-9);
    }

    #[test]
    fn short_or_missing_lines_are_rejected() {
        assert!(parse("cpu0 1 2 3 4 5 6 7 8\n").is_none());
        assert!(parse("cpu  1 2 3\n").is_none());
    }

    #[test]
    fn report_flags_noisy_phases() {
        assert!(!report(&[("direct", 0.01), ("meshed", 0.02)]).contains("unreliable"));
        assert!(report(&[("direct", 0.01), ("meshed", 0.5)]).contains("unreliable"));
    }

    #[test]
    fn a_latency_run_is_flagged_from_one_percent() {
        let quiet = report_latency(&[("direct", 0.0), ("meshed", 0.004)]);
        assert!(!quiet.contains("unreliable"), "{quiet}");
        assert!(quiet.contains("meshed 0 %"), "{quiet}");
        let noisy = report_latency(&[("direct", 0.0), ("meshed", 0.01)]);
        assert!(noisy.contains("percentiles unreliable"), "{noisy}");
    }
}
