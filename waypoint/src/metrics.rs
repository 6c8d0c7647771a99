//! Istio's request metrics as a waypoint reports them (`reporter="waypoint"`), on an explicit
//! registry, and one JSON access-log line per request.

use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use http::uri::{self, PathAndQuery};
use http::{header, HeaderValue, Method, Request};
use lanyard_core::access_log::AccessLog;
use lanyard_core::identity::Identity;
use lanyard_core::state::{MeshState, Service, Workload};
use lanyard_core::traffic::virtual_service::VirtualService;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};
use serde::Serialize;

use crate::lb::Cluster;

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
    /// The four series of each label set seen, by the objects the labels are read from: a
    /// request costs one lookup here instead of formatting 18 labels and hashing them four
    /// times.
    series: Mutex<SeriesCache>,
    /// Routes with fault injection configured, per VirtualService: a fault left on shows.
    pub faults_active: IntGaugeVec,
    /// Requests refused by authorization, with the deciding policy.
    pub denied: IntCounterVec,
    /// Endpoints ejected by outlier detection.
    pub ejections: IntCounterVec,
    access_log: AccessLog,
    spans: Option<SpanSink>,
}

/// Everything one request's metrics and log line say. Names are read, when written, from
/// the objects of the mesh state the request was routed with: recording a request formats
/// nothing unless its label set is new.
#[derive(Debug, Default, Clone)]
pub struct RequestRecord {
    /// The state the names below come from (trust and cluster domains).
    pub state: Option<Arc<MeshState>>,
    /// The client's workload, when it is in the mesh.
    pub src: Option<Arc<Workload>>,
    /// The client's address: the tunnel's source.
    pub src_ip: Option<IpAddr>,
    /// The tunnel peer; its URI is the `source_principal` label.
    pub src_principal: Option<Identity>,
    /// The service the request was addressed to.
    pub service: Option<Arc<Service>>,
    /// The endpoint that answered (or last failed).
    pub dst: Option<Arc<Workload>>,
    pub upstream: Option<SocketAddr>,
    pub cluster: Option<Arc<Cluster>>,
    pub protocol: &'static str,
    pub code: u16,
    pub flags: &'static str,
    pub grpc_status: Option<u32>,
    pub method: Method,
    pub path: Option<PathAndQuery>,
    pub authority: Authority,
    pub request_id: Option<HeaderValue>,
    /// The VirtualService and the index of its HTTP route that matched.
    pub route: Option<(Arc<VirtualService>, usize)>,
    pub policy: String,
    pub attempts: u32,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub duration_ms: f64,
    /// The waypoint's span, when spans are exported.
    pub span: Option<SpanContext>,
}

// === impl RequestRecord ===

impl RequestRecord {
    pub fn src_principal(&self) -> &str {
        self.src_principal.as_ref().map_or("", |id| id.uri())
    }

    fn cluster_domain(&self) -> &str {
        self.state
            .as_ref()
            .map_or(DEFAULT_CLUSTER_DOMAIN, |s| s.cluster_domain())
    }

    /// `destination_service`: the service's host name; empty for workload-addressed traffic.
    pub fn dst_service(&self) -> Lazy<'_> {
        Lazy::ServiceHost(self.service.as_deref(), self.cluster_domain())
    }

    pub fn dst_principal(&self) -> Option<Identity> {
        let td = self.state.as_ref()?.trust_domain();
        Some(self.dst.as_ref()?.identity(td))
    }

    pub fn path(&self) -> &str {
        self.path.as_ref().map_or("", |p| p.as_str())
    }

    pub fn request_id(&self) -> &str {
        self.request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    pub fn cluster_name(&self) -> &str {
        self.cluster.as_ref().map_or("", |c| &c.name)
    }

    /// `<namespace>/<name>#<route name or index>` of the route that matched.
    pub fn route(&self) -> Lazy<'_> {
        Lazy::Route(self.route.as_ref().map(|(vs, i)| (&**vs, *i)))
    }

    pub fn upstream(&self) -> Lazy<'_> {
        Lazy::Addr(self.upstream)
    }
}

/// Kubernetes' default, for records made without a mesh state (tests).
const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

/// A record's field that is written out only when needed (a log line, a new label set).
pub enum Lazy<'a> {
    ServiceHost(Option<&'a Service>, &'a str),
    Route(Option<(&'a VirtualService, usize)>),
    Addr(Option<SocketAddr>),
    Code(Option<u32>),
}

impl fmt::Display for Lazy<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lazy::ServiceHost(None, _)
            | Lazy::Route(None)
            | Lazy::Addr(None)
            | Lazy::Code(None) => Ok(()),
            Lazy::Code(Some(c)) => write!(f, "{c}"),
            Lazy::ServiceHost(Some(s), domain) => s.write_hostname(domain).fmt(f),
            Lazy::Route(Some((vs, i))) => match vs.http.get(*i).and_then(|r| r.name.as_ref()) {
                Some(name) => write!(f, "{}/{}#{name}", vs.namespace, vs.name),
                None => write!(f, "{}/{}#{i}", vs.namespace, vs.name),
            },
            Lazy::Addr(Some(a)) => write!(f, "{a}"),
        }
    }
}

impl Serialize for Lazy<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What a request's label values are read from. Objects compare by address; the cache holds
/// them, so an address is not reused while its entry lives.
#[derive(Clone, PartialEq, Eq, Hash)]
struct SeriesKey {
    src: Option<ByAddress<Workload>>,
    principal: Option<Identity>,
    service: Option<ByAddress<Service>>,
    dst: Option<ByAddress<Workload>>,
    cluster: Option<ByAddress<Cluster>>,
    protocol: &'static str,
    code: u16,
    flags: &'static str,
    grpc_status: Option<u32>,
}

struct ByAddress<T>(Arc<T>);

impl<T> Clone for ByAddress<T> {
    fn clone(&self) -> Self {
        ByAddress(self.0.clone())
    }
}

impl<T> PartialEq for ByAddress<T> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl<T> Eq for ByAddress<T> {}

impl<T> Hash for ByAddress<T> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        Arc::as_ptr(&self.0).hash(h)
    }
}

/// One label set's series.
#[derive(Clone)]
struct Series {
    requests: IntCounter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

/// Series by label-set key, for one mesh state: a new state starts an empty cache, so
/// names never come from objects a config update replaced. Bounded: past `MAX_SERIES` keys
/// it starts over (the series themselves stay registered).
#[derive(Default)]
struct SeriesCache {
    state: Option<Arc<MeshState>>,
    by_key: HashMap<SeriesKey, Series, foldhash::fast::RandomState>,
}

const MAX_SERIES: usize = 4096;

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
            series: Mutex::new(SeriesCache::default()),
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
        let series = self.series(&r);
        series.requests.inc();
        series.duration.observe(r.duration_ms);
        series.request_bytes.observe(r.request_bytes as f64);
        series.response_bytes.observe(r.response_bytes as f64);
        // The entry's names are looked up as it is built: not when nothing is written.
        if self.access_log.enabled() {
            self.access_log.write("request", &AccessEntry::from(&r));
        }
        if let (Some(spans), Some(ctx)) = (&self.spans, r.span) {
            if ctx.sampled {
                spans.send(ctx, r);
            }
        }
    }

    fn series(&self, r: &RequestRecord) -> Series {
        let key = SeriesKey {
            src: r.src.clone().map(ByAddress),
            principal: r.src_principal.clone(),
            service: r.service.clone().map(ByAddress),
            dst: r.dst.clone().map(ByAddress),
            cluster: r.cluster.clone().map(ByAddress),
            protocol: r.protocol,
            code: r.code,
            flags: r.flags,
            grpc_status: r.grpc_status,
        };
        let mut cache = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let same_state = match (&cache.state, &r.state) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !same_state || cache.by_key.len() >= MAX_SERIES {
            cache.by_key.clear();
            cache.state = r.state.clone();
        }
        if let Some(s) = cache.by_key.get(&key) {
            return s.clone();
        }
        let s = self.new_series(r);
        cache.by_key.insert(key, s.clone());
        s
    }

    /// Istio's label values for the request's label set; only for a set not seen before.
    fn new_series(&self, r: &RequestRecord) -> Series {
        fn version(w: &Option<Arc<Workload>>) -> &str {
            w.as_ref()
                .and_then(|w| w.labels.get("version"))
                .map_or("unknown", |v| or_unknown(v))
        }
        let (src, dst) = (r.src.as_deref(), r.dst.as_deref());
        let service = r.dst_service().to_string();
        let dst_principal = r.dst_principal();
        let code = r.code.to_string();
        let grpc = r
            .grpc_status
            .map_or_else(|| "-".to_string(), |s| s.to_string());
        let values: [&str; 18] = [
            "waypoint",
            src.map_or("unknown", |w| or_unknown(w.canonical_name())),
            src.map_or("unknown", |w| or_unknown(&w.namespace)),
            or_unknown(r.src_principal()),
            version(&r.src),
            dst.map_or("unknown", |w| or_unknown(w.canonical_name())),
            dst.map_or("unknown", |w| or_unknown(&w.namespace)),
            dst_principal.as_ref().map_or("unknown", |id| id.uri()),
            version(&r.dst),
            or_unknown(&service),
            r.service
                .as_ref()
                .map_or("unknown", |s| or_unknown(&s.name)),
            r.service
                .as_ref()
                .map_or("unknown", |s| or_unknown(&s.namespace)),
            r.protocol,
            &code,
            r.flags,
            &grpc,
            "mutual_tls",
            or_unknown(r.cluster_name()),
        ];
        Series {
            requests: self.requests.with_label_values(&values),
            duration: self.duration.with_label_values(&values),
            request_bytes: self.request_bytes.with_label_values(&values),
            response_bytes: self.response_bytes.with_label_values(&values),
        }
    }
}

/// The request's authority, kept without a copy: the URI's (HTTP/2's `:authority`), else the
/// `Host` header's, else the address the tunnel dialed. The first two share the request's
/// buffer; a `String` here was one allocation per request.
#[derive(Debug, Clone)]
pub enum Authority {
    Uri(uri::Authority),
    /// Visible ASCII, checked when chosen.
    Host(HeaderValue),
    Dialed(String),
}

// === impl Authority ===

impl Authority {
    pub fn of<B>(req: &Request<B>, dialed: SocketAddr) -> Self {
        if let Some(a) = req.uri().authority() {
            return Self::Uri(a.clone());
        }
        match req.headers().get(header::HOST) {
            Some(h) if h.to_str().is_ok() => Self::Host(h.clone()),
            _ => Self::Dialed(dialed.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Uri(a) => a.as_str(),
            Self::Host(h) => h.to_str().unwrap_or_default(),
            Self::Dialed(s) => s,
        }
    }
}

impl Default for Authority {
    fn default() -> Self {
        Self::Dialed(String::new())
    }
}

impl From<&str> for Authority {
    fn from(s: &str) -> Self {
        Self::Dialed(s.to_string())
    }
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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
    grpc_status: Lazy<'a>,
    duration_ms: f64,
    attempts: u32,
    upstream: Lazy<'a>,
    route: Lazy<'a>,
    policy: &'a str,
    src_principal: &'a str,
    src_workload: &'a str,
    dst_service: Lazy<'a>,
    dst_workload: &'a str,
    request_bytes: u64,
    response_bytes: u64,
}

impl<'a> From<&'a RequestRecord> for AccessEntry<'a> {
    fn from(r: &'a RequestRecord) -> Self {
        Self {
            request_id: r.request_id(),
            method: r.method.as_str(),
            path: r.path(),
            authority: r.authority.as_str(),
            protocol: r.protocol,
            response_code: r.code,
            response_flags: r.flags,
            grpc_status: Lazy::Code(r.grpc_status),
            duration_ms: r.duration_ms,
            attempts: r.attempts,
            upstream: r.upstream(),
            route: r.route(),
            policy: &r.policy,
            src_principal: r.src_principal(),
            src_workload: r.src.as_ref().map_or("", |w| w.canonical_name()),
            dst_service: r.dst_service(),
            dst_workload: r.dst.as_ref().map_or("", |w| w.canonical_name()),
            request_bytes: r.request_bytes,
            response_bytes: r.response_bytes,
        }
    }
}

#[cfg(test)]
mod tests;
