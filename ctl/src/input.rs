//! Config files in, mesh state out: the same validation and state the agent builds.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lanyard_core::config::{parse_documents, Store};
use lanyard_core::state::{MeshState, Settings};
use lanyard_kube::{ConfigSource, Scope};

use crate::{Error, Mesh};

/// Reads every file (directories: their `.yaml`/`.yml`/`.json` files, sorted), or the
/// cluster with `--kube`, into one state.
pub fn load(mesh: &Mesh) -> Result<Arc<MeshState>, Error> {
    let settings = Settings {
        trust_domain: mesh.trust_domain.clone(),
        cluster_domain: mesh.cluster_domain.clone(),
        root_namespace: mesh.root_namespace.clone(),
    };
    if mesh.kube {
        return from_cluster(settings);
    }
    let mut docs = Vec::new();
    for path in &mesh.files {
        for file in expand(path)? {
            let text = read(&file)?;
            let parsed = parse_documents(&text).map_err(|(doc, source)| Error::Yaml {
                path: file.clone(),
                doc,
                source,
            })?;
            docs.extend(parsed);
        }
    }
    let snapshot = Store::new(&settings.cluster_domain).update(docs);
    Ok(Arc::new(MeshState::build(snapshot, &settings)))
}

/// Lists every kind through the agents' own config source, and takes its first complete
/// state. Bounded: an unreachable API server is an error after 30 s, not a hang.
fn from_cluster(settings: Settings) -> Result<Arc<MeshState>, Error> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| Error::Kube(e.to_string()))?;
    rt.block_on(async {
        let source = ConfigSource::Kube {
            scope: Scope::Cluster,
        };
        let started = tokio::time::timeout(
            Duration::from_secs(30),
            lanyard_kube::start(source, Arc::new(settings)),
        )
        .await
        .map_err(|_| Error::Kube("no complete list of every kind within 30 s".into()))?
        .map_err(|e| Error::Kube(e.to_string()))?;
        let state = started.states.borrow().clone();
        Ok(state)
    })
}

fn expand(path: &Path) -> Result<Vec<PathBuf>, Error> {
    if path.as_os_str() == "-" || !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = std::fs::read_dir(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        })
        .collect();
    files.sort();
    Ok(files)
}

fn read(path: &Path) -> Result<String, Error> {
    let err = |source| Error::Read {
        path: path.to_path_buf(),
        source,
    };
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map_err(err)?;
        return Ok(text);
    }
    std::fs::read_to_string(path).map_err(err)
}
