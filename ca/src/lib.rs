//! Lanyard's certificate authority: Istio's `CreateCertificate` over gRPC, node-scoped
//! entitlement, and a root that is generated once and persisted (or provided).
//!
//! Callers prove who they are with a client certificate (standalone: a node's bootstrap
//! certificate, or a workload renewing itself) or, in a cluster, a ServiceAccount token
//! checked with TokenReview ([`token`]); the root lives in files ([`root`]) or a Secret
//! ([`cluster`]).

pub mod cluster;
pub mod entitlement;
pub mod root;
pub mod server;
pub mod service;
pub mod token;
