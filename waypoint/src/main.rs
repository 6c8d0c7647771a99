use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use lanyard_core::access_log::AccessLog;
use lanyard_core::secrets::SecretConfig;
use lanyard_core::state::{MeshState, Settings};
use lanyard_kube::{ConfigSource, Running, Scope};
use lanyard_waypoint::admin::{self, AdminState};
use lanyard_waypoint::authn::Jwks;
use lanyard_waypoint::config::{Args, Config};
use lanyard_waypoint::lb::Balancer;
use lanyard_waypoint::metrics::Metrics;
use lanyard_waypoint::otlp::Exporter;
use lanyard_waypoint::route::Inputs;
use lanyard_waypoint::upstream::Upstream;
use lanyard_waypoint::workers::{self, Workers};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing::{info, warn};

/// How often each worker drops its closed and idle upstream HBONE connections.
const SWEEP: Duration = Duration::from_secs(5);

fn main() -> anyhow::Result<()> {
    let config = Arc::new(Config::from(Args::parse()));
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    // The data path has threads of its own (workers.rs); this one runs the control plane.
    lanyard_core::runtime::build(1)?.block_on(run(config))
}

async fn run(config: Arc<Config>) -> anyhow::Result<()> {
    let hbone_listeners = workers::bind(config.hbone_addr, config.worker_threads)?;
    let admin_listener = TcpListener::bind(config.admin_addr)
        .await
        .context("binding admin port")?;
    let metrics_listener = TcpListener::bind(config.metrics_addr)
        .await
        .context("binding metrics port")?;

    let settings = Arc::new(Settings {
        trust_domain: config.trust_domain.clone(),
        cluster_domain: config.cluster_domain.clone(),
        root_namespace: config.root_namespace.clone(),
    });
    let source = ConfigSource::from_flag(
        config.config_file.as_deref(),
        config.config_poll_interval,
        Scope::IstioIn(vec![
            config.waypoint.namespace.clone(),
            config.root_namespace.clone(),
        ]),
    );
    let Running {
        states: state_rx,
        status: source_status,
    } = lanyard_kube::start(source, settings)
        .await
        .context("loading the initial config")?;

    let secrets = lanyard_core::ca::secret_manager(&config.ca, SecretConfig::default())?;
    secrets.prefetch(&config.identity);

    let registry = prometheus::Registry::new();
    let access_log = AccessLog::stdout_or_off(config.access_log_flush);
    let spans = match &config.otlp_endpoint {
        Some(endpoint) => Some(
            Exporter {
                endpoint: endpoint.clone(),
                service_name: format!("{}.{}", config.waypoint.name, config.waypoint.namespace),
                namespace: config.waypoint.namespace.clone(),
                flush: Duration::from_secs(1),
            }
            .start(&registry)?,
        ),
        None => None,
    };
    let metrics = Arc::new(Metrics::new(&registry, access_log.clone(), spans)?);
    lanyard_waypoint::metrics::register_info(
        &registry,
        &format!("{}/{}", config.waypoint.namespace, config.waypoint.name),
        &config.identity.to_string(),
    )?;
    let balancer = Arc::new(Balancer::default());
    let jwks = Arc::new(Jwks::default());
    let new_inputs = {
        let (config, state_rx, secrets) = (config.clone(), state_rx.clone(), secrets.clone());
        let metrics = metrics.clone();
        move || {
            Arc::new(Inputs {
                config: config.clone(),
                state: state_rx.clone(),
                upstream: Arc::new(Upstream::new(
                    config.clone(),
                    state_rx.clone(),
                    secrets.clone(),
                )),
                balancer: balancer.clone(),
                metrics: metrics.clone(),
                jwks: jwks.clone(),
            })
        }
    };
    // The admin endpoints read config and state only; their `Inputs` never carries traffic.
    let inputs = new_inputs();
    tokio::spawn(report_config(state_rx, metrics));
    lanyard_kube::metrics::register(&registry, source_status.clone())?;
    let admin_state = AdminState {
        inputs: inputs.clone(),
        registry,
        source: source_status,
    };
    tokio::spawn(admin::serve(
        admin_listener,
        admin_state.clone(),
        &["/config_dump", "/metrics", "/healthz/ready"],
    ));
    tokio::spawn(admin::serve(
        metrics_listener,
        admin_state,
        &["/metrics", "/healthz/ready"],
    ));
    let mut workers = Workers::start(hbone_listeners, secrets, SWEEP, new_inputs)?;
    lanyard_core::heap::spawn_trimmer(lanyard_core::heap::TRIM_INTERVAL);
    info!(name = %config.waypoint.name, namespace = %config.waypoint.namespace, identity = %config.identity, "lanyard-waypoint ready");

    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        e = workers.stopped() => {
            access_log.close();
            return Err(e.into());
        }
    }
    info!("shutting down");
    access_log.close();
    Ok(())
}

/// Logs what each new config says that operators must see (rejections, warnings, active
/// faults) and keeps the fault gauge current.
async fn report_config(mut rx: watch::Receiver<Arc<MeshState>>, metrics: Arc<Metrics>) {
    loop {
        let state = rx.borrow_and_update().clone();
        metrics.faults_active.reset();
        for v in state.virtual_services() {
            let n = v.http.iter().filter(|r| r.fault.is_some()).count();
            if n > 0 {
                metrics
                    .faults_active
                    .with_label_values(&[&v.namespace, &v.name])
                    .set(n as i64);
            }
        }
        for w in state.warnings() {
            warn!(target: "config", "{w}");
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
