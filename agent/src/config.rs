//! The agent's immutable configuration: flags and environment, read once at start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use lanyard_core::ca::CaEndpoint;
use lanyard_core::hbone;
use lanyard_core::runtime::Scheduling;

/// Mesh-wide mTLS mode for inbound plaintext, where no PeerAuthentication sets one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MtlsMode {
    Permissive,
    Strict,
}

impl From<MtlsMode> for lanyard_core::policy::peer::MtlsMode {
    fn from(m: MtlsMode) -> Self {
        match m {
            MtlsMode::Permissive => Self::Permissive,
            MtlsMode::Strict => Self::Strict,
        }
    }
}

#[derive(Parser, Debug, Clone)]
#[command(name = "lanyard-agent", about = "Lanyard's per-node agent")]
pub struct Args {
    /// This node's name, as pods' spec.nodeName gives it.
    #[arg(long, env = "NODE_NAME")]
    pub node: String,
    /// YAML file of mesh objects (standalone mode). Without it, config comes from the
    /// Kubernetes API (in-cluster credentials or KUBECONFIG).
    #[arg(long, env = "LANYARD_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, default_value = "cluster.local", env = "LANYARD_TRUST_DOMAIN")]
    pub trust_domain: String,
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Istio's root namespace: policies there apply mesh-wide.
    #[arg(long, default_value = "istio-system", env = "LANYARD_ROOT_NAMESPACE")]
    pub root_namespace: String,
    /// CA address, e.g. https://lanyard-ca:15012 or istiod's https://istiod.istio-system:15012.
    #[arg(long, env = "LANYARD_CA_ADDRESS")]
    pub ca_address: String,
    /// Holds cert.pem and key.pem (this node's bootstrap identity) and root.pem (mesh root).
    #[arg(long, env = "LANYARD_CA_BOOTSTRAP")]
    pub ca_bootstrap: PathBuf,
    /// A projected ServiceAccount token (audience istio-ca) to authenticate to the CA with,
    /// instead of cert.pem and key.pem in --ca-bootstrap (which then needs only root.pem).
    #[arg(long, env = "LANYARD_CA_TOKEN")]
    pub ca_token: Option<PathBuf>,
    #[arg(long, default_value = "lanyard-ca")]
    pub ca_server_name: String,
    /// Requested workload certificate lifetime, in seconds.
    #[arg(long, default_value_t = 24 * 3600)]
    pub cert_ttl: u64,
    /// cgroup v2 directory holding this node's pod cgroups; capture attaches here.
    #[arg(long, default_value = "/sys/fs/cgroup/kubepods.slice")]
    pub cgroup_root: PathBuf,
    #[arg(long, default_value = "/proc")]
    pub proc_root: PathBuf,
    /// The node's network namespace, whose addresses kubelet probes come from; they bypass
    /// capture. Default: that of PID 1 under --proc-root.
    #[arg(long)]
    pub probe_netns: Option<PathBuf>,
    /// Capture kubelet probes like any connection (STRICT mTLS then refuses them).
    #[arg(long)]
    pub no_probe_exemption: bool,
    /// bpffs directory for this agent's pinned maps and links.
    #[arg(long)]
    pub bpf_pin_dir: Option<PathBuf>,
    #[arg(
        long,
        value_enum,
        default_value = "permissive",
        env = "LANYARD_MTLS_MODE"
    )]
    pub mtls_mode: MtlsMode,
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,
    #[arg(long, default_value = "0.0.0.0:15020")]
    pub metrics_addr: SocketAddr,
    #[arg(long, default_value = "0.0.0.0:15021")]
    pub readiness_addr: SocketAddr,
    /// Threads that run the data path, each serving all connections of the pods given to it
    /// at enrollment (`workers.rs`); config, enrollment and the admin endpoints run on the
    /// main thread.
    #[arg(long, env = "LANYARD_WORKER_THREADS", default_value_t = 2)]
    pub worker_threads: usize,
    /// How the kernel schedules those threads: `batch` (a worker woken by traffic waits for
    /// the task running on its CPU to block rather than preempt it; fewer context switches)
    /// or `normal`. See `lanyard_core::runtime::Scheduling`.
    #[arg(long, env = "LANYARD_WORKER_SCHEDULING", default_value = "batch")]
    pub worker_scheduling: Scheduling,
    /// Remove pinned BPF state on exit (capture stops). Without it, capture stays and
    /// connections of enrolled pods fail until the agent is back: fail closed.
    #[arg(long)]
    pub cleanup_on_exit: bool,
    /// One JSON line per connection on stdout, or none.
    #[arg(long, env = "LANYARD_ACCESS_LOG", default_value = "stdout", value_parser = ["stdout", "off"])]
    pub access_log: String,
    /// How long access-log lines may wait before they are written, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub access_log_flush_ms: u64,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub node: String,
    /// None: the Kubernetes API.
    pub config_file: Option<PathBuf>,
    pub trust_domain: String,
    pub cluster_domain: String,
    pub root_namespace: String,
    pub ca: CaEndpoint,
    pub cert_ttl: Duration,
    pub cgroup_root: PathBuf,
    pub proc_root: PathBuf,
    /// None: probes are captured like any connection.
    pub probe_netns: Option<PathBuf>,
    pub bpf_pin_dir: PathBuf,
    pub mtls_mode: MtlsMode,
    pub admin_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub readiness_addr: SocketAddr,
    pub worker_threads: usize,
    pub worker_scheduling: Scheduling,
    pub cleanup_on_exit: bool,
    pub hbone: hbone::Settings,
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub config_poll_interval: Duration,
    /// How often pods whose namespace cannot be found yet are retried.
    pub enroll_retry: Duration,
    /// None: no access log.
    pub access_log_flush: Option<Duration>,
}

impl From<Args> for Config {
    fn from(a: Args) -> Self {
        let bpf_pin_dir = a
            .bpf_pin_dir
            .unwrap_or_else(|| PathBuf::from("/sys/fs/bpf/lanyard").join(&a.node));
        let probe_netns = (!a.no_probe_exemption).then(|| {
            a.probe_netns
                .clone()
                .unwrap_or_else(|| a.proc_root.join("1/ns/net"))
        });
        Config {
            node: a.node,
            config_file: a.config,
            trust_domain: a.trust_domain,
            cluster_domain: a.cluster_domain,
            root_namespace: a.root_namespace,
            ca: CaEndpoint {
                address: a.ca_address,
                server_name: a.ca_server_name,
                bootstrap: a.ca_bootstrap,
                token: a.ca_token,
            },
            cert_ttl: Duration::from_secs(a.cert_ttl),
            cgroup_root: a.cgroup_root,
            proc_root: a.proc_root,
            probe_netns,
            bpf_pin_dir,
            mtls_mode: a.mtls_mode,
            admin_addr: a.admin_addr,
            metrics_addr: a.metrics_addr,
            readiness_addr: a.readiness_addr,
            worker_threads: a.worker_threads.max(1),
            worker_scheduling: a.worker_scheduling,
            cleanup_on_exit: a.cleanup_on_exit,
            hbone: hbone::Settings::default(),
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            pool_idle_timeout: Duration::from_secs(30),
            config_poll_interval: Duration::from_millis(250),
            enroll_retry: Duration::from_millis(500),
            access_log_flush: (a.access_log == "stdout")
                .then(|| Duration::from_millis(a.access_log_flush_ms.max(1))),
        }
    }
}
