//! `cargo xtask bench l4`: the same two-node topology measured direct (namespace not enrolled)
//! and meshed (enrolled), in one run, with release builds. Figures are reported as ratios to
//! direct where that makes sense; absolute figures are for this machine only.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use lanyard_e2e::{Mesh, PodSpec};
use serde_json::Value;

use crate::at_rate::{self, AtRate};
use crate::steal;

const IPERF_PORT: &str = "5201";
const HTTP_PORT: u16 = 8080;
const HOLD_PORT: u16 = 9000;
/// The plain relays' ports, in the client and the server pod (outside the agent's 150xx).
const RELAY_PORTS: [u16; 2] = [16001, 16002];
const IDLE_CONNS: usize = 10_000;

#[derive(Debug, Default, Clone)]
struct Figures {
    gbps: f64,
    cpu_s_per_gb: Option<f64>,
    /// The latency run, and the agents' cost of it when meshed.
    at_rate: AtRate,
    new_conns_per_s: f64,
    rss_idle_mib: Option<f64>,
    /// The largest idle agent's RSS split: anonymous memory, and mapped files (the binary's
    /// code and the shared libraries it has touched).
    rss_idle_split_mib: Option<(f64, f64)>,
    /// Once the connections have idled past the agent's heap trim.
    rss_per_conn_kib: Option<f64>,
    /// 2 s after they opened, before freed set-up memory is returned.
    rss_per_conn_early_kib: Option<f64>,
}

/// oha's arguments for both benches' latency runs: a fixed 1000 rps over 4 connections for
/// 15 s, with latency correction (coordinated omission counted).
pub const LATENCY_RUN: [&str; 7] = ["-z", "15s", "-q", "1000", "-c", "4", "--latency-correction"];

pub fn tool(name: &str) -> Result<PathBuf> {
    let home = std::env::var("HOME").unwrap_or_default();
    for dir in [
        format!("{home}/.cargo/bin"),
        "/usr/bin".into(),
        "/usr/local/bin".into(),
    ] {
        let p = Path::new(&dir).join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("{name} not found: `cargo xtask bench` installs it, or install it yourself")
}

/// A Debian package a bench needs (root; the machine's apt sources).
pub fn apt_install(package: &str) -> Result<()> {
    let s = Command::new("apt-get")
        .args(["install", "-y", "-qq", package])
        .status()?;
    if !s.success() {
        bail!("apt-get install {package} failed");
    }
    Ok(())
}

pub fn ensure_tools() -> Result<()> {
    if tool("iperf3").is_err() {
        apt_install("iperf3")?;
    }
    if tool("oha").is_err() {
        crate::cargo(&["install", "oha", "--locked"])?;
    }
    Ok(())
}

/// utime + stime of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let (user, system) = at_rate::cpu_split(pid)?;
    Ok(user + system)
}

pub fn rss_kib(pid: u32) -> Result<f64> {
    status_kib(pid, "VmRSS:")
}

/// A `/proc/<pid>/status` figure in KiB (`VmRSS:`, `RssAnon:`, `RssFile:`).
fn status_kib(pid: u32, field: &str) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .with_context(|| format!("{field} value"))?
        .parse()?)
}

fn agents_cpu(mesh: &Mesh) -> Result<f64> {
    let mut total = 0.0;
    for i in 0..mesh.nodes.len() {
        total += cpu_seconds(mesh.agent_pid(i).context("agent not running")?)?;
    }
    Ok(total)
}

pub fn run_json(mut cmd: Command) -> Result<Value> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if !out.status.success() {
        bail!(
            "{:?} failed: {}",
            cmd.get_program(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("parsing output: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Fails unless every request of an oha run got a 200: a rate counts only answered requests
/// (a failing path can be fast). Requests cut off by the end of a timed run are not failures.
pub fn all_ok(oha: &Value, what: &str) -> Result<()> {
    let codes = oha["statusCodeDistribution"]
        .as_object()
        .with_context(|| format!("{what}: no statusCodeDistribution"))?;
    let errors = oha["errorDistribution"].as_object();
    let failed = codes.keys().any(|c| c != "200")
        || errors.is_some_and(|e| e.keys().any(|k| k != "aborted due to deadline"));
    if failed || codes.is_empty() {
        bail!(
            "{what}: not every request succeeded: status codes {}, errors {}",
            oha["statusCodeDistribution"],
            oha["errorDistribution"]
        );
    }
    Ok(())
}

fn measure(mesh: &mut Mesh, meshed: bool) -> Result<Figures> {
    let server = mesh.pod("server").ip.to_string();
    let mut f = Figures::default();

    // Single-stream throughput.
    let cpu0 = agents_cpu(mesh)?;
    let iperf = run_json(mesh.exec_command(
        "client",
        tool("iperf3")?.to_str().unwrap(),
        &["-c", &server, "-p", IPERF_PORT, "-t", "8", "-J"],
    ))?;
    let cpu = agents_cpu(mesh)? - cpu0;
    let received = &iperf["end"]["sum_received"];
    f.gbps = received["bits_per_second"]
        .as_f64()
        .context("iperf3 bits_per_second")?
        / 1e9;
    let bytes = received["bytes"].as_f64().context("iperf3 bytes")?;
    if meshed {
        f.cpu_s_per_gb = Some(cpu / (bytes / 1e9));
    }

    // Latency at a fixed 1000 rps, 1 KiB responses, 4 connections.
    let url = format!("http://{server}:{HTTP_PORT}/");
    let agents: Vec<u32> = if meshed { agent_pids(mesh) } else { Vec::new() };
    f.at_rate = at_rate::run(latency_run(mesh, &url)?, &agents)?;

    // New connections per second: one request per connection, as fast as it goes.
    let conns = run_json(mesh.exec_command(
        "client",
        tool("oha")?.to_str().unwrap(),
        &[
            "-z",
            "8s",
            "-c",
            "16",
            "--disable-keepalive",
            "--no-tui",
            "--output-format",
            "json",
            &url,
        ],
    ))?;
    all_ok(&conns, "new connections run")?;
    f.new_conns_per_s = conns["summary"]["requestsPerSec"]
        .as_f64()
        .context("requestsPerSec")?;

    if meshed {
        // Memory: idle, then with 10k idle proxied connections. The wait lets the pool's idle
        // connections go.
        std::thread::sleep(Duration::from_secs(35));
        let pids = agent_pids(mesh);
        let idle: Vec<f64> = pids.iter().map(|p| rss_kib(*p)).collect::<Result<_>>()?;
        f.rss_idle_mib = Some(idle.iter().cloned().fold(0.0, f64::max) / 1024.0);
        if let Some((_, pid)) = idle.iter().zip(&pids).max_by(|a, b| a.0.total_cmp(b.0)) {
            f.rss_idle_split_mib = Some((
                status_kib(*pid, "RssAnon:")? / 1024.0,
                (status_kib(*pid, "RssFile:")? + status_kib(*pid, "RssShmem:")?) / 1024.0,
            ));
        }
        let held = mesh.hold(
            "client",
            &format!("{server}:{HOLD_PORT}"),
            IDLE_CONNS,
            Duration::from_secs(10),
        )?;
        let per_conn = |pids: &[u32]| -> Result<f64> {
            let busy: Vec<f64> = pids.iter().map(|p| rss_kib(*p)).collect::<Result<_>>()?;
            Ok(idle
                .iter()
                .zip(&busy)
                .map(|(i, b)| (b - i) / IDLE_CONNS as f64)
                .fold(0.0, f64::max))
        };
        std::thread::sleep(Duration::from_secs(2));
        f.rss_per_conn_early_kib = Some(per_conn(&pids)?);
        // An idle connection's lasting cost: what the heap keeps once the agent's periodic
        // trim has returned the pages its set-up freed.
        std::thread::sleep(lanyard_core::heap::TRIM_INTERVAL);
        f.rss_per_conn_kib = Some(per_conn(&pids)?);
        drop(held);
    }
    Ok(f)
}

fn agent_pids(mesh: &Mesh) -> Vec<u32> {
    (0..mesh.nodes.len())
        .filter_map(|i| mesh.agent_pid(i))
        .collect()
}

/// The client pod's oha command for the latency run against `url`.
fn latency_run(mesh: &Mesh, url: &str) -> Result<Command> {
    Ok(mesh.exec_command(
        "client",
        tool("oha")?.to_str().unwrap(),
        &[
            LATENCY_RUN.as_slice(),
            &["--no-tui", "--output-format", "json", url],
        ]
        .concat(),
    ))
}

/// The floor for any two-proxy path on this machine: the latency run through two relays that
/// do nothing but copy (`e2e-tool relay`: one thread, tokio, the agent's scheduling policy),
/// one in each pod where the agents' listeners sit, before the namespace is enrolled. What
/// the agents spend above it is their own work (mTLS, HBONE, policy, metrics); what the
/// relays spend is the cost of two more wake-ups per packet on this host.
fn floor(mesh: &mut Mesh) -> Result<AtRate> {
    let server = mesh.pod("server").ip;
    let [client_port, server_port] = RELAY_PORTS;
    let hop = format!("{server}:{server_port}");
    let relays = [
        ("server", hop.clone(), format!("{server}:{HTTP_PORT}")),
        ("client", format!("127.0.0.1:{client_port}"), hop),
    ];
    let mut pids = Vec::new();
    for (pod, listen, to) in &relays {
        let cmd = mesh.command(pod, &["relay", "--listen", listen, "--to", to]);
        pids.push(mesh.start_listening(cmd, "relay")?);
    }
    let url = format!("http://127.0.0.1:{client_port}/");
    let run = at_rate::run(latency_run(mesh, &url)?, &pids);
    for pid in pids {
        // Gone before the namespace is enrolled; the mesh reaps them on drop.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    run
}

/// Release binaries: those in `$LANYARD_BENCH_BINS` when set (built earlier, e.g. to compare
/// two versions while the tree changes), else a fresh release build of the workspace.
pub fn release_binaries() -> Result<PathBuf> {
    let dir = match std::env::var_os("LANYARD_BENCH_BINS") {
        Some(dir) => PathBuf::from(dir),
        None => {
            crate::cargo(&["build", "--release", "--workspace", "--bins"])?;
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release")
        }
    };
    if !dir.join("lanyard-agent").exists() {
        bail!("no lanyard-agent in {}", dir.display());
    }
    Ok(dir)
}

/// Points the harness at [`release_binaries`].
pub fn use_release_binaries() -> Result<()> {
    std::env::set_var("LANYARD_BIN_DIR", release_binaries()?);
    Ok(())
}

/// The L4 bench's topology (a client pod on node 0, a server pod on node 1, namespace
/// `bench`), with the servers the bench uses in the server pod: iperf3 on 5201, a 1 KiB HTTP
/// server on 8080, and a server that greets and holds connections on 9000.
pub fn l4_mesh(prefix: &str, enrolled: bool) -> Result<Mesh> {
    let mut mesh = Mesh::builder(prefix)
        .nodes(2)
        .namespace("bench", enrolled)
        .pod(PodSpec::new("client", "bench").node(0))
        .pod(PodSpec::new("server", "bench").node(1))
        .start()?;
    let iperf = tool("iperf3")?;
    let s = mesh
        .exec_command("server", iperf.to_str().unwrap(), &["-s", "-p", IPERF_PORT])
        .stdout(Stdio::null())
        .spawn()?;
    mesh.adopt(s);
    for args in [
        vec!["http-server", "--port", "8080", "--size", "1024"],
        vec!["hold-server", "--port", "9000"],
    ] {
        let cmd = mesh.command("server", &args);
        mesh.start_listening(cmd, args[0])?;
    }
    Ok(mesh)
}

pub fn l4() -> Result<()> {
    ensure_tools()?;
    use_release_binaries()?;
    let mut mesh = l4_mesh("bench", false)?;
    std::thread::sleep(Duration::from_millis(300));

    eprintln!("measuring direct (namespace not enrolled)…");
    let (direct, direct_steal) = steal::during(|| measure(&mut mesh, false))?;
    eprintln!("measuring the floor (two plain relays, namespace not enrolled)…");
    let relays = floor(&mut mesh)?;
    mesh.set_namespace_ambient("bench", true)?;
    mesh.wait_enrolled(Duration::from_secs(15))?;
    eprintln!("measuring meshed (namespace enrolled)…");
    let (meshed, meshed_steal) = steal::during(|| measure(&mut mesh, true))?;
    drop(mesh);

    let mut table = render(&direct, &relays, &meshed);
    table += &steal::report(&[("direct", direct_steal), ("meshed", meshed_steal)]);
    table += &steal::report_latency(&[
        ("direct", direct.at_rate.steal),
        ("relays", relays.steal),
        ("meshed", meshed.at_rate.steal),
    ]);
    println!("{table}");
    let preamble = format!(
        "`cargo xtask bench l4`: one run, one two-node topology of network namespaces, measured \
first direct (namespace not enrolled), then meshed (enrolled), release builds. Single stream: \
iperf3, 8 s. Latency: oha at a fixed 1000 rps, 4 connections, 1 KiB responses, \
`--latency-correction`, 15 s. Two plain relays: the same latency run before enrolment through \
two relays where the agents sit (client pod, server pod) that only copy bytes (`e2e-tool relay`: \
one thread, tokio, the agents' `batch` scheduling): the floor for a two-proxy path on this \
machine, so the agents' own cost is what they add above it. New connections: oha, 16 workers, keep-alive off, 8 s. Memory: \
agent VmRSS idle, then with {IDLE_CONNS} idle proxied connections held open, once they have \
idled past the agent's {trim}-s heap trim (and 2 s after opening, in brackets).",
        trim = lanyard_core::heap::TRIM_INTERVAL.as_secs()
    );
    write_section("L4 (agent)", &preamble, &table)
}

fn render(d: &Figures, r: &AtRate, m: &Figures) -> String {
    let opt =
        |v: Option<f64>, unit: &str| v.map_or("–".to_string(), |v| format!("{v:.2} {unit}"));
    let mut t = String::new();
    t += "| figure | direct | two plain relays | meshed | meshed vs direct | target |\n\
          |---|---|---|---|---|---|\n";
    t += &format!(
        "| single-stream throughput | {:.2} Gb/s | – | {:.2} Gb/s | {:.2}× | ≥ 0.5× |\n",
        d.gbps,
        m.gbps,
        m.gbps / d.gbps
    );
    t += &format!(
        "| CPU-s per GB, both agents | – | – | {} | – | ≤ 1.2 |\n",
        opt(m.cpu_s_per_gb, "s")
    );
    let (dr, mr) = (&d.at_rate, &m.at_rate);
    for (name, dv, rv, mv, target) in [
        ("p50", dr.p50_ms, r.p50_ms, mr.p50_ms, ""),
        ("p90", dr.p90_ms, r.p90_ms, mr.p90_ms, ""),
        ("p99", dr.p99_ms, r.p99_ms, mr.p99_ms, "≤ +0.15 ms"),
    ] {
        t += &format!(
            "| {name} latency @1000 rps | {dv:.3} ms | {rv:.3} ms (+{:.3}) | {mv:.3} ms | +{:.3} ms | {target} |\n",
            rv - dv,
            mv - dv
        );
    }
    let cost = |c: Option<at_rate::Cost>, f: fn(at_rate::Cost) -> String| c.map_or("–".into(), f);
    t += &format!(
        "| CPU of both proxies @1000 rps | – | {} | {} | – | ≤ 0.08 cores |\n",
        cost(r.cost, |c| format!("{:.3} cores", c.cores)),
        cost(mr.cost, |c| format!("{:.3} cores", c.cores)),
    );
    t += &format!(
        "| their kernel share; context switches per request per proxy | – | {} | {} | – |  |\n",
        cost(r.cost, |c| format!(
            "{:.0} %; {:.2}",
            c.system_share * 100.0,
            c.switches_per_request
        )),
        cost(mr.cost, |c| format!(
            "{:.0} %; {:.2}",
            c.system_share * 100.0,
            c.switches_per_request
        )),
    );
    let split = m
        .rss_idle_split_mib
        .map(|(anon, file)| format!(" (anon {anon:.1}, files {file:.1})"))
        .unwrap_or_default();
    t += &format!(
        "| agent RSS idle (largest agent) | – | – | {}{split} | – | ≤ 10 MiB |\n",
        opt(m.rss_idle_mib, "MiB")
    );
    let early = m
        .rss_per_conn_early_kib
        .map(|v| format!(" ({v:.2} at 2 s)"))
        .unwrap_or_default();
    t += &format!(
        "| RSS per idle proxied connection, per agent | – | – | {}{early} | – | ≤ 2 KiB |\n",
        opt(m.rss_per_conn_kib, "KiB")
    );
    t += &format!(
        "| new connections/s (one request each) | {:.0} | – | {:.0} | {:.2}× | ≥ 0.5× |\n",
        d.new_conns_per_s,
        m.new_conns_per_s,
        m.new_conns_per_s / d.new_conns_per_s
    );
    t
}

/// `cargo xtask bench policy`: the criterion benchmark of the policy engine; its medians go to
/// docs/benchmarks.md (its own section, replaced on each run).
pub fn policy() -> Result<()> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["bench", "-p", "lanyard-core", "--bench", "policy"])
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("cargo bench failed");
    }
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    print!("{text}");
    // criterion prints "name\n   time:   [low median high]"
    let mut rows = Vec::new();
    let mut last_name = String::new();
    for line in text.lines() {
        if let Some(rest) = line.trim().strip_prefix("time:") {
            let parts: Vec<&str> = rest
                .trim()
                .trim_matches(|c| c == '[' || c == ']')
                .split_whitespace()
                .collect();
            if parts.len() >= 4 {
                rows.push((last_name.clone(), format!("{} {}", parts[2], parts[3])));
            }
        } else if !line.starts_with(' ') && !line.trim().is_empty() {
            last_name = line.trim().to_string();
        }
    }
    let targets = [("l4 decision", "≤ 1 µs"), ("config update", "≤ 50 ms")];
    let mut table = String::from("| benchmark | median | target |\n|---|---|---|\n");
    for (name, median) in &rows {
        let target = targets
            .iter()
            .find(|(p, _)| name.starts_with(p))
            .map_or("", |t| t.1);
        table += &format!("| {name} | {median} | {target} |\n");
    }
    write_section(
        "Policy engine",
        "`cargo xtask bench policy` (criterion, median). 5,000 AuthorizationPolicies in 100 namespaces, 50 applying to the destination workload (the last one matching).",
        &table,
    )
}

/// Replaces the generated block of the section `## {title}` of docs/benchmarks.md (or
/// appends the section), with a line saying when and where it ran. What a session wrote in
/// the section around the block stays.
pub fn write_section(title: &str, preamble: &str, table: &str) -> Result<()> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/benchmarks.md");
    let cpu = std::fs::read_to_string("/proc/cpuinfo")?
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':').map(|(_, v)| v.trim().to_string()))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let date = String::from_utf8(
        Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()?
            .stdout,
    )?;
    let block = format!(
        "{preamble}\n\nRun: {}, {} on {cores} cores ({cpu}), Linux {}\n\n{}",
        date.trim(),
        binaries_built_from(),
        kernel.trim(),
        table.trim_end()
    );
    let existing = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let out = splice_section(&existing, title, &block);
    std::fs::write(&path, out)?;
    eprintln!("written to {}", path.display());
    Ok(())
}

/// What the measured binaries were built from: this tree's commit (and whether it had
/// uncommitted changes), or the directory `$LANYARD_BENCH_BINS` named.
fn binaries_built_from() -> String {
    if let Some(dir) = std::env::var_os("LANYARD_BENCH_BINS") {
        return format!("binaries from {}", dir.to_string_lossy());
    }
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    // The file a run writes is left changed by the run before it: not a change to the build.
    let status = [
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        ":(top)",
        ":(top,exclude)docs/benchmarks.md",
    ];
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(commit) => match git(&status) {
            Some(changes) if changes.is_empty() => format!("commit {commit}"),
            _ => format!("commit {commit} with uncommitted changes"),
        },
        None => "an unknown commit".into(),
    }
}

const BEGIN: &str = "<!-- written by `cargo xtask bench`: begin -->";
const END: &str = "<!-- written by `cargo xtask bench`: end -->";

/// `doc` with `block` between the markers of section `## {title}`: in place of the old
/// block, else first in the section, else in a new section at the end.
fn splice_section(doc: &str, title: &str, block: &str) -> String {
    let marked = format!("{BEGIN}\n{block}\n{END}");
    let mut parts: Vec<String> = doc.split("\n## ").map(str::to_string).collect();
    let head = parts.remove(0);
    let heading = |p: &str| p.lines().next().unwrap_or_default().trim().to_string();
    match parts.iter_mut().find(|p| heading(p) == title) {
        Some(p) => {
            *p = match (p.find(BEGIN), p.find(END)) {
                (Some(b), Some(e)) if b < e => {
                    format!("{}{marked}{}", &p[..b], &p[e + END.len()..])
                }
                _ => {
                    let rest = p.split_once('\n').map_or("", |(_, r)| r);
                    format!("{title}\n\n{marked}\n\n{}", rest.trim_start())
                }
            }
        }
        None => parts.push(format!("{title}\n\n{marked}")),
    }
    let mut out = head.trim_end().to_string();
    for p in parts {
        out += "\n\n## ";
        out += p.trim_end();
    }
    out += "\n";
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "# Benchmarks\n\nIntro.\n\n## L4 (agent)\n\nSession 15 notes.\n\n## L7 (waypoint)\n\nL7 notes.\n";

    #[test]
    fn a_run_replaces_only_its_block_and_keeps_the_notes() {
        let first = splice_section(DOC, "L4 (agent)", "| run 1 |");
        assert!(
            first.contains(&format!(
                "## L4 (agent)\n\n{BEGIN}\n| run 1 |\n{END}\n\nSession 15 notes."
            )),
            "{first}"
        );
        let second = splice_section(&first, "L4 (agent)", "| run 2 |");
        assert!(!second.contains("run 1"), "{second}");
        let kept = format!("| run 2 |\n{END}\n\nSession 15 notes.");
        assert!(second.contains(&kept), "{second}");
        assert!(
            second.contains("## L7 (waypoint)\n\nL7 notes.\n"),
            "{second}"
        );
        assert_eq!(second.matches(BEGIN).count(), 1);
        assert_eq!(splice_section(&second, "L4 (agent)", "| run 2 |"), second);
    }

    #[test]
    fn a_new_suite_gets_a_section_at_the_end() {
        let out = splice_section(DOC, "Policy engine", "| p |");
        assert!(
            out.ends_with(&format!("## Policy engine\n\n{BEGIN}\n| p |\n{END}\n")),
            "{out}"
        );
        assert!(
            out.starts_with("# Benchmarks\n\nIntro.\n\n## L4 (agent)"),
            "{out}"
        );
    }
}
