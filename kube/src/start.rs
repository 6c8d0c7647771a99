//! Starting whichever config source a binary was given: the file (standalone, demo, tests) or
//! the Kubernetes API. Agent and waypoint both start here, and get the same two channels.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lanyard_core::config::FileSource;
use lanyard_core::state::{MeshState, Settings};
use tokio::sync::watch;
use tracing::info;

use crate::events::RejectionEvents;
use crate::source::{KubeSource, Scope, SourceStatus};

/// Where the mesh config comes from.
#[derive(Clone, Debug)]
pub enum ConfigSource {
    /// A YAML file of Kubernetes-style objects, polled for changes.
    File { path: PathBuf, poll: Duration },
    /// The Kubernetes API (in-cluster credentials, or `KUBECONFIG`).
    Kube { scope: Scope },
}

impl ConfigSource {
    /// The file when a binary was given `--config`, else the API with `scope`.
    pub fn from_flag(file: Option<&std::path::Path>, poll: Duration, scope: Scope) -> Self {
        match file {
            Some(path) => ConfigSource::File {
                path: path.to_path_buf(),
                poll,
            },
            None => ConfigSource::Kube { scope },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    File(#[from] lanyard_core::config::FileError),
    #[error("connecting to the Kubernetes API (in-cluster config or KUBECONFIG): {0}")]
    Client(#[from] kube::Error),
    #[error("the Kubernetes config source stopped before its first complete state")]
    Stopped,
}

/// The running source: the current state, and how the source is doing.
pub struct Running {
    pub states: watch::Receiver<Arc<MeshState>>,
    pub status: watch::Receiver<SourceStatus>,
}

/// Starts the source and returns once its first complete state is published. From the API,
/// that waits until every kind is listed; it logs every 10 s while it waits.
pub async fn start(source: ConfigSource, settings: Arc<Settings>) -> Result<Running, Error> {
    start_with(source, settings, None).await
}

/// As [`start`]; from the API, rejected objects are also posted as Events by `reporter`.
pub async fn start_with(
    source: ConfigSource,
    settings: Arc<Settings>,
    reporter: Option<&str>,
) -> Result<Running, Error> {
    match source {
        ConfigSource::File { path, poll } => {
            let mut file = FileSource::new(path, settings);
            let initial = file.load()?.unwrap_or_default();
            let (tx, states) = watch::channel(Arc::new(initial));
            tokio::spawn(file.run(poll, tx));
            let (_, status) = watch::channel(SourceStatus {
                synced: true,
                ..Default::default()
            });
            Ok(Running { states, status })
        }
        ConfigSource::Kube { scope } => {
            let client = kube::Client::try_default().await?;
            let (tx, states) = watch::channel(Arc::new(MeshState::default()));
            let (status_tx, mut status) = watch::channel(SourceStatus::default());
            let mut source = KubeSource::new(client.clone(), settings, scope);
            if let Some(controller) = reporter {
                let instance = std::env::var("POD_NAME").ok();
                let events = RejectionEvents::start(client, controller, instance);
                source = source.report_rejections(events);
            }
            tokio::spawn(source.run(tx, status_tx));
            loop {
                let waited = tokio::time::timeout(Duration::from_secs(10), status.changed());
                match waited.await {
                    Ok(Err(_)) => return Err(Error::Stopped),
                    Ok(Ok(())) if status.borrow().synced => break,
                    Ok(Ok(())) => {}
                    Err(_) => {
                        info!(target: "config", "waiting for the Kubernetes API: {}", status.borrow().detail())
                    }
                }
            }
            Ok(Running { states, status })
        }
    }
}
