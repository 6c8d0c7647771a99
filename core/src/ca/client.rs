//! The gRPC client of `IstioCertificateService`, authenticated with mTLS (a node bootstrap
//! certificate in standalone mode).

use std::time::Duration;

use prost_types::{value::Kind, Struct, Value};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity as TlsIdentity};

use super::proto::istio_certificate_service_client::IstioCertificateServiceClient;
use super::proto::IstioCertificateRequest;
use super::{CertificateProvider, Error, IMPERSONATED_IDENTITY};
use crate::identity::Identity;

/// How the client proves itself to the CA and checks the CA.
#[derive(Clone, Debug)]
pub struct ClientTls {
    pub root_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// The DNS name in the CA's serving certificate.
    pub server_name: String,
}

#[derive(Clone, Debug)]
pub struct CaClient {
    client: IstioCertificateServiceClient<Channel>,
}

// === impl CaClient ===

impl CaClient {
    /// Connects lazily: a CA that is down at start only delays the first certificate.
    pub fn new(address: &str, tls: Option<ClientTls>) -> Result<Self, Error> {
        let mut endpoint = Endpoint::from_shared(address.to_string())
            .map_err(|e| Error::Unreachable(format!("bad CA address {address:?}: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10));
        if let Some(tls) = tls {
            let config = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(tls.root_pem))
                .identity(TlsIdentity::from_pem(tls.cert_pem, tls.key_pem))
                .domain_name(tls.server_name);
            endpoint = endpoint
                .tls_config(config)
                .map_err(|e| Error::Unreachable(format!("CA TLS settings: {e}")))?;
        }
        Ok(Self {
            client: IstioCertificateServiceClient::new(endpoint.connect_lazy()),
        })
    }
}

impl CertificateProvider for CaClient {
    async fn create_certificate(
        &self,
        identity: &Identity,
        csr_pem: String,
        validity: Duration,
    ) -> Result<Vec<String>, Error> {
        let metadata = Struct {
            fields: [(
                IMPERSONATED_IDENTITY.to_string(),
                Value {
                    kind: Some(Kind::StringValue(identity.to_string())),
                },
            )]
            .into_iter()
            .collect(),
        };
        let request = IstioCertificateRequest {
            csr: csr_pem,
            validity_duration: validity.as_secs() as i64,
            metadata: Some(metadata),
        };
        let response = self
            .client
            .clone()
            .create_certificate(request)
            .await
            .map_err(|status| match status.code() {
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown => {
                    Error::Unreachable(status.message().to_string())
                }
                _ => Error::Refused(format!("{:?}: {}", status.code(), status.message())),
            })?;
        let chain = response.into_inner().cert_chain;
        if chain.is_empty() {
            return Err(Error::EmptyChain);
        }
        Ok(chain)
    }
}
