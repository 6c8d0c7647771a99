//! Certificate checks for SPIFFE identities. Workload certificates carry a URI SAN and no DNS
//! name, so the client side cannot use WebPKI's name check: it verifies the chain, then the
//! identity. The server side verifies the chain in rustls and the trust domain after the
//! handshake.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CommonState, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::{identities_in, provider, Error};
use crate::identity::Identity;

/// Accepts a server chained to `roots` whose certificate names one of `expected`.
#[derive(Debug)]
pub struct ExpectedIdentity {
    roots: Arc<RootCertStore>,
    expected: Vec<Identity>,
    provider: Arc<CryptoProvider>,
}

impl ExpectedIdentity {
    pub fn new(roots: Arc<RootCertStore>, expected: Vec<Identity>) -> Self {
        Self {
            roots,
            expected,
            provider: provider(),
        }
    }
}

impl ServerCertVerifier for ExpectedIdentity {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let ids = identities_in(end_entity).map_err(|e| rustls::Error::General(e.to_string()))?;
        if ids.iter().any(|id| self.expected.contains(id)) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The verified peer's workload identity, required to be in `trust_domain`.
pub fn peer_identity(conn: &CommonState, trust_domain: &str) -> Result<Identity, Error> {
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or(Error::EmptyChain)?;
    let id = identities_in(leaf)?
        .into_iter()
        .next()
        .ok_or(Error::NoIdentity)?;
    if id.trust_domain() != trust_domain {
        return Err(Error::WrongTrustDomain {
            got: id.to_string(),
            want: trust_domain.to_string(),
        });
    }
    Ok(id)
}
