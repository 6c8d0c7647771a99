//! End-to-end harness: a small Kubernetes-like node layout built from network namespaces and
//! cgroups on this machine, with the real CA and agents running as processes.
//!
//! ```text
//!  node0 netns ── veth 172.30.0.1/24 ══ 172.30.0.2/24 veth ── node1 netns
//!   ├─ pod netns 10.244.1.x (veth, proxy ARP)                 ├─ pod netns 10.244.2.x
//!   └─ cgroup <root>/node0/kubepods/pod<uid>/{pause,app}      └─ ...
//! ```
//!
//! Everything is named with a unique prefix and removed on drop: processes, namespaces,
//! cgroups and bpffs pins. Traffic only ever targets addresses inside these namespaces.

mod netns;
pub mod pcap;
pub mod probe;
mod spec;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub use netns::in_netns;
pub use spec::{PodSpec, ServiceSpec};

pub const CGROUP_FS: &str = "/sys/fs/cgroup/unified";
/// Every namespace, cgroup and bpffs pin the harness makes starts with this, so that
/// `cargo xtask e2e-clean` can find what a killed run left behind.
pub const PREFIX: &str = "lanyard-e2e-";
pub const CA_PORT: u16 = 15012;

/// Directory of the workspace's built binaries (the test executable lives in `deps/` below).
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("LANYARD_BIN_DIR") {
        return d.into();
    }
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// Polls `f` every 50 ms until it yields a value or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The label a waypoint's pods carry, as Istio's Gateway controller sets it.
pub const WAYPOINT_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

pub struct Node {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub cgroup: PathBuf,
    pub pin_dir: PathBuf,
    agent: Option<Child>,
}

#[derive(Clone)]
pub struct Pod {
    pub spec: PodSpec,
    pub uid: String,
    pub ip: Ipv4Addr,
    pub netns: String,
    pub node: usize,
    pub cgroup: PathBuf,
    /// The node's end of the pod's veth.
    pub host_if: String,
}

pub struct MeshBuilder {
    prefix: String,
    nodes: usize,
    namespaces: Vec<(String, bool)>,
    pods: Vec<PodSpec>,
    services: Vec<ServiceSpec>,
    mtls_mode: String,
    waypoints: Vec<String>,
    waypoint_args: Vec<String>,
}

pub struct Mesh {
    pub id: String,
    pub dir: tempfile::TempDir,
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    pub namespaces: Vec<(String, bool)>,
    pub services: Vec<ServiceSpec>,
    /// Extra documents appended to the config file as given (for malformed-object tests).
    pub extra_yaml: String,
    pub mtls_mode: String,
    /// Namespaces with a waypoint (pod `waypoint-<ns>` on node 0, Service `waypoint`).
    pub waypoints: Vec<String>,
    waypoint_args: Vec<String>,
    waypoint_procs: Vec<Child>,
    cgroup_root: PathBuf,
    ca: Option<Child>,
    children: Vec<Child>,
    link_created: bool,
}

// === impl MeshBuilder ===

impl MeshBuilder {
    pub fn nodes(mut self, n: usize) -> Self {
        assert!((1..=2).contains(&n), "the harness wires one or two nodes");
        self.nodes = n;
        self
    }

    /// A namespace, opted in to the mesh (`istio.io/dataplane-mode=ambient`) or not.
    pub fn namespace(mut self, name: &str, ambient: bool) -> Self {
        self.namespaces.push((name.into(), ambient));
        self
    }

    pub fn pod(mut self, spec: PodSpec) -> Self {
        self.pods.push(spec);
        self
    }

    pub fn service(mut self, spec: ServiceSpec) -> Self {
        self.services.push(spec);
        self
    }

    pub fn mtls_mode(mut self, mode: &str) -> Self {
        self.mtls_mode = mode.into();
        self
    }

    /// A waypoint for `namespace`, as Istio names one: pod `waypoint-<ns>` (outside capture,
    /// service account `waypoint`), Service `waypoint` on 15008, and the namespace labelled
    /// `istio.io/use-waypoint=waypoint`.
    pub fn waypoint(mut self, namespace: &str) -> Self {
        let k = self.waypoints.len() as u8;
        self.waypoints.push(namespace.into());
        self.pods.push(
            PodSpec::new(&format!("waypoint-{namespace}"), namespace)
                .service_account("waypoint")
                .label("istio.io/dataplane-mode", "none")
                .label(WAYPOINT_LABEL, "waypoint"),
        );
        self.services.push(
            ServiceSpec::new("waypoint", namespace, Ipv4Addr::new(10, 96, 255, k + 1))
                .selector(WAYPOINT_LABEL, "waypoint")
                .named_port("mesh", 15008, 15008),
        );
        self
    }

    /// Flags every waypoint starts with, after the harness's own.
    pub fn waypoint_args(mut self, args: &[&str]) -> Self {
        self.waypoint_args = args.iter().map(|a| a.to_string()).collect();
        self
    }

    pub fn start(self) -> Result<Mesh> {
        if !nix::unistd::geteuid().is_root() {
            bail!("the end-to-end harness needs root (network namespaces, cgroups, BPF)");
        }
        let id = format!("{}{:04x}", self.prefix, rand::random::<u16>());
        let dir = tempfile::Builder::new()
            .prefix(&format!("lanyard-{id}-"))
            .tempdir()?;
        let cgroup_root = Path::new(CGROUP_FS).join(format!("{PREFIX}{id}"));
        let mut mesh = Mesh {
            id: id.clone(),
            dir,
            nodes: Vec::new(),
            pods: Vec::new(),
            namespaces: self.namespaces,
            services: self.services,
            extra_yaml: String::new(),
            mtls_mode: self.mtls_mode,
            waypoints: self.waypoints,
            waypoint_args: self.waypoint_args,
            waypoint_procs: Vec::new(),
            cgroup_root,
            ca: None,
            children: Vec::new(),
            link_created: false,
        };
        // From here on, Drop cleans up whatever was created, even on error.
        mesh.build_network(self.nodes)?;
        for spec in self.pods {
            mesh.add_pod(spec)?;
        }
        mesh.write_config()?;
        mesh.start_ca()?;
        for i in 0..mesh.nodes.len() {
            mesh.start_agent(i)?;
        }
        mesh.wait_enrolled(Duration::from_secs(20))?;
        for ns in mesh.waypoints.clone() {
            mesh.start_waypoint(&ns)?;
        }
        Ok(mesh)
    }
}

// === impl Mesh ===

impl Mesh {
    pub fn builder(prefix: &str) -> MeshBuilder {
        MeshBuilder {
            prefix: prefix.chars().take(6).collect(),
            nodes: 2,
            namespaces: Vec::new(),
            pods: Vec::new(),
            services: Vec::new(),
            mtls_mode: "permissive".into(),
            waypoints: Vec::new(),
            waypoint_args: Vec::new(),
        }
    }

    fn build_network(&mut self, nodes: usize) -> Result<()> {
        std::fs::create_dir_all(&self.cgroup_root)?;
        for i in 0..nodes {
            let name = format!("node{i}");
            let ns = format!("{PREFIX}{}-{name}", self.id);
            netns::add(&ns)?;
            let cgroup = self.cgroup_root.join(&name);
            std::fs::create_dir_all(cgroup.join("kubepods"))?;
            std::fs::create_dir_all(cgroup.join("system"))?;
            netns::sh(&format!(
                "ip -n {ns} link set lo up && ip netns exec {ns} sysctl -qw net.ipv4.ip_forward=1"
            ))?;
            self.nodes.push(Node {
                name,
                netns: ns,
                ip: Ipv4Addr::new(172, 30, 0, i as u8 + 1),
                cgroup,
                pin_dir: PathBuf::from(format!("/sys/fs/bpf/{PREFIX}{}-node{i}", self.id)),
                agent: None,
            });
        }
        if nodes == 2 {
            let (a, b) = (&self.nodes[0].netns, &self.nodes[1].netns);
            let (la, lb) = (self.link_name(0), self.link_name(1));
            netns::sh(&format!(
                "ip link add {la} netns {a} type veth peer name {lb} netns {b}"
            ))?;
            self.link_created = true;
            netns::sh(&format!(
                "ip -n {a} addr add 172.30.0.1/24 dev {la} && ip -n {a} link set {la} up && \
                 ip -n {b} addr add 172.30.0.2/24 dev {lb} && ip -n {b} link set {lb} up && \
                 ip -n {a} route add 10.244.2.0/24 via 172.30.0.2 && ip -n {b} route add 10.244.1.0/24 via 172.30.0.1"
            ))?;
        } else {
            let a = &self.nodes[0].netns;
            netns::sh(&format!("ip -n {a} addr add 172.30.0.1/32 dev lo"))?;
        }
        Ok(())
    }

    /// The inter-node veth on node `i`'s side.
    pub fn link_name(&self, i: usize) -> String {
        format!("{}l{i}", self.id)
    }

    pub fn add_pod(&mut self, spec: PodSpec) -> Result<()> {
        let node = spec.node;
        let k = self.pods.iter().filter(|p| p.node == node).count();
        let ip = Ipv4Addr::new(10, 244, node as u8 + 1, k as u8 + 2);
        let ns = format!("{PREFIX}{}-{}", self.id, spec.name);
        let uid = spec::uid();
        let host_if = format!("{}p{}", self.id, self.pods.len());
        // kubelet's layout: kubepods/pod<uid>/<container>; the sandbox holds the netns.
        let cgroup = self.nodes[node]
            .cgroup
            .join("kubepods")
            .join(format!("pod{uid}"));
        std::fs::create_dir_all(cgroup.join("app"))?;
        let pod = Pod {
            spec,
            uid,
            ip,
            netns: ns,
            node,
            cgroup,
            host_if,
        };
        self.start_sandbox(&pod)?;
        self.pods.push(pod);
        Ok(())
    }

    /// A pod's network namespace wired to its node by a veth, and its pause process.
    fn start_sandbox(&mut self, pod: &Pod) -> Result<()> {
        let (ns, ip, host_if) = (&pod.netns, pod.ip, &pod.host_if);
        netns::add(ns)?;
        let node_ns = &self.nodes[pod.node].netns;
        netns::sh(&format!(
            "ip link add {host_if} netns {node_ns} type veth peer name eth0 netns {ns} && \
             ip -n {ns} link set lo up && ip -n {ns} addr add {ip}/32 dev eth0 && ip -n {ns} link set eth0 up && \
             ip -n {ns} route add default dev eth0 scope link && \
             ip -n {node_ns} link set {host_if} up && ip netns exec {node_ns} sysctl -qw net.ipv4.conf.{host_if}.proxy_arp=1 && \
             ip netns exec {node_ns} sysctl -qw net.ipv4.neigh.{host_if}.proxy_delay=0 && \
             ip -n {node_ns} route add {ip}/32 dev {host_if}"
        ))?;
        std::fs::create_dir_all(pod.cgroup.join("pause"))?;
        let pause = Command::new(bin("e2e-tool"))
            .args(["pause", "--cgroup"])
            .arg(pod.cgroup.join("pause"))
            .args(["--netns", &format!("/run/netns/{ns}")])
            .stdin(Stdio::null())
            .spawn()
            .context("starting pod sandbox")?;
        self.children.push(pause);
        Ok(())
    }

    /// Recreates pod `name`'s sandbox as a kubelet does when it dies: every process of the pod
    /// ends, and a new network namespace gets the same UID and IP. Nothing runs in it but the
    /// pause process until the test starts its app again.
    pub fn recreate_sandbox(&mut self, name: &str) -> Result<()> {
        let i = self
            .pods
            .iter()
            .position(|p| p.spec.name == name)
            .with_context(|| format!("no pod {name}"))?;
        let pod = self.pods[i].clone();
        std::fs::write(pod.cgroup.join("cgroup.kill"), "1")?;
        wait_for(Duration::from_secs(5), "the pod's processes to end", || {
            let procs = |d: &str| {
                std::fs::read_to_string(pod.cgroup.join(d).join("cgroup.procs")).unwrap_or_default()
            };
            (procs("pause").trim().is_empty() && procs("app").trim().is_empty()).then_some(())
        })?;
        for c in &mut self.children {
            let _ = c.try_wait();
        }
        // The old namespace lives on while the agent holds it; its veth goes with the node end.
        let node_ns = &self.nodes[pod.node].netns;
        netns::sh(&format!("ip -n {node_ns} link del {}", pod.host_if))?;
        netns::del(&pod.netns)?;
        let restarted = Pod {
            host_if: format!("{}r", pod.host_if),
            ..pod
        };
        self.start_sandbox(&restarted)?;
        self.pods[i] = restarted;
        Ok(())
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.spec.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("mesh.yaml")
    }

    /// Rewrites the mesh config file atomically (agents and the CA poll it).
    pub fn write_config(&self) -> Result<()> {
        let text = spec::render(
            &self.namespaces,
            &self.waypoints,
            &self.pods,
            &self.services,
            &self.nodes,
        ) + &self.extra_yaml;
        let tmp = self.dir.path().join("mesh.yaml.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, self.config_path())?;
        Ok(())
    }

    pub fn set_namespace_ambient(&mut self, name: &str, ambient: bool) -> Result<()> {
        for ns in &mut self.namespaces {
            if ns.0 == name {
                ns.1 = ambient;
            }
        }
        self.write_config()
    }

    fn start_ca(&mut self) -> Result<()> {
        let root = self.dir.path().join("ca");
        for node in &self.nodes {
            let out = Command::new(bin("lanyard-ca"))
                .args(["bootstrap", "--root-dir"])
                .arg(&root)
                .args(["--node", &node.name, "--out"])
                .arg(self.dir.path().join("certs").join(&node.name))
                .output()?;
            if !out.status.success() {
                bail!(
                    "lanyard-ca bootstrap: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let log = std::fs::File::create(self.dir.path().join("ca.log"))?;
        let child = Command::new(bin("e2e-tool"))
            .args([
                "exec",
                "--netns",
                &format!("/run/netns/{}", self.nodes[0].netns),
                "--",
            ])
            .arg(bin("lanyard-ca"))
            .args([
                "serve",
                "--listen",
                &format!("{}:{CA_PORT}", self.nodes[0].ip),
                "--root-dir",
            ])
            .arg(&root)
            .arg("--config")
            .arg(self.config_path())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.ca = Some(child);
        let addr = SocketAddr::from((self.nodes[0].ip, CA_PORT));
        let ns = self.nodes[0].netns.clone();
        wait_for(Duration::from_secs(10), "the CA to listen", || {
            in_netns(&ns, move || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
            })
        })?;
        Ok(())
    }

    fn start_waypoint(&mut self, ns: &str) -> Result<()> {
        let pod_name = format!("waypoint-{ns}");
        let certs = self.dir.path().join("certs").join(&pod_name);
        let out = Command::new(bin("lanyard-ca"))
            .args(["bootstrap", "--root-dir"])
            .arg(self.ca_dir())
            .args(["--workload", &format!("{ns}/waypoint"), "--out"])
            .arg(&certs)
            .output()?;
        if !out.status.success() {
            bail!(
                "lanyard-ca bootstrap: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let log = std::fs::File::create(self.waypoint_log_path(ns))?;
        let pod = self.pod(&pod_name);
        let child = Command::new(bin("e2e-tool"))
            .args(["exec", "--cgroup"])
            .arg(pod.cgroup.join("app"))
            .args(["--netns", &format!("/run/netns/{}", pod.netns), "--"])
            .arg(bin("lanyard-waypoint"))
            .args([
                "--namespace",
                ns,
                "--name",
                "waypoint",
                "--service-account",
                "waypoint",
            ])
            .arg("--config")
            .arg(self.config_path())
            .args([
                "--ca-address",
                &format!("https://{}:{CA_PORT}", self.nodes[0].ip),
            ])
            .arg("--ca-bootstrap")
            .arg(&certs)
            .args(&self.waypoint_args)
            .env(
                "RUST_LOG",
                std::env::var("LANYARD_E2E_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.waypoint_procs.push(child);
        let netns = self.pod(&pod_name).netns.clone();
        wait_for(Duration::from_secs(15), "the waypoint to be ready", || {
            let (status, _) = http_get(&netns, "127.0.0.1:15000", "/healthz/ready").ok()?;
            (status == 200).then_some(())
        })
        .with_context(|| format!("waypoint log:\n{}", self.waypoint_log(ns)))?;
        Ok(())
    }

    pub fn waypoint_log_path(&self, ns: &str) -> PathBuf {
        self.dir.path().join(format!("waypoint-{ns}.log"))
    }

    pub fn waypoint_log(&self, ns: &str) -> String {
        std::fs::read_to_string(self.waypoint_log_path(ns)).unwrap_or_default()
    }

    /// The waypoint's Prometheus metrics.
    pub fn waypoint_metrics(&self, ns: &str) -> Result<String> {
        let netns = &self.pod(&format!("waypoint-{ns}")).netns;
        Ok(http_get(netns, "127.0.0.1:15020", "/metrics")?.1)
    }

    pub fn waypoint_config_dump(&self, ns: &str) -> Result<serde_json::Value> {
        let netns = &self.pod(&format!("waypoint-{ns}")).netns;
        let (_, body) = http_get(netns, "127.0.0.1:15000", "/config_dump")?;
        Ok(serde_json::from_str(&body)?)
    }

    /// Starts the HTTP test app (`e2e-app serve`) in `pod` and waits until it listens.
    pub fn serve_http(&mut self, pod: &str, port: u16, extra: &[&str]) -> Result<()> {
        let p = self.pod(pod);
        let version = p
            .spec
            .labels
            .get("version")
            .cloned()
            .unwrap_or_else(|| "v1".into());
        let mut cmd = Command::new(bin("e2e-app"));
        cmd.arg("serve")
            .args([
                "--port",
                &port.to_string(),
                "--name",
                pod,
                "--version",
                &version,
            ])
            .args(extra)
            .arg("--cgroup")
            .arg(p.cgroup.join("app"))
            .args(["--netns", &format!("/run/netns/{}", p.netns)]);
        self.start_listening(cmd, "HTTP app").map(drop)
    }

    /// Runs `e2e-app load` in `pod` and returns its JSON summary.
    pub fn load(&self, pod: &str, args: &[&str]) -> Result<serde_json::Value> {
        self.app(pod, "load", args)
    }

    /// Runs an `e2e-app` client mode (`load`, `ws`) in `pod`; returns its JSON output.
    pub fn app(&self, pod: &str, mode: &str, args: &[&str]) -> Result<serde_json::Value> {
        let p = self.pod(pod);
        let out = Command::new(bin("e2e-app"))
            .arg(mode)
            .args(args)
            .arg("--cgroup")
            .arg(p.cgroup.join("app"))
            .args(["--netns", &format!("/run/netns/{}", p.netns)])
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "e2e-app load failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Where the mesh root and its key are kept.
    pub fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    pub fn stop_ca(&mut self) {
        if let Some(mut ca) = self.ca.take() {
            let _ = ca.kill();
            let _ = ca.wait();
        }
    }

    pub fn start_agent(&mut self, i: usize) -> Result<()> {
        let node = &self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.agent_log_path(i))?;
        let child = Command::new(bin("e2e-tool"))
            .args([
                "exec",
                "--netns",
                &format!("/run/netns/{}", node.netns),
                "--cgroup",
            ])
            .arg(node.cgroup.join("system"))
            .arg("--")
            .arg(bin("lanyard-agent"))
            .args(["--node", &node.name, "--config"])
            .arg(self.config_path())
            .args([
                "--ca-address",
                &format!("https://{}:{CA_PORT}", self.nodes[0].ip),
                "--ca-bootstrap",
            ])
            .arg(self.dir.path().join("certs").join(&node.name))
            .arg("--cgroup-root")
            .arg(node.cgroup.join("kubepods"))
            .arg("--bpf-pin-dir")
            .arg(&node.pin_dir)
            // The node is this namespace, where the agent runs: kubelet probes come from it.
            .args(["--probe-netns", "/proc/self/ns/net"])
            .args(["--mtls-mode", &self.mtls_mode, "--cleanup-on-exit"])
            .env(
                "RUST_LOG",
                std::env::var("LANYARD_E2E_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.nodes[i].agent = Some(child);
        let ns = self.nodes[i].netns.clone();
        wait_for(Duration::from_secs(15), "the agent to be ready", || {
            let (status, _) = http_get(&ns, "127.0.0.1:15021", "/healthz/ready").ok()?;
            (status == 200).then_some(())
        })
        .with_context(|| format!("agent log:\n{}", self.agent_log(i)))?;
        Ok(())
    }

    /// Stops an agent with SIGTERM (it removes its pins) and waits for it.
    pub fn stop_agent(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].agent.take() {
            terminate(&mut child, Duration::from_secs(5));
        }
    }

    pub fn agent_log_path(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("agent-{}.log", self.nodes[i].name))
    }

    pub fn agent_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.agent_log_path(i)).unwrap_or_default()
    }

    /// Waits until every agent has enrolled exactly the meshed pods on its node.
    pub fn wait_enrolled(&self, timeout: Duration) -> Result<()> {
        for (i, node) in self.nodes.iter().enumerate() {
            let want: BTreeMap<String, String> = self
                .pods
                .iter()
                .filter(|p| p.node == i && self.is_meshed(p))
                .map(|p| {
                    (
                        format!("{}/{}", p.spec.namespace, p.spec.name),
                        p.ip.to_string(),
                    )
                })
                .collect();
            let mut last = String::new();
            wait_for(
                timeout,
                &format!("{} to enroll {want:?}", node.name),
                || {
                    let dump = self.config_dump(i).ok()?;
                    let got: BTreeMap<String, String> = dump["enrolledPods"]
                        .as_object()?
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect();
                    last = format!("{got:?}");
                    (got == want).then_some(())
                },
            )
            .with_context(|| format!("last seen {last}; agent log:\n{}", self.agent_log(i)))?;
        }
        Ok(())
    }

    pub fn is_meshed(&self, p: &Pod) -> bool {
        match p
            .spec
            .labels
            .get("istio.io/dataplane-mode")
            .map(String::as_str)
        {
            Some("none") => false,
            Some("ambient") => true,
            _ => self
                .namespaces
                .iter()
                .any(|(n, a)| *n == p.spec.namespace && *a),
        }
    }

    pub fn config_dump(&self, node: usize) -> Result<serde_json::Value> {
        let (_, body) = http_get(&self.nodes[node].netns, "127.0.0.1:15000", "/config_dump")?;
        Ok(serde_json::from_str(&body)?)
    }

    pub fn admin(&self, node: usize, path: &str) -> Result<String> {
        Ok(http_get(&self.nodes[node].netns, "127.0.0.1:15000", path)?.1)
    }

    pub fn metrics(&self, node: usize) -> Result<String> {
        Ok(http_get(&self.nodes[node].netns, "127.0.0.1:15020", "/metrics")?.1)
    }

    /// Runs e2e-tool as a process of `pod` (in its cgroup and network namespace).
    pub fn command(&self, pod: &str, args: &[&str]) -> Command {
        let p = self.pod(pod);
        let mut cmd = Command::new(bin("e2e-tool"));
        cmd.args(args)
            .arg("--cgroup")
            .arg(p.cgroup.join("app"))
            .args(["--netns", &format!("/run/netns/{}", p.netns)]);
        cmd
    }

    /// Runs `program` as a process of `pod` (in its cgroup and network namespace).
    pub fn exec_command(&self, pod: &str, program: &str, args: &[&str]) -> Command {
        let p = self.pod(pod);
        let mut cmd = Command::new(bin("e2e-tool"));
        cmd.arg("exec")
            .arg("--cgroup")
            .arg(p.cgroup.join("app"))
            .args(["--netns", &format!("/run/netns/{}", p.netns), "--", program])
            .args(args);
        cmd
    }

    /// The agent process of node `i`.
    pub fn agent_pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].agent.as_ref().map(Child::id)
    }

    /// Keeps `child` with the mesh's processes (killed on drop).
    pub fn adopt(&mut self, child: Child) {
        self.children.push(child);
    }

    /// Runs a client to completion: Ok(stdout) on success, Err(stderr) otherwise.
    pub fn run(&self, pod: &str, args: &[&str]) -> std::result::Result<String, String> {
        let out = self
            .command(pod, args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Starts the echo server in `pod` on `port`, and waits until it listens.
    pub fn serve(&mut self, pod: &str, port: u16) -> Result<()> {
        let cmd = self.command(
            pod,
            &["echo-server", "--port", &port.to_string(), "--name", pod],
        );
        self.start_listening(cmd, "echo server").map(drop)
    }

    /// Spawns a server (`cmd`), waits for the `listening` line test servers print once they
    /// accept, and keeps it for cleanup. Returns its pid.
    pub fn start_listening(&mut self, mut cmd: Command, what: &str) -> Result<u32> {
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).spawn()?;
        let pid = child.id();
        let mut out = child.stdout.take().expect("piped");
        self.children.push(child);
        let mut buf = [0u8; 10];
        out.read_exact(&mut buf)
            .with_context(|| format!("{what} did not start"))?;
        Ok(pid)
    }

    /// Opens `count` idle connections from `pod` to `addr` with `e2e-tool hold`; returns once
    /// the server has greeted every one of them (so each is up end to end), and keeps them
    /// until the returned handle is dropped.
    pub fn hold(&self, pod: &str, addr: &str, count: usize, timeout: Duration) -> Result<Held> {
        let args = [
            "hold",
            "--addr",
            addr,
            "--count",
            &count.to_string(),
            "--timeout",
            &timeout.as_secs().max(1).to_string(),
        ];
        let mut child = self
            .command(pod, &args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        let read = std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().context("stdout")?),
            &mut line,
        );
        if read.is_ok() && line.trim() == format!("held={count}") {
            return Ok(Held(child));
        }
        // The tool exits after saying what failed.
        let _ = child.kill();
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let _ = child.wait();
        bail!(
            "holding {count} connections to {addr}: {line:?} {}",
            err.trim()
        )
    }

    /// Spawns a long-running process in `pod` that the mesh cleans up.
    pub fn spawn(&mut self, pod: &str, args: &[&str]) -> Result<&mut Child> {
        let child = self
            .command(pod, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        self.children.push(child);
        Ok(self.children.last_mut().expect("just pushed"))
    }
}

/// Connections opened by [`Mesh::hold`], closed when dropped.
pub struct Held(Child);

impl Drop for Held {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for mut w in std::mem::take(&mut self.waypoint_procs) {
            terminate(&mut w, Duration::from_secs(2));
        }
        for i in 0..self.nodes.len() {
            self.stop_agent(i);
        }
        self.stop_ca();
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // What the children left behind: a daemon's workers (nginx's outlive their killed
        // master) would keep the cgroups from being removed.
        let _ = std::fs::write(self.cgroup_root.join("cgroup.kill"), "1");
        for p in &self.pods {
            let _ = netns::del(&p.netns);
        }
        for n in &self.nodes {
            let _ = netns::del(&n.netns);
            let _ = std::fs::remove_dir_all(&n.pin_dir);
        }
        remove_cgroup_tree(&self.cgroup_root);
        if std::env::var("LANYARD_E2E_KEEP_LOGS").is_ok() {
            let kept = self.dir.path().to_path_buf();
            eprintln!("logs kept in {}", kept.display());
            std::mem::forget(std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().expect("tempdir"),
            ));
        }
    }
}

fn terminate(child: &mut Child, grace: Duration) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Removes a cgroup tree, deepest first (cgroup directories only go when empty of children).
fn remove_cgroup_tree(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&e.path());
        }
    }
    // Processes may take a moment to leave after being killed.
    for _ in 0..50 {
        if std::fs::remove_dir(root).is_ok() || !root.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A minimal HTTP/1.1 GET from inside a network namespace: (status, body).
pub fn http_get(netns: &str, addr: &str, path: &str) -> Result<(u16, String)> {
    let addr: SocketAddr = addr.parse()?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    let raw = in_netns(netns, move || -> Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(request.as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })?;
    let status = raw
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Sums a Prometheus counter over the series whose labels include all of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b)
}
