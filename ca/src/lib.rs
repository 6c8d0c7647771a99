//! Lanyard's certificate authority: Istio's `CreateCertificate` over gRPC with mTLS, a root
//! that is generated once and persisted (or provided), and node-scoped entitlement.

pub mod entitlement;
pub mod root;
pub mod server;
pub mod service;
