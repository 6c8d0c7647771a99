//! Where the CA root lives: loaded from files, or generated on first start and persisted.

use std::path::{Path, PathBuf};

use lanyard_core::ca::Authority;
use tracing::info;

pub const ROOT_CERT: &str = "root-cert.pem";
pub const ROOT_KEY: &str = "root-key.pem";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading CA root {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing CA root {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Ca(#[from] lanyard_core::ca::Error),
}

/// Loads `dir/root-cert.pem` + `dir/root-key.pem`, or creates them.
pub fn load_or_generate(dir: &Path, trust_domain: &str) -> Result<Authority, Error> {
    let (cert, key) = (dir.join(ROOT_CERT), dir.join(ROOT_KEY));
    if cert.exists() || key.exists() {
        return load(&cert, &key);
    }
    let authority = Authority::generate(trust_domain)?;
    std::fs::create_dir_all(dir).map_err(|source| Error::Write {
        path: dir.into(),
        source,
    })?;
    write_private(&key, authority.key_pem())?;
    std::fs::write(&cert, authority.root_pem()).map_err(|source| Error::Write {
        path: cert.clone(),
        source,
    })?;
    info!(target: "ca", path = %cert.display(), "generated a new mesh root");
    Ok(authority)
}

pub fn load(cert: &Path, key: &Path) -> Result<Authority, Error> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| Error::Read {
            path: p.into(),
            source,
        })
    };
    Ok(Authority::from_pem(&read(cert)?, &read(key)?)?)
}

/// Writes a file only its owner can read (keys).
pub fn write_private(path: &Path, contents: &str) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| Error::Write {
        path: path.into(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.write_all(contents.as_bytes()).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_then_reloads_the_same_root() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_generate(dir.path(), "td").unwrap();
        let second = load_or_generate(dir.path(), "td").unwrap();
        assert_eq!(first.root_pem(), second.root_pem());
        std::fs::write(dir.path().join(ROOT_KEY), "garbage").unwrap();
        let err = load_or_generate(dir.path(), "td").unwrap_err().to_string();
        assert!(err.contains("key"), "{err}");
    }
}
