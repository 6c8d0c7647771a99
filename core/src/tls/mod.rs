//! Certificates and the mutual-TLS configurations HBONE uses: TLS 1.3 only, ALPN `h2`,
//! chains checked against the mesh roots, and SPIFFE identities checked on both sides.

mod cert;
mod verify;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

use crate::identity::Identity;

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
    #[error("TLS handshake: {0}")]
    Handshake(#[from] std::io::Error),
}

/// Client side of an HBONE TLS session: presents `cert`, requires the server to be `expected`.
pub async fn connect<IO>(
    io: IO,
    cert: &WorkloadCert,
    expected: &Identity,
) -> Result<tokio_rustls::client::TlsStream<IO>, Error>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let connector = tokio_rustls::TlsConnector::from(cert.client_config(expected)?);
    // SPIFFE certificates have no DNS name; the verifier checks the identity instead.
    let name = rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into());
    let mut tls = connector.connect(name, io).await?;
    tls.get_mut().1.set_buffer_limit(Some(SEND_BUFFER_LIMIT));
    Ok(tls)
}

/// What a TLS session buffers for sending, encrypted, before a write must wait for the
/// socket (rustls's default is 64 KiB). HBONE's bulk frames are 256 KiB: a frame that does
/// not fit is split over two writes to the socket.
pub const SEND_BUFFER_LIMIT: usize = 256 * 1024 + 1024;

/// Server side: presents `cert`, requires a client certificate from `trust_domain`.
pub async fn accept<IO>(
    io: IO,
    cert: &WorkloadCert,
    trust_domain: &str,
) -> Result<(tokio_rustls::server::TlsStream<IO>, Identity), Error>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(cert.server_config());
    let mut tls = acceptor.accept(io).await?;
    tls.get_mut().1.set_buffer_limit(Some(SEND_BUFFER_LIMIT));
    let peer = peer_identity(tls.get_ref().1, trust_domain)?;
    Ok((tls, peer))
}

/// ring with TLS 1.3 suites only.
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites
        .retain(|s| s.version() == &rustls::version::TLS13);
    Arc::new(p)
}
