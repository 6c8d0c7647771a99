//! `lanyard-agent`: one per node. It captures the TCP traffic of enrolled pods with eBPF and
//! carries it between nodes over HBONE (HTTP/2 CONNECT in mutual TLS), wire-compatible with
//! Istio's ztunnel.
//!
//! - [`capture`]: BPF programs, their maps, and pod network namespaces;
//! - [`enroll`]: which local pods are captured, kept in step with the mesh state;
//! - [`proxy`]: the data path (outbound, inbound HBONE, inbound plaintext, connection pool);
//! - [`metrics`], [`admin`]: what operators see.

pub mod admin;
pub mod capture;
pub mod config;
pub mod enroll;
pub mod metrics;
pub mod proxy;
pub mod socket;
pub mod workers;
