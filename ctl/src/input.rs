//! Config files in, mesh state out: the same validation and state the agent builds.

use std::io::Read;
use std::path::{Path, PathBuf};

use lanyard_core::config::{parse_documents, Store};
use lanyard_core::state::{MeshState, Settings};

use crate::{Error, Mesh};

/// Reads every file (directories: their `.yaml`/`.yml`/`.json` files, sorted) into one state.
pub fn load(mesh: &Mesh) -> Result<MeshState, Error> {
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
    let settings = Settings {
        trust_domain: mesh.trust_domain.clone(),
        cluster_domain: mesh.cluster_domain.clone(),
        root_namespace: mesh.root_namespace.clone(),
    };
    let snapshot = Store::new(&settings.cluster_domain).update(docs);
    Ok(MeshState::build(snapshot, &settings))
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
