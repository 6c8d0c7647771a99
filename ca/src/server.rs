//! Runs the gRPC server: TLS chained to the mesh root, with client certificates required
//! unless ServiceAccount tokens are accepted.

use std::sync::Arc;
use std::time::Duration;

use lanyard_core::ca::proto::istio_certificate_service_server::IstioCertificateServiceServer;
use lanyard_core::ca::Authority;
use lanyard_core::state::MeshState;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity as TlsIdentity, Server, ServerTlsConfig};

use crate::service::CaService;
use crate::token::TokenAuthenticator;

pub struct ServeConfig {
    /// DNS name in the serving certificate; clients check it.
    pub server_name: String,
    pub max_ttl: Duration,
    pub default_ttl: Duration,
    /// Accept ServiceAccount tokens (client certificates become optional).
    pub tokens: Option<TokenAuthenticator>,
}

/// Serves on an already bound listener (bound before anything is spawned, so a port clash
/// fails the start rather than a background task).
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: ServeConfig,
    authority: Arc<Authority>,
    state: watch::Receiver<Arc<MeshState>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let (cert, key) = authority.issue(
        &[],
        std::slice::from_ref(&config.server_name),
        Duration::from_secs(30 * 24 * 3600),
    )?;
    let tls = ServerTlsConfig::new()
        .identity(TlsIdentity::from_pem(cert, key))
        .client_ca_root(Certificate::from_pem(authority.root_pem()))
        .client_auth_optional(config.tokens.is_some());
    let service = CaService {
        authority,
        state,
        max_ttl: config.max_ttl,
        default_ttl: config.default_ttl,
        tokens: config.tokens,
    };
    Server::builder()
        .tls_config(tls)?
        .add_service(IstioCertificateServiceServer::new(service))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await?;
    Ok(())
}
