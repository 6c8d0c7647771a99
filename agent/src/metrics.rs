//! Istio's TCP metrics on an explicit registry, and one access-log line per connection.

use std::time::Instant;

use lanyard_core::access_log::AccessLog;
use prometheus::{IntCounterVec, Opts, Registry};
use serde::Serialize;

/// Istio's TCP metric labels, in this order.
pub const LABELS: [&str; 10] = [
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_service",
    "connection_security_policy",
    "response_flags",
];

pub struct Metrics {
    opened: IntCounterVec,
    closed: IntCounterVec,
    sent: IntCounterVec,
    received: IntCounterVec,
    /// HBONE handshakes that failed before any stream, by reason.
    pub hbone_handshake_failures: IntCounterVec,
    /// Connections refused or closed by policy, with the policy that decided.
    pub denied: IntCounterVec,
    access_log: AccessLog,
}

fn counter(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

// === impl Metrics ===

impl Metrics {
    pub fn new(registry: &Registry, access_log: AccessLog) -> Result<Self, prometheus::Error> {
        Ok(Self {
            opened: counter(
                registry,
                "istio_tcp_connections_opened_total",
                "TCP connections opened",
                &LABELS,
            )?,
            closed: counter(
                registry,
                "istio_tcp_connections_closed_total",
                "TCP connections closed",
                &LABELS,
            )?,
            sent: counter(
                registry,
                "istio_tcp_sent_bytes_total",
                "Bytes sent toward the client (response direction)",
                &LABELS,
            )?,
            received: counter(
                registry,
                "istio_tcp_received_bytes_total",
                "Bytes received from the client (request direction)",
                &LABELS,
            )?,
            hbone_handshake_failures: counter(
                registry,
                "lanyard_hbone_handshake_failures_total",
                "Inbound HBONE connections refused before any tunnel, by reason",
                &["reason"],
            )?,
            denied: counter(
                registry,
                "lanyard_connections_denied_total",
                "Connections refused or closed by policy, by deciding policy (namespace/name) and reason",
                &["destination_workload", "destination_workload_namespace", "policy", "reason"],
            )?,
            access_log,
        })
    }
}

/// Who talked to whom, as metrics and logs name it.
#[derive(Clone, Debug, Default)]
pub struct ConnInfo {
    pub reporter: &'static str,
    pub src_addr: String,
    pub src_workload: String,
    pub src_namespace: String,
    pub src_principal: String,
    pub dst_addr: String,
    pub dst_workload: String,
    pub dst_namespace: String,
    pub dst_principal: String,
    pub dst_service: String,
    pub security: &'static str,
    /// The policy (and rule) that decided, when one did.
    pub policy: Option<String>,
}

impl ConnInfo {
    fn labels<'a>(&'a self, flags: &'a str) -> [&'a str; 10] {
        let or_unknown = |s: &'a String| if s.is_empty() { "unknown" } else { s.as_str() };
        [
            self.reporter,
            or_unknown(&self.src_workload),
            or_unknown(&self.src_namespace),
            or_unknown(&self.src_principal),
            or_unknown(&self.dst_workload),
            or_unknown(&self.dst_namespace),
            or_unknown(&self.dst_principal),
            or_unknown(&self.dst_service),
            self.security,
            flags,
        ]
    }
}

/// Open from the moment a connection is accepted; records close, bytes and the log line.
pub struct ConnRecord<'m> {
    metrics: &'m Metrics,
    pub info: ConnInfo,
    start: Instant,
}

impl<'m> ConnRecord<'m> {
    /// Counts a policy denial of this connection (`reason`: authorization, strict_mtls).
    pub fn denied(&mut self, policy: &str, rule: Option<String>, reason: &str) {
        let i = &self.info;
        self.metrics
            .denied
            .with_label_values(&[
                i.dst_workload.as_str(),
                i.dst_namespace.as_str(),
                policy,
                reason,
            ])
            .inc();
        self.info.policy = Some(rule.unwrap_or_else(|| policy.to_string()));
    }

    pub fn open(metrics: &'m Metrics, info: ConnInfo) -> Self {
        metrics.opened.with_label_values(&info.labels("-")).inc();
        Self {
            metrics,
            info,
            start: Instant::now(),
        }
    }

    /// Byte counts are the client's: what it sent is "received", what it got is "sent".
    pub fn close(
        self,
        from_client: u64,
        to_client: u64,
        flags: &str,
        error: Option<&dyn std::fmt::Display>,
    ) {
        let labels = self.info.labels(flags);
        let m = self.metrics;
        m.closed.with_label_values(&labels).inc();
        m.received.with_label_values(&labels).inc_by(from_client);
        m.sent.with_label_values(&labels).inc_by(to_client);
        let i = &self.info;
        let error = error.map(|e| e.to_string());
        let entry = AccessEntry {
            direction: i.reporter,
            src_addr: &i.src_addr,
            src_workload: &i.src_workload,
            src_namespace: &i.src_namespace,
            src_identity: &i.src_principal,
            dst_addr: &i.dst_addr,
            dst_workload: &i.dst_workload,
            dst_namespace: &i.dst_namespace,
            dst_identity: &i.dst_principal,
            dst_service: &i.dst_service,
            security: i.security,
            bytes_from_client: from_client,
            bytes_to_client: to_client,
            duration_ms: self.start.elapsed().as_millis() as u64,
            response_flags: flags,
            authz_policy: i.policy.as_deref(),
            error: error.as_deref(),
        };
        m.access_log.write("connection complete", &entry);
    }
}

/// One connection's access-log line. Field names are ztunnel's.
#[derive(Serialize)]
struct AccessEntry<'a> {
    direction: &'a str,
    #[serde(rename = "src.addr")]
    src_addr: &'a str,
    #[serde(rename = "src.workload")]
    src_workload: &'a str,
    #[serde(rename = "src.namespace")]
    src_namespace: &'a str,
    #[serde(rename = "src.identity")]
    src_identity: &'a str,
    #[serde(rename = "dst.addr")]
    dst_addr: &'a str,
    #[serde(rename = "dst.workload")]
    dst_workload: &'a str,
    #[serde(rename = "dst.namespace")]
    dst_namespace: &'a str,
    #[serde(rename = "dst.identity")]
    dst_identity: &'a str,
    #[serde(rename = "dst.service")]
    dst_service: &'a str,
    security: &'a str,
    bytes_from_client: u64,
    bytes_to_client: u64,
    duration_ms: u64,
    response_flags: &'a str,
    #[serde(rename = "authz.policy", skip_serializing_if = "Option::is_none")]
    authz_policy: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}
