//! The standalone config source: a local YAML file of Kubernetes-style objects, reloaded
//! when its content changes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;
use tracing::{info, warn};

use super::store::Store;
use crate::state::{MeshState, Settings};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid YAML (document {doc}): {source}")]
    Yaml {
        path: PathBuf,
        doc: usize,
        source: serde_yaml::Error,
    },
}

/// Splits a multi-document YAML text into JSON values, unrolling `kind: List`.
pub fn parse_documents(text: &str) -> Result<Vec<serde_json::Value>, (usize, serde_yaml::Error)> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_json::Value::deserialize(doc).map_err(|e| (i, e))?;
        match value {
            serde_json::Value::Null => {}
            serde_json::Value::Object(ref m)
                if m.get("kind").and_then(|k| k.as_str()) == Some("List") =>
            {
                if let Some(serde_json::Value::Array(items)) = m.get("items") {
                    out.extend(items.iter().cloned());
                }
            }
            v => out.push(v),
        }
    }
    Ok(out)
}

pub struct FileSource {
    path: PathBuf,
    settings: Arc<Settings>,
    store: Store,
    last_text: Option<String>,
}

// === impl FileSource ===

impl FileSource {
    pub fn new(path: PathBuf, settings: Arc<Settings>) -> Self {
        Self {
            path,
            store: Store::new(&settings.cluster_domain),
            settings,
            last_text: None,
        }
    }

    /// Reads the file once. `Ok(None)` when it has not changed since the last load.
    /// A file that cannot be read or parsed at all changes nothing: the last state serves on.
    pub fn load(&mut self) -> Result<Option<MeshState>, Error> {
        let text = std::fs::read_to_string(&self.path).map_err(|source| Error::Read {
            path: self.path.clone(),
            source,
        })?;
        if self.last_text.as_deref() == Some(text.as_str()) {
            return Ok(None);
        }
        let docs = parse_documents(&text).map_err(|(doc, source)| Error::Yaml {
            path: self.path.clone(),
            doc,
            source,
        })?;
        self.last_text = Some(text);
        let snapshot = self.store.update(docs);
        for r in &snapshot.rejections {
            warn!(target: "config", object = %r.object, field = %r.field, "rejected: {}", r.message);
        }
        Ok(Some(MeshState::build(snapshot, &self.settings)))
    }

    /// Polls the file and publishes each new state. Polling (rather than inotify) also sees
    /// editors and ConfigMap mounts that replace the file by rename.
    pub async fn run(mut self, interval: Duration, tx: watch::Sender<Arc<MeshState>>) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.load() {
                Ok(Some(state)) => {
                    info!(target: "config", workloads = state.workload_count(), services = state.service_count(),
                          rejected = state.rejections().len(), "config loaded");
                    if tx.send(Arc::new(state)).is_err() {
                        return;
                    }
                }
                Ok(None) => {}
                Err(e) => warn!(target: "config", "{e}; keeping the last good config"),
            }
        }
    }
}
