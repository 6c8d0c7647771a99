//! `cargo xtask bench l7`: the waypoint measured against the direct path and against Debian's
//! nginx as a plain reverse proxy, in one run, same topology, release builds. The waypoint has
//! 20 routes and 20 authorization rules configured, the matching ones last.
//!
//! Paths (client on node 0, 1 KiB HTTP server on node 1):
//! - direct: client → server (namespace not in the mesh);
//! - nginx: client → nginx pod (node 0, not in the mesh) → server;
//! - waypoint: client → its agent → waypoint pod (node 0) → server's agent → server.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use lanyard_e2e::{Mesh, PodSpec, ServiceSpec};
use serde_json::Value;

use super::{all_ok, cpu_seconds, rss_kib, run_json, steal, tool};
use super::{apt_install, at_rate, ensure_tools, use_release_binaries, write_section};

const VIP: &str = "10.96.0.30";

#[derive(Debug, Default)]
struct Path {
    max_rps: f64,
    /// CPU of the proxy process (nginx workers or the waypoint) during the max-rps run.
    proxy_cores_at_max: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Proxy CPU per 1000 rps at the fixed rate.
    proxy_cores_per_1000: f64,
    proxy_rss_mib: f64,
    /// Share of CPU stolen by the hypervisor during the latency run alone.
    latency_steal: f64,
}

fn config() -> String {
    let mut routes = String::new();
    for i in 0..19 {
        routes += &format!("  - match: [{{headers: {{x-route: {{exact: r{i}}}}}, uri: {{prefix: /r{i}}}}}]\n    route: [{{destination: {{host: server}}}}]\n");
    }
    routes += "  - route: [{destination: {host: server}}]\n";
    let mut rules = String::new();
    for i in 0..19 {
        rules += &format!("  - from: [{{source: {{principals: [cluster.local/ns/other/sa/s{i}]}}}}]\n    to: [{{operation: {{methods: [POST], paths: ['/admin/{i}/*']}}}}]\n");
    }
    rules += "  - from: [{source: {principals: [cluster.local/ns/bench/sa/client]}}]\n    to: [{operation: {methods: [GET]}}]\n";
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: server, namespace: bench}}
spec:
  hosts: [server]
  http:
{routes}---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: server, namespace: bench}}
spec:
  targetRefs: [{{kind: Service, group: '', name: server}}]
  action: ALLOW
  rules:
{rules}"
    )
}

fn nginx_conf(dir: &std::path::Path, upstream: &str) -> Result<PathBuf> {
    let conf = format!(
        "daemon off;\nmaster_process on;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/nginx-body;\n  proxy_temp_path {d}/nginx-proxy;\n\
           fastcgi_temp_path {d}/nginx-fcgi;\n  uwsgi_temp_path {d}/nginx-uwsgi;\n  scgi_temp_path {d}/nginx-scgi;\n\
           upstream app {{ server {upstream}; keepalive 64; }}\n\
           server {{ listen 8080; location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n}}\n",
        d = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    Ok(path)
}

/// All processes in a pod's app cgroup (nginx's master and worker; the waypoint).
pub fn cgroup_pids(cgroup: &std::path::Path) -> Vec<u32> {
    std::fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| cpu_seconds(*p).ok()).sum()
}

fn oha(mesh: &Mesh, args: &[&str]) -> Result<Value> {
    let oha = tool("oha")?;
    let mut all = vec!["--no-tui", "--output-format", "json"];
    all.extend(args);
    run_json(mesh.exec_command("client", oha.to_str().unwrap(), &all))
}

fn measure(mesh: &Mesh, url: &str, proxy: &dyn Fn() -> Vec<u32>) -> Result<Path> {
    let mut p = Path::default();
    // Warm up connections and caches.
    oha(mesh, &["-z", "2s", "-c", "4", url])?;
    let c0 = cpu_of(&proxy());
    let t0 = Instant::now();
    let max = oha(mesh, &["-z", "10s", "-c", "16", url])?;
    let (cpu, secs) = (cpu_of(&proxy()) - c0, t0.elapsed().as_secs_f64());
    all_ok(&max, &format!("max rps run through {url}"))?;
    p.max_rps = max["summary"]["requestsPerSec"]
        .as_f64()
        .context("requestsPerSec")?;
    p.proxy_cores_at_max = cpu / secs;
    let lat = at_rate::run(mesh, url, &proxy())?;
    p.latency_steal = lat.steal;
    p.p50_ms = lat.p50_ms;
    p.p99_ms = lat.p99_ms;
    p.proxy_cores_per_1000 = lat.cost.map_or(0.0, |c| c.cores);
    p.proxy_rss_mib = proxy().iter().filter_map(|p| rss_kib(*p).ok()).sum::<f64>() / 1024.0;
    Ok(p)
}

pub fn run() -> Result<()> {
    ensure_tools()?;
    if !std::path::Path::new("/usr/sbin/nginx").exists() {
        apt_install("nginx-light")?;
    }
    use_release_binaries()?;
    let mut mesh = topology("benc7")?;
    let server = format!("{}:8080", mesh.pod("server").ip);
    let conf = nginx_conf(mesh.dir.path(), &server)?;
    let nginx = mesh
        .exec_command("nginx", "/usr/sbin/nginx", &["-c", conf.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    mesh.adopt(nginx);
    std::thread::sleep(Duration::from_millis(500));
    let nginx_cgroup = mesh.pod("nginx").cgroup.join("app");

    eprintln!("measuring direct…");
    let (direct, direct_steal) =
        steal::during(|| measure(&mesh, &format!("http://{server}/"), &Vec::new))?;
    eprintln!("measuring nginx…");
    let (via_nginx, nginx_steal) = steal::during(|| {
        measure(
            &mesh,
            &format!("http://{}:8080/", mesh.pod("nginx").ip),
            &|| cgroup_pids(&nginx_cgroup),
        )
    })?;
    enroll(&mut mesh)?;
    let wp_cgroup = waypoint_cgroup(&mesh);
    eprintln!("measuring waypoint…");
    let (via_wp, wp_steal) = steal::during(|| {
        measure(&mesh, &format!("http://{VIP}:80/"), &|| {
            cgroup_pids(&wp_cgroup)
        })
    })?;
    drop(mesh);
    let mut table = render(&direct, &via_nginx, &via_wp);
    table += &steal::report(&[
        ("direct", direct_steal),
        ("nginx", nginx_steal),
        ("waypoint", wp_steal),
    ]);
    table += &steal::report_latency(&[
        ("direct", direct.latency_steal),
        ("nginx", via_nginx.latency_steal),
        ("waypoint", via_wp.latency_steal),
    ]);
    println!("{table}");
    write_section("L7 (waypoint)", &l7_preamble(), &table)?;
    Ok(())
}

/// The bench's topology, its namespace not yet in the mesh: client and nginx pods on node 0,
/// the 1 KiB server on node 1 behind Service `server` ([`VIP`]), the namespace's waypoint.
pub fn topology(prefix: &str) -> Result<Mesh> {
    // Extra waypoint flags, to compare configurations of one build (e.g. `--worker-threads 1`).
    let extra = std::env::var("LANYARD_BENCH_WAYPOINT_ARGS").unwrap_or_default();
    let mut extra: Vec<&str> = extra.split_whitespace().collect();
    if !extra.is_empty() {
        eprintln!("waypoint flags: {extra:?}");
    }
    // Like for like: the bench's nginx writes no access log, nor does Istio's default profile
    // (`meshConfig.accessLogFile` empty), so the waypoint writes none either.
    if !extra
        .iter()
        .any(|a| *a == "--access-log" || a.starts_with("--access-log="))
    {
        extra.extend(["--access-log", "off"]);
    }
    let mut mesh = Mesh::builder(prefix)
        .waypoint_args(&extra)
        .nodes(2)
        .namespace("bench", false)
        .namespace("edge", false)
        .waypoint("bench")
        .pod(PodSpec::new("client", "bench").node(0))
        .pod(PodSpec::new("server", "bench").node(1))
        .pod(PodSpec::new("nginx", "edge").node(0))
        .service(ServiceSpec::new("server", "bench", VIP.parse()?).named_port("http", 80, 8080))
        .start()?;
    let cmd = mesh.command(
        "server",
        &["http-server", "--port", "8080", "--size", "1024"],
    );
    mesh.start_listening(cmd, "http-server")?;
    Ok(mesh)
}

/// Puts the bench namespace in the mesh, with the 20 routes and 20 rules, and waits for it.
pub fn enroll(mesh: &mut Mesh) -> Result<()> {
    mesh.extra_yaml = config();
    mesh.set_namespace_ambient("bench", true)?;
    mesh.wait_enrolled(Duration::from_secs(15))?;
    std::thread::sleep(Duration::from_secs(1));
    Ok(())
}

/// The waypoint's cgroup: its process (the e2e-tool launcher has exec'd into it).
pub fn waypoint_cgroup(mesh: &Mesh) -> std::path::PathBuf {
    mesh.pod("waypoint-bench").cgroup.join("app")
}

/// The bench's load through the waypoint, without measuring: the max-rate run, then the
/// fixed-rate one (`cargo xtask link-order waypoint` samples the waypoint under it).
pub fn waypoint_load(mesh: &Mesh) -> Result<()> {
    let url = format!("http://{VIP}:80/");
    for args in [
        &["-z", "10s", "-c", "16", url.as_str()][..],
        &["-z", "15s", "-q", "1000", "-c", "4", url.as_str()][..],
    ] {
        let out = oha(mesh, args)?;
        all_ok(&out, &format!("load through {url}"))?;
    }
    Ok(())
}

fn l7_preamble() -> String {
    "`cargo xtask bench l7`: one run, one topology, release builds. Client on node 0, a 1 KiB \
HTTP/1.1 server on node 1. Paths: direct; through Debian's nginx (1 worker, keep-alive \
upstream) in a pod on node 0; through the waypoint (client's agent → waypoint on node 0 → \
server's agent), with 20 VirtualService routes and 20 authorization rules, the matching ones \
last. Neither proxy writes an access log (nginx `access_log off`, the waypoint \
`--access-log off`). Max rps: oha, 16 connections, 10 s, unlimited rate; proxy cores are the proxy process's \
CPU during that run. Latency: oha at a fixed 1000 rps, 4 connections, `--latency-correction`, \
15 s. Added latency is against direct; the waypoint path also crosses two agents."
        .to_string()
}

fn render(d: &Path, n: &Path, w: &Path) -> String {
    let per_core = |p: &Path| {
        if p.proxy_cores_at_max > 0.0 {
            p.max_rps / p.proxy_cores_at_max
        } else {
            f64::NAN
        }
    };
    let mut t = String::from("| figure | direct | nginx | waypoint | waypoint vs nginx | target |\n|---|---|---|---|---|---|\n");
    t += &format!(
        "| max requests/s (16 conns) | {:.0} | {:.0} | {:.0} | {:.2}× | |\n",
        d.max_rps,
        n.max_rps,
        w.max_rps,
        w.max_rps / n.max_rps
    );
    t += &format!(
        "| proxy cores at max | – | {:.2} | {:.2} | | |\n",
        n.proxy_cores_at_max, w.proxy_cores_at_max
    );
    t += &format!(
        "| max requests/s per proxy core | – | {:.0} | {:.0} | {:.2}× | ≥ 1× nginx |\n",
        per_core(n),
        per_core(w),
        per_core(w) / per_core(n)
    );
    t += &format!(
        "| p50 @1000 rps | {:.3} ms | {:.3} ms (+{:.3}) | {:.3} ms (+{:.3}) | | |\n",
        d.p50_ms,
        n.p50_ms,
        n.p50_ms - d.p50_ms,
        w.p50_ms,
        w.p50_ms - d.p50_ms
    );
    t +=
        &format!(
        "| p99 @1000 rps | {:.3} ms | {:.3} ms (+{:.3}) | {:.3} ms (+{:.3}) | | added ≤ 1 ms |\n",
        d.p99_ms, n.p99_ms, n.p99_ms - d.p99_ms, w.p99_ms, w.p99_ms - d.p99_ms
    );
    t += &format!(
        "| proxy CPU per 1000 rps | – | {:.3} cores | {:.3} cores | {:.2}× | ≤ 0.08 vCPU |\n",
        n.proxy_cores_per_1000,
        w.proxy_cores_per_1000,
        w.proxy_cores_per_1000 / n.proxy_cores_per_1000
    );
    t += &format!(
        "| proxy RSS after 1000 rps | – | {:.1} MiB | {:.1} MiB | | ≤ 20 MiB |\n",
        n.proxy_rss_mib, w.proxy_rss_mib
    );
    t
}
