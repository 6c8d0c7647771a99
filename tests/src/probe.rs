//! Talking to an agent's HBONE port directly, as a test client holding certificates from the
//! mesh CA (or from a rogue one).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use lanyard_core::ca::{csr_for, Authority};
use lanyard_core::identity::Identity;
use lanyard_core::tls::{self, WorkloadCert};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// A workload certificate for `identity`, signed by the root kept in `ca_dir`
/// (or by a fresh, untrusted root when `ca_dir` is None), trusting the mesh root.
pub fn workload_cert(
    ca_dir: Option<&Path>,
    mesh_root_dir: &Path,
    identity: &str,
) -> Result<Arc<WorkloadCert>> {
    let read =
        |d: &Path, f: &str| std::fs::read_to_string(d.join(f)).with_context(|| f.to_string());
    let mesh = Authority::from_pem(
        &read(mesh_root_dir, "root-cert.pem")?,
        &read(mesh_root_dir, "root-key.pem")?,
    )?;
    let signer = match ca_dir {
        Some(d) => Authority::from_pem(&read(d, "root-cert.pem")?, &read(d, "root-key.pem")?)?,
        None => Authority::generate("cluster.local")?,
    };
    let id: Identity = identity.parse()?;
    let (csr, key) = csr_for(&id)?;
    let chain = signer.sign(&csr, &id, Duration::from_secs(3600))?;
    let der = |p: &str| CertificateDer::from_pem_slice(p.as_bytes()).map(|c| c.into_owned());
    let chain = chain
        .iter()
        .map(|p| der(p))
        .collect::<Result<Vec<_>, _>>()?;
    let root = der(mesh.root_pem())?;
    Ok(Arc::new(WorkloadCert::new(chain, vec![root], key)?))
}

/// TLS-connects to `addr` from inside `netns` expecting `expected`; returns the SPIFFE IDs
/// in the certificate the server presented.
pub fn presented_identities(
    netns: &str,
    addr: SocketAddr,
    cert: Arc<WorkloadCert>,
    expected: &str,
) -> Result<Vec<Identity>> {
    let expected: Identity = expected.parse()?;
    crate::in_netns(netns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let tls = tls::connect(tcp, &cert, &expected).await?;
            let leaf = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .context("no peer certificate")?;
            Ok(tls::identities_in(leaf)?)
        })
    })
}

/// Sends `bytes` to `addr` from inside `netns` and reads until the peer closes (bounded).
pub fn send_raw(netns: &str, addr: SocketAddr, bytes: Vec<u8>) -> Result<Vec<u8>> {
    use std::io::{Read, Write};
    crate::in_netns(netns, move || {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(&bytes)?;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        Ok(out)
    })
}
