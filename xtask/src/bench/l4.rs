//! `cargo xtask bench l4`: the same two-node topology measured direct (namespace not enrolled)
//! and meshed (enrolled), in one run, with release builds. Figures are reported as ratios to
//! direct where that makes sense; absolute figures are for this machine only.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use lanyard_e2e::{Mesh, PodSpec};

use super::at_rate::{self, AtRate};
use super::{all_ok, cpu_seconds, ensure_tools, rss_kib, run_json, status_kib, steal, tool};
use super::{use_release_binaries, write_section};

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

fn agents_cpu(mesh: &Mesh) -> Result<f64> {
    agent_pids(mesh)?.into_iter().map(cpu_seconds).sum()
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
    let agents = if meshed {
        agent_pids(mesh)?
    } else {
        Vec::new()
    };
    f.at_rate = at_rate::run(mesh, &url, &agents)?;

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
        let pids = agent_pids(mesh)?;
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

/// Every node's agent: a meshed figure taken with one missing would be wrong, not smaller.
fn agent_pids(mesh: &Mesh) -> Result<Vec<u32>> {
    (0..mesh.nodes.len())
        .map(|i| mesh.agent_pid(i).context("agent not running"))
        .collect()
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
    let run = at_rate::run(mesh, &url, &pids);
    for pid in pids {
        // Gone before the namespace is enrolled; the mesh reaps them on drop.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    run
}

/// The L4 bench's topology (a client pod on node 0, a server pod on node 1, namespace
/// `bench`), with the servers the bench uses in the server pod: iperf3 on 5201, a 1 KiB HTTP
/// server on 8080, and a server that greets and holds connections on 9000.
pub fn mesh(prefix: &str, enrolled: bool) -> Result<Mesh> {
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

pub fn run() -> Result<()> {
    ensure_tools()?;
    use_release_binaries()?;
    let mut mesh = mesh("bench", false)?;
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
machine, so the agents' own cost is what they add above it. New connections: oha, 16 \
workers, keep-alive off, 8 s. Memory: agent VmRSS idle, then with {IDLE_CONNS} idle proxied connections held open, once they have \
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
    // The same two cells for the relays and the agents.
    let cells = |f: fn(at_rate::Cost) -> String| {
        let cell = |c: Option<at_rate::Cost>| c.map_or("–".to_string(), f);
        format!("{} | {}", cell(r.cost), cell(mr.cost))
    };
    t += &format!(
        "| CPU of both proxies @1000 rps | – | {} | – | ≤ 0.08 cores |\n",
        cells(|c| format!("{:.3} cores", c.cores))
    );
    t += &format!(
        "| their kernel share; context switches per request per proxy | – | {} | – |  |\n",
        cells(|c| format!(
            "{:.0} %; {:.2}",
            c.system_share * 100.0,
            c.switches_per_request
        ))
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
