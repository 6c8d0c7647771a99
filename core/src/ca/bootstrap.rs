//! Starting a workload-certificate cache from bootstrap credentials: a directory holding
//! `root.pem` (the mesh root, which also anchors peer verification) and either `cert.pem`
//! and `key.pem` (the caller's identity toward the CA: a node agent's, or a waypoint's own)
//! or, in a cluster, nothing more: a ServiceAccount token file proves the caller instead.

use std::path::PathBuf;

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

/// Where a CA is and how to prove oneself to it, as agent and waypoint flags give it.
#[derive(Clone, Debug)]
pub struct CaEndpoint {
    pub address: String,
    /// The DNS name in the CA's serving certificate.
    pub server_name: String,
    /// Holds root.pem, and cert.pem + key.pem unless `token` is set.
    pub bootstrap: PathBuf,
    /// A projected ServiceAccount token file to authenticate with instead of a certificate.
    pub token: Option<PathBuf>,
}

/// A secret manager that asks the CA at `ca` for certificates.
pub fn secret_manager(
    ca: &CaEndpoint,
    config: SecretConfig,
) -> Result<SecretManager<CaClient>, BootstrapError> {
    let dir = ca.bootstrap.as_path();
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
    let credential = match &ca.token {
        Some(path) => Credential::Token(path.clone()),
        None => Credential::Certificate {
            cert_pem: read("cert.pem")?,
            key_pem: read("key.pem")?,
        },
    };
    let tls = ClientTls {
        root_pem,
        credential,
        server_name: ca.server_name.clone(),
    };
    Ok(SecretManager::new(
        CaClient::new(&ca.address, Some(tls))?,
        roots,
        config,
    ))
}
