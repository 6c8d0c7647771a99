//! Istio's request metrics as a waypoint reports them (`reporter="waypoint"`), on an explicit
//! registry, and one JSON access-log line per request.

use std::net::IpAddr;

use lanyard_core::access_log::AccessLog;
use lanyard_core::identity::Identity;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use serde::Serialize;

use crate::otlp::SpanSink;
use crate::trace::SpanContext;

/// Istio's request metric labels, in this order.
pub const LABELS: [&str; 18] = [
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_version",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "request_protocol",
    "response_code",
    "response_flags",
    "grpc_response_status",
    "connection_security_policy",
    "destination_cluster",
];

/// Istio's buckets for request durations, in milliseconds.
const DURATION_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

pub struct Metrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    request_bytes: HistogramVec,
    response_bytes: HistogramVec,
    /// Routes with fault injection configured, per VirtualService: a fault left on shows.
    pub faults_active: IntGaugeVec,
    /// Requests refused by authorization, with the deciding policy.
    pub denied: IntCounterVec,
    /// Endpoints ejected by outlier detection.
    pub ejections: IntCounterVec,
    access_log: AccessLog,
    spans: Option<SpanSink>,
}

/// Everything one request's metrics and log line say.
#[derive(Debug, Default, Clone)]
pub struct RequestRecord {
    pub src_workload: String,
    pub src_namespace: String,
    /// The client's address: the tunnel's source.
    pub src_ip: Option<IpAddr>,
    /// The tunnel peer; its URI is the `source_principal` label.
    pub src_principal: Option<Identity>,
    pub src_version: String,
    pub dst_workload: String,
    pub dst_namespace: String,
    pub dst_principal: String,
    pub dst_version: String,
    pub dst_service: String,
    pub dst_service_name: String,
    pub dst_service_namespace: String,
    pub protocol: &'static str,
    pub code: u16,
    pub flags: &'static str,
    pub grpc_status: String,
    pub cluster: String,
    pub method: String,
    pub path: String,
    pub authority: String,
    pub request_id: String,
    pub upstream: String,
    pub route: String,
    pub policy: String,
    pub attempts: u32,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub duration_ms: f64,
    /// The waypoint's span, when spans are exported.
    pub span: Option<SpanContext>,
}

impl RequestRecord {
    pub fn src_principal(&self) -> &str {
        self.src_principal.as_ref().map_or("", |id| id.uri())
    }
}

fn or_unknown(s: &str) -> &str {
    if s.is_empty() {
        "unknown"
    } else {
        s
    }
}

/// `lanyard_waypoint_info{waypoint, principal} 1`: who this waypoint is, so that tools
/// reading agents' metrics (`lanyardctl topology`) can tell hops through it from app traffic.
pub fn register_info(
    registry: &Registry,
    waypoint: &str,
    principal: &str,
) -> Result<(), prometheus::Error> {
    let info = IntGaugeVec::new(
        Opts::new("lanyard_waypoint_info", "This waypoint's name and identity"),
        &["waypoint", "principal"],
    )?;
    registry.register(Box::new(info.clone()))?;
    info.with_label_values(&[waypoint, principal]).set(1);
    Ok(())
}

// === impl Metrics ===

impl Metrics {
    pub fn new(
        registry: &Registry,
        access_log: AccessLog,
        spans: Option<SpanSink>,
    ) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new("istio_requests_total", "Requests handled"),
            &LABELS,
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new("istio_request_duration_milliseconds", "Request duration")
                .buckets(DURATION_BUCKETS.to_vec()),
            &LABELS,
        )?;
        let bytes = prometheus::exponential_buckets(1.0, 10.0, 10)?;
        let request_bytes = HistogramVec::new(
            HistogramOpts::new("istio_request_bytes", "Request sizes (headers and body)")
                .buckets(bytes.clone()),
            &LABELS,
        )?;
        let response_bytes = HistogramVec::new(
            HistogramOpts::new("istio_response_bytes", "Response sizes (headers and body)")
                .buckets(bytes),
            &LABELS,
        )?;
        let faults_active = IntGaugeVec::new(
            Opts::new(
                "lanyard_fault_injection_routes",
                "Routes with fault injection configured",
            ),
            &["namespace", "virtual_service"],
        )?;
        let denied = IntCounterVec::new(
            Opts::new(
                "lanyard_requests_denied_total",
                "Requests refused by authorization",
            ),
            &["destination_service", "policy", "reason"],
        )?;
        let ejections = IntCounterVec::new(
            Opts::new(
                "lanyard_outlier_ejections_total",
                "Endpoints ejected by outlier detection",
            ),
            &["destination_service", "endpoint"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(request_bytes.clone()))?;
        registry.register(Box::new(response_bytes.clone()))?;
        registry.register(Box::new(faults_active.clone()))?;
        registry.register(Box::new(denied.clone()))?;
        registry.register(Box::new(ejections.clone()))?;
        Ok(Metrics {
            requests,
            duration,
            request_bytes,
            response_bytes,
            faults_active,
            denied,
            ejections,
            access_log,
            spans,
        })
    }

    /// Counts a finished request, writes its access-log line and exports its span if
    /// sampled.
    pub fn record(&self, r: RequestRecord) {
        let code = r.code.to_string();
        let values: [&str; 18] = [
            "waypoint",
            or_unknown(&r.src_workload),
            or_unknown(&r.src_namespace),
            or_unknown(r.src_principal()),
            or_unknown(&r.src_version),
            or_unknown(&r.dst_workload),
            or_unknown(&r.dst_namespace),
            or_unknown(&r.dst_principal),
            or_unknown(&r.dst_version),
            or_unknown(&r.dst_service),
            or_unknown(&r.dst_service_name),
            or_unknown(&r.dst_service_namespace),
            r.protocol,
            &code,
            r.flags,
            if r.grpc_status.is_empty() {
                "-"
            } else {
                &r.grpc_status
            },
            "mutual_tls",
            or_unknown(&r.cluster),
        ];
        self.requests.with_label_values(&values).inc();
        self.duration
            .with_label_values(&values)
            .observe(r.duration_ms);
        self.request_bytes
            .with_label_values(&values)
            .observe(r.request_bytes as f64);
        self.response_bytes
            .with_label_values(&values)
            .observe(r.response_bytes as f64);
        self.access_log.write("request", &AccessEntry::from(&r));
        if let (Some(spans), Some(ctx)) = (&self.spans, r.span) {
            if ctx.sampled {
                spans.send(ctx, r);
            }
        }
    }
}

/// One request's access-log line: its fields, borrowed from the record.
#[derive(Serialize)]
struct AccessEntry<'a> {
    request_id: &'a str,
    method: &'a str,
    path: &'a str,
    authority: &'a str,
    protocol: &'a str,
    response_code: u16,
    response_flags: &'a str,
    grpc_status: &'a str,
    duration_ms: f64,
    attempts: u32,
    upstream: &'a str,
    route: &'a str,
    policy: &'a str,
    src_principal: &'a str,
    src_workload: &'a str,
    dst_service: &'a str,
    dst_workload: &'a str,
    request_bytes: u64,
    response_bytes: u64,
}

impl<'a> From<&'a RequestRecord> for AccessEntry<'a> {
    fn from(r: &'a RequestRecord) -> Self {
        Self {
            request_id: &r.request_id,
            method: &r.method,
            path: &r.path,
            authority: &r.authority,
            protocol: r.protocol,
            response_code: r.code,
            response_flags: r.flags,
            grpc_status: &r.grpc_status,
            duration_ms: r.duration_ms,
            attempts: r.attempts,
            upstream: &r.upstream,
            route: &r.route,
            policy: &r.policy,
            src_principal: r.src_principal(),
            src_workload: &r.src_workload,
            dst_service: &r.dst_service,
            dst_workload: &r.dst_workload,
            request_bytes: r.request_bytes,
            response_bytes: r.response_bytes,
        }
    }
}
