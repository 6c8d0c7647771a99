//! The gRPC `IstioCertificateService` implementation.

use std::sync::Arc;
use std::time::Duration;

use lanyard_core::ca::proto::istio_certificate_service_server::IstioCertificateService;
use lanyard_core::ca::proto::{IstioCertificateRequest, IstioCertificateResponse};
use lanyard_core::ca::{Authority, IMPERSONATED_IDENTITY};
use lanyard_core::identity::Identity;
use lanyard_core::state::MeshState;
use prost_types::value::Kind;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tracing::{info, warn};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::entitlement::{authorize, Caller};
use crate::token::TokenAuthenticator;

pub struct CaService {
    pub authority: Arc<Authority>,
    pub state: watch::Receiver<Arc<MeshState>>,
    pub max_ttl: Duration,
    pub default_ttl: Duration,
    /// Set in a cluster: callers without a client certificate present a token.
    pub tokens: Option<TokenAuthenticator>,
}

fn uris_of(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return vec![];
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return vec![];
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect()
}

/// The identity asked for: the impersonation metadata if set, else the CSR's URI SAN.
fn requested_identity(req: &IstioCertificateRequest) -> Result<Identity, Status> {
    let from_meta = req
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get(IMPERSONATED_IDENTITY))
        .and_then(|v| match &v.kind {
            Some(Kind::StringValue(s)) => Some(s.clone()),
            _ => None,
        });
    let from_csr = rcgen::CertificateSigningRequestParams::from_pem(&req.csr)
        .map_err(|e| Status::invalid_argument(format!("csr: {e}")))?
        .params
        .subject_alt_names
        .iter()
        .find_map(|san| match san {
            rcgen::SanType::URI(u) => Some(u.as_str().to_string()),
            _ => None,
        });
    let raw = match (from_meta, from_csr) {
        (Some(m), Some(c)) if m != c => {
            return Err(Status::invalid_argument(format!(
                "metadata.{IMPERSONATED_IDENTITY} {m:?} differs from the CSR's URI SAN {c:?}"
            )))
        }
        (Some(m), _) => m,
        (None, Some(c)) => c,
        (None, None) => {
            return Err(Status::invalid_argument(
                "csr: no URI SAN and no ImpersonatedIdentity",
            ))
        }
    };
    raw.parse::<Identity>()
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

// === impl CaService ===

impl CaService {
    /// A client certificate decides when there is one; otherwise the bearer token does.
    async fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        if let Some(cert) = request.peer_certs().and_then(|c| c.first().cloned()) {
            let uris = uris_of(&cert);
            return Caller::from_uris(uris.iter().map(String::as_str))
                .map_err(|e| Status::unauthenticated(e.to_string()));
        }
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match (&self.tokens, token) {
            (Some(tokens), Some(token)) => tokens.authenticate(token).await.map_err(|e| {
                warn!(target: "ca", "refused a token: {e}");
                Status::unauthenticated(e.to_string())
            }),
            (Some(_), None) => Err(Status::unauthenticated(
                "no client certificate and no bearer token",
            )),
            (None, _) => Err(Status::unauthenticated("no client certificate")),
        }
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let caller = self.caller(&request).await?;
        let req = request.into_inner();
        let requested = requested_identity(&req)?;
        let state = self.state.borrow().clone();
        if let Err(denied) = authorize(&state, &caller, &requested) {
            warn!(target: "ca", ?caller, %requested, "refused: {denied}");
            return Err(Status::permission_denied(denied.to_string()));
        }
        let ttl = match req.validity_duration {
            d if d > 0 => Duration::from_secs(d as u64).min(self.max_ttl),
            _ => self.default_ttl,
        };
        let chain = self
            .authority
            .sign(&req.csr, &requested, ttl)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        info!(target: "ca", ?caller, identity = %requested, ttl_s = ttl.as_secs(), "issued");
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: chain,
        }))
    }
}
