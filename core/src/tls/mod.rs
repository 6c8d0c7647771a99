//! Certificates and the mutual-TLS configurations HBONE uses: TLS 1.3 only, ALPN `h2`,
//! chains checked against the mesh roots, and SPIFFE identities checked on both sides.

mod cert;
mod verify;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

pub use cert::{identities_in, WorkloadCert};
pub use verify::{peer_identity, ExpectedIdentity};

pub const ALPN_H2: &[u8] = b"h2";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("certificate is not valid DER: {0}")]
    BadCertificate(String),
    #[error("certificate chain is empty")]
    EmptyChain,
    #[error("certificate carries no SPIFFE workload identity")]
    NoIdentity,
    #[error("peer identity {got} is outside trust domain {want}")]
    WrongTrustDomain { got: String, want: String },
    #[error("private key is not usable: {0}")]
    BadKey(String),
    #[error("building TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("building client certificate verifier: {0}")]
    Verifier(String),
}

/// ring with TLS 1.3 suites only.
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites
        .retain(|s| s.version() == &rustls::version::TLS13);
    Arc::new(p)
}
