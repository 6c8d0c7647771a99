//! Starting a workload-certificate cache from bootstrap credentials: a directory holding
//! `root.pem` (the mesh root, which also anchors peer verification) and either `cert.pem`
//! and `key.pem` (the caller's identity toward the CA: a node agent's, or a waypoint's own)
//! or, in a cluster, nothing more: a ServiceAccount token file proves the caller instead.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use super::{CaClient, ClientTls, Credential};
use crate::secrets::{SecretConfig, SecretManager};

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no valid PEM certificate")]
    BadRoot { path: PathBuf },
    #[error(transparent)]
    Ca(#[from] super::Error),
}

/// A secret manager that asks the CA at `address` (checked as `server_name`) for
/// certificates, authenticating with `token` if given, else the certificate in `dir`.
pub fn secret_manager(
    dir: &Path,
    token: Option<&Path>,
    address: &str,
    server_name: &str,
    config: SecretConfig,
) -> Result<SecretManager<CaClient>, BootstrapError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|source| BootstrapError::Read { path, source })
    };
    let root_pem = read("root.pem")?;
    let roots = CertificateDer::pem_slice_iter(root_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .ok()
        .filter(|r| !r.is_empty())
        .ok_or_else(|| BootstrapError::BadRoot {
            path: dir.join("root.pem"),
        })?;
    let credential = match token {
        Some(path) => Credential::Token(path.to_path_buf()),
        None => Credential::Certificate {
            cert_pem: read("cert.pem")?,
            key_pem: read("key.pem")?,
        },
    };
    let tls = ClientTls {
        root_pem,
        credential,
        server_name: server_name.to_string(),
    };
    Ok(SecretManager::new(
        CaClient::new(address, Some(tls))?,
        roots,
        config,
    ))
}
