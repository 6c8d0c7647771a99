//! Istio's certificate service: the protocol, the signing authority behind Lanyard's CA,
//! and the client agents and waypoints use (against Lanyard's CA or istiod).

mod authority;
mod bootstrap;
mod client;

use std::future::Future;
use std::time::Duration;

pub use authority::{csr_for, Authority};
pub use bootstrap::{secret_manager, BootstrapError, CaEndpoint};
pub use client::{CaClient, ClientTls, Credential};

use crate::identity::Identity;

#[allow(clippy::all)]
pub mod proto {
    tonic::include_proto!("istio.v1.auth");
}

/// The metadata key through which a node agent names the identity it asks for (istiod's).
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("CA refused the request: {0}")]
    Refused(String),
    #[error("CA unreachable: {0}")]
    Unreachable(String),
    #[error("CA returned an empty certificate chain")]
    EmptyChain,
    #[error("certificate signing request is invalid: {0}")]
    BadCsr(String),
    #[error("generating a key or certificate: {0}")]
    Crypto(String),
    #[error("CA root is invalid: {0}")]
    BadRoot(String),
    #[error("credential for the CA: {0}")]
    Credential(String),
}

/// Something that turns a CSR for an identity into a certificate chain (leaf first).
pub trait CertificateProvider: Send + Sync + 'static {
    fn create_certificate(
        &self,
        identity: &Identity,
        csr_pem: String,
        validity: Duration,
    ) -> impl Future<Output = Result<Vec<String>, Error>> + Send;
}
