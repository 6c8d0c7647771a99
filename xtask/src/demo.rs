//! The demo: the todo app of the Istio walkthroughs (`todoui` calling `todobackend`) on a
//! two-node mesh of network namespaces, with a legacy client outside the mesh. Every step is
//! an assertion; the demo exits non-zero if one fails.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use lanyard_e2e::pcap::{self, PacketCapture};
use lanyard_e2e::{metric, probe, Mesh, PodSpec, ServiceSpec};

use crate::demo_l7;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const UI_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 21);
/// The todobackend pods also run a TCP echo server here, for the L4 steps.
const ECHO: u16 = 9090;
const MARKER: &str = "todo: buy milk (lanyard-demo-marker)";

pub struct Steps {
    results: Vec<(String, bool, String)>,
}

impl Steps {
    pub fn run(&mut self, name: &str, f: impl FnOnce() -> Result<String>) {
        eprint!("▶ {name} … ");
        let started = Instant::now();
        let (ok, detail) = match f() {
            Ok(d) => (true, d),
            Err(e) => (false, format!("{e:#}")),
        };
        eprintln!(
            "{} ({:.1}s)\n    {detail}",
            if ok { "PASS" } else { "FAIL" },
            started.elapsed().as_secs_f32()
        );
        self.results.push((name.to_string(), ok, detail));
    }
}

pub fn run(keep: bool) -> Result<()> {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    std::env::set_var("LANYARD_BIN_DIR", target.join("debug"));
    eprintln!("Starting a 2-node mesh: CA, one agent per node, the todo namespace's waypoint, todoui 0.1 (node0) and 0.2 (node1), todobackend ×2, a user, a legacy client outside the mesh, a local JWT issuer…");
    let todo = |name: &str, node: usize, app: &str| {
        PodSpec::new(name, "todo")
            .node(node)
            .label("app", app)
            .service_account(app)
    };
    let mut mesh = Mesh::builder("demo")
        .nodes(2)
        .namespace("todo", false)
        .namespace("legacy", false)
        .namespace("idp", false)
        .waypoint("todo")
        .pod(todo("todoui-0-1", 0, "todoui").label("version", "0.1"))
        .pod(todo("todoui-0-2", 1, "todoui").label("version", "0.2"))
        .pod(todo("todobackend-1", 1, "todobackend"))
        .pod(todo("todobackend-2", 0, "todobackend"))
        .pod(todo("user", 0, "user"))
        .pod(PodSpec::new("legacy-client", "legacy").node(0))
        .pod(PodSpec::new("idp", "idp").node(1))
        .service(
            ServiceSpec::new("todobackend", "todo", VIP)
                .named_port("http", 8080, 8080)
                .port(ECHO, ECHO),
        )
        .service(ServiceSpec::new("todoui", "todo", UI_VIP).named_port("http", 80, 8080))
        .start()?;
    for pod in ["todobackend-1", "todobackend-2", "todoui-0-1", "todoui-0-2"] {
        mesh.serve_http(pod, 8080, &[])?;
    }
    mesh.serve("todobackend-1", ECHO)?;
    mesh.serve("todobackend-2", ECHO)?;
    let idp = demo_l7::Idp::new()?;
    let jwks = mesh.dir.path().join("jwks.json");
    std::fs::write(&jwks, idp.jwks.to_string())?;
    mesh.serve_http("idp", 8080, &["--jwks", &jwks.to_string_lossy()])?;
    let backend = SocketAddr::from((mesh.pod("todobackend-1").ip, ECHO));
    let mut steps = Steps {
        results: Vec::new(),
    };

    steps.run(
        "before enrolment, todoui → todobackend crosses the node link in clear",
        || {
            let seen = capture_while(&mesh, || {
                mesh.run(
                    "todoui-0-1",
                    &["send", "--addr", &backend.to_string(), "--text", MARKER],
                )
            })?;
            if !pcap::contains(&seen, MARKER.as_bytes()) {
                bail!("expected to see the payload in the capture");
            }
            Ok(format!(
                "{} bytes captured on {}, payload visible",
                seen.len(),
                mesh.link_name(0)
            ))
        },
    );

    steps.run(
        "label namespace todo istio.io/dataplane-mode=ambient: pods enrolled live",
        || {
            mesh.set_namespace_ambient("todo", true)?;
            mesh.wait_enrolled(Duration::from_secs(15))?;
            let d0 = mesh.config_dump(0)?;
            let d1 = mesh.config_dump(1)?;
            Ok(format!(
                "node0 enrolled {}, node1 enrolled {}",
                d0["enrolledPods"], d1["enrolledPods"]
            ))
        },
    );

    steps.run(
        "traffic is mutual TLS: no plaintext on the node link",
        || {
            let seen = capture_while(&mesh, || {
                mesh.run(
                    "todoui-0-1",
                    &["send", "--addr", &backend.to_string(), "--text", MARKER],
                )
            })?;
            if pcap::contains(&seen, MARKER.as_bytes()) {
                bail!("payload seen in clear on the node link");
            }
            Ok(format!("{} bytes captured, payload not found", seen.len()))
        },
    );

    steps.run("certificates carry SPIFFE identities", || {
        let ca = mesh.ca_dir();
        let cert =
            probe::workload_cert(Some(&ca), &ca, "spiffe://cluster.local/ns/todo/sa/todoui")?;
        let hbone = SocketAddr::from((mesh.pod("todobackend-1").ip, 15008));
        let ids = probe::presented_identities(
            &mesh.nodes[0].netns,
            hbone,
            cert,
            "spiffe://cluster.local/ns/todo/sa/todobackend",
        )?;
        Ok(format!("todobackend-1:15008 presents {ids:?}"))
    });

    steps.run(
        "Service VIP traffic is balanced over todobackend endpoints",
        || {
            let mut hits = std::collections::BTreeMap::<String, u32>::new();
            for _ in 0..40 {
                let out = mesh
                    .run(
                        "todoui-0-1",
                        &["client", "--addr", &format!("{VIP}:{ECHO}")],
                    )
                    .map_err(anyhow::Error::msg)?;
                let who = out
                    .trim()
                    .trim_start_matches("greeting=")
                    .split(' ')
                    .next()
                    .unwrap_or_default()
                    .to_string();
                *hits.entry(who).or_default() += 1;
            }
            if hits.len() != 2 {
                bail!("expected both endpoints, got {hits:?}");
            }
            Ok(format!(
                "40 connections to {VIP}:{ECHO} (opaque TCP, through the waypoint) → {hits:?}"
            ))
        },
    );

    steps.run(
        "PERMISSIVE (default): the legacy client's plaintext is accepted",
        || {
            let out = mesh
                .run(
                    "legacy-client",
                    &["client", "--addr", &backend.to_string(), "--bytes", "100"],
                )
                .map_err(anyhow::Error::msg)?;
            Ok(format!("legacy-client → todobackend-1: {}", out.trim()))
        },
    );

    steps.run(
        "STRICT: the legacy client is refused, meshed todoui still served",
        || {
            mesh.stop_agent(1);
            mesh.mtls_mode = "strict".into();
            mesh.start_agent(1)?;
            mesh.wait_enrolled(Duration::from_secs(15))?;
            let refused = mesh.run(
                "legacy-client",
                &["client", "--addr", &backend.to_string(), "--timeout", "5"],
            );
            if refused.is_ok() {
                bail!("legacy plaintext was accepted under STRICT");
            }
            let ok = mesh
                .run(
                    "todoui-0-1",
                    &["client", "--addr", &backend.to_string(), "--bytes", "100"],
                )
                .map_err(anyhow::Error::msg)?;
            let denied = metric(
                &mesh.metrics(1)?,
                "istio_tcp_connections_closed_total",
                &[("response_flags", "DENY")],
            );
            Ok(format!(
                "legacy refused ({denied} denial counted); todoui: {}",
                ok.trim()
            ))
        },
    );

    demo_l7::run(&mut mesh, &mut steps, &idp);

    steps.run(
        "lanyardctl topology: the service graph from the agents' and the waypoint's metrics",
        || topology(&mesh),
    );

    eprintln!();
    eprintln!("| step | result |\n|---|---|");
    for (name, ok, _) in &steps.results {
        eprintln!("| {name} | {} |", if *ok { "PASS" } else { "FAIL" });
    }
    eprintln!(
        "\nMetrics: `ip netns exec {} curl -s 127.0.0.1:15020/metrics` (node0 agent; admin on 127.0.0.1:15000: /config_dump, /certs), `ip netns exec {} curl -s 127.0.0.1:15020/metrics` (waypoint: istio_requests_total…).",
        mesh.nodes[0].netns,
        mesh.pod("waypoint-todo").netns
    );
    if keep {
        eprintln!(
            "--keep: the mesh stays up until Ctrl-C (logs in {}).",
            mesh.dir.path().display()
        );
        let (tx, rx) = std::sync::mpsc::channel();
        ctrlc_channel(tx)?;
        let _ = rx.recv();
    }
    let failed = steps.results.iter().filter(|r| !r.1).count();
    drop(mesh);
    if failed > 0 {
        bail!("{failed} demo step(s) failed");
    }
    Ok(())
}

/// Runs the built `lanyardctl`; returns its exit code and JSON output.
pub fn lanyardctl(args: &[&str]) -> Result<(Option<i32>, serde_json::Value)> {
    let bin = lanyard_e2e::bin_dir().join("lanyardctl");
    let out = std::process::Command::new(&bin).args(args).output()?;
    let v = serde_json::from_slice(&out.stdout).map_err(|e| {
        anyhow::anyhow!(
            "lanyardctl {}: {e}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok((out.status.code(), v))
}

/// Writes each node agent's and the waypoint's metrics to files (they listen inside their
/// network namespaces) and draws the graph from them; checks the edges the demo's traffic
/// must have made.
fn topology(mesh: &Mesh) -> Result<String> {
    // Kept after the demo ends, unlike the mesh's own directory.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/demo");
    std::fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    let mut args: Vec<String> = vec!["topology".into(), "-o".into(), "json".into()];
    let texts = [
        ("node0", mesh.metrics(0)?),
        ("node1", mesh.metrics(1)?),
        ("waypoint", mesh.waypoint_metrics("todo")?),
    ];
    for (name, text) in texts {
        let path = dir.join(format!("metrics-{name}.txt"));
        std::fs::write(&path, text)?;
        args.extend(["--metrics-file".into(), path.to_string_lossy().into_owned()]);
    }
    let (dot, svg) = (dir.join("topology.dot"), dir.join("topology.svg"));
    args.extend(["--dot".into(), dot.to_string_lossy().into_owned()]);
    args.extend(["--svg".into(), svg.to_string_lossy().into_owned()]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_, graph) = lanyardctl(&argv)?;
    let edges = graph["edges"].as_array().cloned().unwrap_or_default();
    // Workloads are named as Istio's metrics name them: by app, not by pod.
    let find = |src: &str, dst: &str, proto: &str| {
        edges
            .iter()
            .find(|e| e["source"] == src && e["destination"] == dst && e["protocol"] == proto)
    };
    let http = find("todo/todoui", "todo/todobackend", "http")
        .ok_or_else(|| anyhow::anyhow!("no todoui → todobackend HTTP edge: {graph}"))?;
    let legacy = find("legacy/legacy-client", "todo/todobackend", "tcp")
        .ok_or_else(|| anyhow::anyhow!("no legacy-client → todobackend TCP edge: {graph}"))?;
    if http["mtls"] != true || legacy["mtls"] != false {
        bail!("security of the edges is wrong: {http} {legacy}");
    }
    if edges.iter().any(|e| {
        e["destination"]
            .as_str()
            .is_some_and(|d| d.contains("waypoint"))
    }) {
        bail!("hops through the waypoint were not folded: {graph}");
    }
    Ok(format!(
        "{} edges, e.g. todo/todoui → todo/todobackend HTTP {} requests (mTLS), legacy/legacy-client → todo/todobackend TCP {} connection(s) (plaintext); wrote {} and {}",
        edges.len(),
        http["requests"],
        legacy["connections"],
        dot.display(),
        svg.display()
    ))
}

fn capture_while(
    mesh: &Mesh,
    f: impl FnOnce() -> std::result::Result<String, String>,
) -> Result<Vec<u8>> {
    let capture = PacketCapture::start(&mesh.nodes[0].netns, &mesh.link_name(0))?;
    f().map_err(anyhow::Error::msg)?;
    capture.finish()
}

/// Ctrl-C (SIGINT) or SIGTERM sends on `tx`, so that the mesh is torn down cleanly.
fn ctrlc_channel(tx: std::sync::mpsc::Sender<()>) -> Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block()?;
    std::thread::spawn(move || {
        let _ = set.wait();
        let _ = tx.send(());
    });
    Ok(())
}
