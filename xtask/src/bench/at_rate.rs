//! The benches' latency run (oha in the client pod at a fixed 1000 rps) and what the proxies on
//! the path spent on it: CPU, the kernel's share of it, and context switches per request. The
//! last two tell a proxy's own work apart from the cost of being woken once per packet, which a
//! proxy that does nothing at all pays as well.

use std::time::Instant;

use anyhow::{Context, Result};
use lanyard_e2e::Mesh;

use super::{all_ok, run_json, steal, tool};

/// oha's arguments for the latency run: a fixed 1000 rps over 4 connections for 15 s, with
/// latency correction (coordinated omission counted).
const LATENCY_RUN: [&str; 7] = ["-z", "15s", "-q", "1000", "-c", "4", "--latency-correction"];

/// Percentiles of one latency run, and the cost to the proxies that were measured.
#[derive(Debug, Default, Clone)]
pub struct AtRate {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    /// Share of CPU stolen by the hypervisor during the run.
    pub steal: f64,
    pub cost: Option<Cost>,
}

/// What the measured proxies spent, together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cost {
    pub cores: f64,
    /// Share of `cores` spent in the kernel (system time), 0 to 1.
    pub system_share: f64,
    /// Context switches (voluntary and not) of all their threads, per request and per proxy.
    pub switches_per_request: f64,
}

/// CPU and context switches of a set of processes, summed over their threads.
#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    user_s: f64,
    system_s: f64,
    switches: u64,
}

/// Runs the latency run from the client pod against `url` and measures `proxies` over it;
/// with no proxies, only the percentiles.
pub fn run(mesh: &Mesh, url: &str, proxies: &[u32]) -> Result<AtRate> {
    let oha = mesh.exec_command(
        "client",
        tool("oha")?.to_str().unwrap(),
        &[
            LATENCY_RUN.as_slice(),
            &["--no-tui", "--output-format", "json", url],
        ]
        .concat(),
    );
    let before = usage(proxies)?;
    let started = Instant::now();
    let (lat, steal) = steal::during(|| run_json(oha))?;
    let elapsed = started.elapsed().as_secs_f64();
    let after = usage(proxies)?;
    all_ok(&lat, &format!("latency run through {url}"))?;
    let pct = |k: &str| {
        lat["latencyPercentiles"][k]
            .as_f64()
            .map(|s| s * 1000.0)
            .with_context(|| format!("oha printed no {k}"))
    };
    let requests: u64 = lat["statusCodeDistribution"]
        .as_object()
        .context("oha printed no statusCodeDistribution")?
        .values()
        .filter_map(|v| v.as_u64())
        .sum();
    Ok(AtRate {
        p50_ms: pct("p50")?,
        p90_ms: pct("p90")?,
        p99_ms: pct("p99")?,
        steal,
        cost: (!proxies.is_empty()).then(|| cost(before, after, elapsed, requests, proxies.len())),
    })
}

fn cost(before: Usage, after: Usage, elapsed_s: f64, requests: u64, proxies: usize) -> Cost {
    let user = after.user_s - before.user_s;
    let system = after.system_s - before.system_s;
    let busy = user + system;
    Cost {
        cores: busy / elapsed_s,
        system_share: if busy > 0.0 { system / busy } else { 0.0 },
        switches_per_request: after.switches.saturating_sub(before.switches) as f64
            / (requests.max(1) as f64 * proxies as f64),
    }
}

fn usage(pids: &[u32]) -> Result<Usage> {
    let mut u = Usage::default();
    for &pid in pids {
        let (user, system) = cpu_split(pid)?;
        u.user_s += user;
        u.system_s += system;
        u.switches += switches(pid)?;
    }
    Ok(u)
}

/// utime and stime of a process (all its threads), in seconds.
pub fn cpu_split(pid: u32) -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let (user, system) = parse_stat_times(&stat).context("malformed /proc/<pid>/stat")?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
    Ok((user as f64 / hz, system as f64 / hz))
}

/// utime and stime, in ticks, from a `/proc/<pid>/stat` line.
fn parse_stat_times(stat: &str) -> Option<(u64, u64)> {
    // Fields after the command name (which may contain spaces and parentheses) start at the
    // last ") "; utime and stime are the 14th and 15th fields of the line.
    let rest = stat.rsplit_once(") ")?.1;
    let mut f = rest.split(' ').skip(11);
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

/// Context switches of every thread of `pid`. A thread that ended during the run takes its
/// count with it: the proxies measured keep their threads.
fn switches(pid: u32) -> Result<u64> {
    let mut total = 0;
    let tasks = format!("/proc/{pid}/task");
    for task in std::fs::read_dir(&tasks).with_context(|| format!("reading {tasks}"))? {
        let Ok(status) = std::fs::read_to_string(task?.path().join("status")) else {
            continue; // the thread ended between listing and reading
        };
        total += parse_switches(&status);
    }
    Ok(total)
}

fn parse_switches(status: &str) -> u64 {
    status
        .lines()
        .filter(|l| {
            l.starts_with("voluntary_ctxt_switches:")
                || l.starts_with("nonvoluntary_ctxt_switches:")
        })
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_times_survive_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (tokio (w) 1) S 1 4242 4242 0 -1 4194560 100 0 0 0 731 212 0 0 20 0 \
                    3 0 12345 1000 200 18446744073709551615";
        assert_eq!(parse_stat_times(stat), Some((731, 212)));
        assert_eq!(parse_stat_times("4242 (x) S 1"), None);
    }

    #[test]
    fn switches_sum_both_kinds() {
        let status = "Name:\tw\nvoluntary_ctxt_switches:\t1900\nnonvoluntary_ctxt_switches:\t350\n";
        assert_eq!(parse_switches(status), 2250);
    }

    #[test]
    fn cost_is_per_request_and_per_proxy() {
        let before = Usage {
            user_s: 1.0,
            system_s: 2.0,
            switches: 100,
        };
        let after = Usage {
            user_s: 1.3,
            system_s: 3.2,
            switches: 60_100,
        };
        let c = cost(before, after, 15.0, 15_000, 2);
        assert!((c.cores - 0.1).abs() < 1e-9, "{c:?}");
        assert!((c.system_share - 1.2 / 1.5).abs() < 1e-9, "{c:?}");
        assert!((c.switches_per_request - 2.0).abs() < 1e-9, "{c:?}");
    }
}
