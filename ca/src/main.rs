//! `lanyard-ca`: serve certificates, or write a node agent's bootstrap credentials.

use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use lanyard_ca::{entitlement, root, server};
use lanyard_core::config::FileSource;
use lanyard_core::state::Settings;
use tokio::sync::watch;

#[derive(Parser)]
#[command(name = "lanyard-ca", about = "Lanyard's certificate authority")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve IstioCertificateService/CreateCertificate.
    Serve {
        #[arg(long, default_value = "0.0.0.0:15012", env = "LANYARD_CA_LISTEN")]
        listen: SocketAddr,
        /// Holds root-cert.pem and root-key.pem; generated there on first start if absent.
        #[arg(long, env = "LANYARD_CA_ROOT_DIR")]
        root_dir: PathBuf,
        #[arg(long, default_value = "cluster.local", env = "LANYARD_TRUST_DOMAIN")]
        trust_domain: String,
        /// Mesh objects (pods with their nodes) that decide which node may get which identity.
        #[arg(long, env = "LANYARD_CONFIG")]
        config: PathBuf,
        #[arg(long, default_value = "lanyard-ca")]
        server_name: String,
        /// Longest certificate lifetime granted, in seconds.
        #[arg(long, default_value_t = 24 * 3600)]
        max_ttl: u64,
    },
    /// Write bootstrap credentials (certificate, key, mesh root) into a directory: a node
    /// agent's (`--node`), or a workload's that renews its own identity, such as a waypoint
    /// (`--workload <namespace>/<service account>`).
    Bootstrap {
        #[arg(long)]
        root_dir: PathBuf,
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        #[arg(
            long,
            required_unless_present = "workload",
            conflicts_with = "workload"
        )]
        node: Option<String>,
        #[arg(long)]
        workload: Option<String>,
        #[arg(long)]
        out: PathBuf,
    },
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match Cli::parse().command {
        Command::Serve {
            listen,
            root_dir,
            trust_domain,
            config,
            server_name,
            max_ttl,
        } => {
            let authority = Arc::new(root::load_or_generate(&root_dir, &trust_domain)?);
            let settings = Arc::new(Settings {
                trust_domain,
                ..Default::default()
            });
            let mut source = FileSource::new(config, settings);
            let initial = source.load()?.unwrap_or_default();
            let listener = tokio::net::TcpListener::bind(listen).await?;
            let (tx, rx) = watch::channel(Arc::new(initial));
            tokio::spawn(source.run(Duration::from_millis(500), tx));
            let serve = server::ServeConfig {
                server_name,
                max_ttl: Duration::from_secs(max_ttl),
                default_ttl: Duration::from_secs(max_ttl),
            };
            let shutdown = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            server::serve(listener, serve, authority, rx, shutdown).await?;
        }
        Command::Bootstrap {
            root_dir,
            trust_domain,
            node,
            workload,
            out,
        } => {
            let authority = root::load_or_generate(&root_dir, &trust_domain)?;
            let uri = match (node, workload) {
                (Some(node), _) => entitlement::node_uri(&trust_domain, &node),
                (None, Some(w)) => {
                    let (ns, sa) = w
                        .split_once('/')
                        .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty())
                        .context("--workload must be <namespace>/<service account>")?;
                    lanyard_core::identity::Identity::new(&trust_domain, ns, sa).to_string()
                }
                (None, None) => unreachable!("clap requires one"),
            };
            let (cert, key) = authority.issue(&[uri], &[], Duration::from_secs(365 * 24 * 3600))?;
            std::fs::create_dir_all(&out)?;
            std::fs::write(out.join("cert.pem"), cert)?;
            root::write_private(&out.join("key.pem"), &key)?;
            std::fs::write(out.join("root.pem"), authority.root_pem())?;
        }
    }
    Ok(())
}
