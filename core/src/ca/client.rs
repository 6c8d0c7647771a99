//! The gRPC client of `IstioCertificateService`, authenticated with a client certificate
//! (standalone: a node's bootstrap certificate) or a ServiceAccount token (in a cluster, as
//! Istio's agents do toward istiod).

use std::path::PathBuf;
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
    pub credential: Credential,
    /// The DNS name in the CA's serving certificate.
    pub server_name: String,
}

#[derive(Clone, Debug)]
pub enum Credential {
    Certificate {
        cert_pem: String,
        key_pem: String,
    },
    /// A projected ServiceAccount token file, read again for every request because the
    /// kubelet rotates it.
    Token(PathBuf),
}

#[derive(Clone, Debug)]
pub struct CaClient {
    client: IstioCertificateServiceClient<Channel>,
    token: Option<PathBuf>,
}

// === impl CaClient ===

impl CaClient {
    /// Connects lazily: a CA that is down at start only delays the first certificate.
    pub fn new(address: &str, tls: Option<ClientTls>) -> Result<Self, Error> {
        let mut endpoint = Endpoint::from_shared(address.to_string())
            .map_err(|e| Error::Unreachable(format!("bad CA address {address:?}: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10));
        let mut token = None;
        if let Some(tls) = tls {
            let mut config = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(tls.root_pem))
                .domain_name(tls.server_name);
            match tls.credential {
                Credential::Certificate { cert_pem, key_pem } => {
                    config = config.identity(TlsIdentity::from_pem(cert_pem, key_pem));
                }
                Credential::Token(path) => token = Some(path),
            }
            endpoint = endpoint
                .tls_config(config)
                .map_err(|e| Error::Unreachable(format!("CA TLS settings: {e}")))?;
        }
        Ok(Self {
            client: IstioCertificateServiceClient::new(endpoint.connect_lazy()),
            token,
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
        let mut request = tonic::Request::new(request);
        if let Some(path) = &self.token {
            let token = std::fs::read_to_string(path)
                .map_err(|e| Error::Credential(format!("reading token {}: {e}", path.display())))?;
            let value = format!("Bearer {}", token.trim())
                .parse()
                .map_err(|_| Error::Credential(format!("token {} is not ASCII", path.display())))?;
            request.metadata_mut().insert("authorization", value);
        }
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
