//! `lanyard-ca`: serve certificates, or write a node agent's bootstrap credentials.

use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use lanyard_ca::{cluster, entitlement, root, server, token};
use lanyard_core::state::Settings;
use lanyard_kube::{ConfigSource, Scope};

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
        #[arg(
            long,
            env = "LANYARD_CA_ROOT_DIR",
            required_unless_present = "root_secret"
        )]
        root_dir: Option<PathBuf>,
        /// `namespace/name` of the Secret holding root-cert.pem and root-key.pem (created
        /// on first start if absent); the root certificate alone is published to ConfigMap
        /// `--root-configmap` in every namespace.
        #[arg(long, env = "LANYARD_CA_ROOT_SECRET", conflicts_with = "root_dir")]
        root_secret: Option<String>,
        #[arg(long, default_value = "lanyard-ca-root")]
        root_configmap: String,
        #[arg(long, default_value = "cluster.local", env = "LANYARD_TRUST_DOMAIN")]
        trust_domain: String,
        /// Mesh objects (pods with their nodes) that decide which node may get which
        /// identity. Without it they come from the Kubernetes API, and callers may present
        /// a ServiceAccount token instead of a client certificate.
        #[arg(long, env = "LANYARD_CONFIG")]
        config: Option<PathBuf>,
        /// ServiceAccounts (`namespace/name`) whose tokens act as node agents.
        #[arg(long = "node-agent", default_value = "lanyard-system/lanyard-agent")]
        node_agents: Vec<String>,
        #[arg(long, default_value = token::DEFAULT_AUDIENCE)]
        token_audience: String,
        /// Post rejected mesh objects as Kubernetes Events (one reporter per cluster).
        #[arg(long)]
        report_rejections: bool,
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
            root_secret,
            root_configmap,
            trust_domain,
            config,
            node_agents,
            token_audience,
            report_rejections,
            server_name,
            max_ttl,
        } => {
            let settings = Arc::new(Settings {
                trust_domain: trust_domain.clone(),
                ..Default::default()
            });
            let client = match config {
                Some(_) => None,
                None => Some(kube::Client::try_default().await.context(
                    "no --config given, and no Kubernetes API (in-cluster config or KUBECONFIG)",
                )?),
            };
            let authority = match (&root_dir, &root_secret, &client) {
                (Some(dir), _, _) => root::load_or_generate(dir, &trust_domain)?,
                (None, Some(secret), Some(client)) => {
                    let (ns, name) = token::parse_account(secret)
                        .context("--root-secret must be <namespace>/<name>")?;
                    let authority =
                        cluster::root_from_secret(client.clone(), &ns, &name, &trust_domain)
                            .await?;
                    // Its own namespace first: agents there wait for it.
                    cluster::publish_root(
                        client.clone(),
                        &ns,
                        &root_configmap,
                        authority.root_pem(),
                    )
                    .await?;
                    tokio::spawn(cluster::distribute_root(
                        client.clone(),
                        root_configmap.clone(),
                        authority.root_pem().to_string(),
                    ));
                    authority
                }
                _ => anyhow::bail!("--root-secret needs the Kubernetes API: drop --config"),
            };
            let tokens = match &client {
                Some(client) => {
                    let agents = node_agents
                        .iter()
                        .map(|a| {
                            token::parse_account(a).with_context(|| {
                                format!("--node-agent {a:?}: want <namespace>/<name>")
                            })
                        })
                        .collect::<anyhow::Result<_>>()?;
                    Some(token::TokenAuthenticator::new(
                        client.clone(),
                        token_audience,
                        trust_domain,
                        agents,
                    ))
                }
                None => None,
            };
            let listener = tokio::net::TcpListener::bind(listen).await?;
            let source = ConfigSource::from_flag(
                config.as_deref(),
                Duration::from_millis(500),
                Scope::Cluster,
            );
            let reporter = report_rejections.then_some("lanyard-ca");
            let running = lanyard_kube::start_with(source, settings, reporter).await?;
            let serve = server::ServeConfig {
                server_name,
                max_ttl: Duration::from_secs(max_ttl),
                default_ttl: Duration::from_secs(max_ttl),
                tokens,
            };
            let shutdown = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            server::serve(
                listener,
                serve,
                Arc::new(authority),
                running.states,
                shutdown,
            )
            .await?;
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
