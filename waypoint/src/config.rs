//! The waypoint's immutable configuration: flags and environment, read once at start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use lanyard_core::ca::CaEndpoint;
use lanyard_core::hbone;
use lanyard_core::identity::Identity;
use lanyard_core::runtime::Scheduling;
use lanyard_core::state::Waypoint;

use crate::trace::Tracing;

#[derive(Parser, Debug, Clone)]
#[command(name = "lanyard-waypoint", about = "Lanyard's per-namespace L7 proxy")]
pub struct Args {
    /// This waypoint's name: the value of `istio.io/use-waypoint` that selects it, and the
    /// name of its Service.
    #[arg(long, env = "WAYPOINT_NAME", default_value = "waypoint")]
    pub name: String,
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: String,
    /// The service account the waypoint runs as; its SPIFFE identity is what destinations see.
    #[arg(long, env = "SERVICE_ACCOUNT", default_value = "waypoint")]
    pub service_account: String,
    /// YAML file of mesh objects (standalone mode). Without it, config comes from the
    /// Kubernetes API: Istio objects of this and the root namespace, workloads cluster-wide.
    #[arg(long, env = "LANYARD_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, default_value = "cluster.local", env = "LANYARD_TRUST_DOMAIN")]
    pub trust_domain: String,
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    #[arg(long, default_value = "istio-system", env = "LANYARD_ROOT_NAMESPACE")]
    pub root_namespace: String,
    #[arg(long, env = "LANYARD_CA_ADDRESS")]
    pub ca_address: String,
    /// Holds cert.pem and key.pem (a credential for this waypoint's identity) and root.pem.
    #[arg(long, env = "LANYARD_CA_BOOTSTRAP")]
    pub ca_bootstrap: PathBuf,
    /// A projected ServiceAccount token (audience istio-ca) to authenticate to the CA with,
    /// instead of cert.pem and key.pem in --ca-bootstrap (which then needs only root.pem).
    #[arg(long, env = "LANYARD_CA_TOKEN")]
    pub ca_token: Option<PathBuf>,
    #[arg(long, default_value = "lanyard-ca")]
    pub ca_server_name: String,
    #[arg(long, default_value = "0.0.0.0:15008")]
    pub hbone_addr: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,
    #[arg(long, default_value = "0.0.0.0:15020")]
    pub metrics_addr: SocketAddr,
    /// Threads that run the data path, each with its own listener and upstream pools; a
    /// downstream connection stays on one of them (workers.rs).
    #[arg(long, env = "LANYARD_WORKER_THREADS", default_value_t = 2)]
    pub worker_threads: usize,
    /// How the kernel schedules those threads: `batch` (a worker woken by traffic waits for
    /// the task running on its CPU to block rather than preempt it; fewer context switches)
    /// or `normal`. See `lanyard_core::runtime::Scheduling`.
    #[arg(long, env = "LANYARD_WORKER_SCHEDULING", default_value = "batch")]
    pub worker_scheduling: Scheduling,
    /// One JSON line per request on stdout, or none.
    #[arg(long, env = "LANYARD_ACCESS_LOG", default_value = "stdout", value_parser = ["stdout", "off"])]
    pub access_log: String,
    /// How long access-log lines may wait before they are written, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub access_log_flush_ms: u64,
    /// An OpenTelemetry collector's OTLP/gRPC address (`http://host:4317`): the waypoint
    /// then joins requests' traces (W3C `traceparent` or B3) and exports a span for each
    /// sampled request. Without it trace headers pass through untouched.
    #[arg(long, env = "LANYARD_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Percentage of requests without a caller's sampling decision that start a recorded
    /// trace (Istio's `sampling`, default 1 %).
    #[arg(long, env = "LANYARD_TRACE_SAMPLING", default_value_t = 1.0, value_parser = percent)]
    pub trace_sampling: f64,
}

fn percent(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("{s:?} is not a percentage from 0 to 100")),
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// This waypoint as `istio.io/use-waypoint` names it (policies target it by name).
    pub waypoint: Waypoint,
    pub identity: Identity,
    /// None: the Kubernetes API.
    pub config_file: Option<PathBuf>,
    pub trust_domain: String,
    pub cluster_domain: String,
    pub root_namespace: String,
    pub ca: CaEndpoint,
    pub hbone_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub worker_threads: usize,
    pub worker_scheduling: Scheduling,
    pub hbone: hbone::Settings,
    /// Upstream TCP connect timeout when no DestinationRule sets one (Envoy's default).
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub config_poll_interval: Duration,
    /// Largest request body kept for retries and mirrors; larger bodies stream once.
    pub max_buffered_body: usize,
    /// None: no access log.
    pub access_log_flush: Option<Duration>,
    /// None: no spans, trace headers untouched.
    pub otlp_endpoint: Option<String>,
    pub tracing: Tracing,
}

impl From<Args> for Config {
    fn from(a: Args) -> Self {
        Config {
            identity: Identity::new(&a.trust_domain, &a.namespace, &a.service_account),
            waypoint: Waypoint {
                name: a.name,
                namespace: a.namespace,
            },
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
            hbone_addr: a.hbone_addr,
            admin_addr: a.admin_addr,
            metrics_addr: a.metrics_addr,
            worker_threads: a.worker_threads.max(1),
            worker_scheduling: a.worker_scheduling,
            hbone: hbone::Settings::default(),
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            pool_idle_timeout: Duration::from_secs(30),
            config_poll_interval: Duration::from_millis(250),
            max_buffered_body: 64 * 1024,
            access_log_flush: (a.access_log == "stdout")
                .then(|| Duration::from_millis(a.access_log_flush_ms.max(1))),
            otlp_endpoint: a.otlp_endpoint.filter(|e| !e.is_empty()),
            tracing: Tracing {
                sampling_percent: a.trace_sampling,
            },
        }
    }
}
