use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use lanyard_agent::admin::{self, AdminState};
use lanyard_agent::capture::netns::Netns;
use lanyard_agent::capture::{probes, Capture};
use lanyard_agent::config::{Args, Config};
use lanyard_agent::enroll::Enroller;
use lanyard_agent::metrics::Metrics;
use lanyard_agent::proxy::ProxyInputs;
use lanyard_agent::workers::Workers;
use lanyard_core::access_log::AccessLog;
use lanyard_core::secrets::SecretConfig;
use lanyard_core::state::Settings;
use lanyard_kube::{ConfigSource, Running, Scope};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing::info;

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

fn main() -> anyhow::Result<()> {
    lanyard_core::heap::configure();
    let config = Arc::new(Config::from(Args::parse()));
    raise_fd_limit();
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    // The control plane's runtime; pods' connections run on `Workers`.
    lanyard_core::runtime::build(1)?.block_on(run(config))
}

/// Every proxied connection holds descriptors; the default soft limit (1024) is far too low
/// for a node's worth of connections. The hard limit is what the operator allows.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Mounts bpffs at /sys/fs/bpf when nothing is mounted there (as on a bare host).
fn ensure_bpffs() -> anyhow::Result<()> {
    let path = std::path::Path::new("/sys/fs/bpf");
    let fs = nix::sys::statfs::statfs(path).context("statfs /sys/fs/bpf")?;
    if fs.filesystem_type().0 as i64 != BPF_FS_MAGIC {
        nix::mount::mount(
            Some("bpf"),
            path,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .context("mounting bpffs at /sys/fs/bpf")?;
    }
    Ok(())
}

async fn run(config: Arc<Config>) -> anyhow::Result<()> {
    // Bind every listener before anything starts, so that a taken port fails the start.
    let admin_listener = TcpListener::bind(config.admin_addr)
        .await
        .context("binding admin port")?;
    let metrics_listener = TcpListener::bind(config.metrics_addr)
        .await
        .context("binding metrics port")?;
    let ready_listener = TcpListener::bind(config.readiness_addr)
        .await
        .context("binding readiness port")?;

    let settings = Arc::new(Settings {
        trust_domain: config.trust_domain.clone(),
        cluster_domain: config.cluster_domain.clone(),
        root_namespace: config.root_namespace.clone(),
    });
    let source = ConfigSource::from_flag(
        config.config_file.as_deref(),
        config.config_poll_interval,
        Scope::Cluster,
    );
    let Running {
        states: state_rx,
        status: source_status,
    } = lanyard_kube::start(source, settings)
        .await
        .context("loading the initial config")?;

    let secrets = lanyard_core::ca::secret_manager(
        &config.ca,
        SecretConfig {
            validity: config.cert_ttl,
            ..Default::default()
        },
    )?;

    ensure_bpffs()?;
    let capture = Arc::new(Capture::load(&config.bpf_pin_dir, &config.cgroup_root)?);
    if let Some(host) = config.probe_netns.clone() {
        let mut sources = probes::NodeSources::new(capture.clone(), host);
        sources.refresh().await;
        tokio::spawn(sources.keep(std::time::Duration::from_secs(30)));
    }
    let registry = prometheus::Registry::new();
    let access_log = AccessLog::stdout_or_off(config.access_log_flush);
    let metrics = Arc::new(Metrics::new(
        &registry,
        access_log.clone(),
        &config.cluster_domain,
    )?);
    lanyard_kube::metrics::register(&registry, source_status.clone())?;
    let inputs = Arc::new(ProxyInputs::new(
        config.clone(),
        state_rx,
        secrets,
        metrics,
        capture.clone(),
        Workers::start(config.worker_threads, config.worker_scheduling)?,
    ));
    let (enroller, enrolled) = Enroller::new(inputs.clone(), Netns::host()?);
    let (ready_tx, ready) = watch::channel(false);
    let admin_state = AdminState {
        inputs: inputs.clone(),
        registry,
        enrolled,
        ready,
        source: source_status,
    };

    let enroller = tokio::spawn(enroller.run());
    inputs.pool.clone().run_sweeper();
    tokio::spawn(admin::serve(
        admin_listener,
        admin_state.clone(),
        &[
            "/config_dump",
            "/certs",
            "/explain",
            "/healthz/ready",
            "/metrics",
        ],
    ));
    tokio::spawn(admin::serve(
        metrics_listener,
        admin_state.clone(),
        &["/metrics"],
    ));
    tokio::spawn(admin::serve(
        ready_listener,
        admin_state,
        &["/healthz/ready"],
    ));
    lanyard_core::heap::spawn_trimmer(lanyard_core::heap::TRIM_INTERVAL);
    let _ = ready_tx.send(true);
    info!(node = %config.node, "lanyard-agent ready");

    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    info!("shutting down");
    access_log.close();
    enroller.abort();
    let _ = enroller.await;
    if config.cleanup_on_exit {
        capture.remove_pins();
    }
    Ok(())
}
