//! Istio's TCP metrics on an explicit registry, and one access-log line per connection.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use lanyard_core::access_log::AccessLog;
use lanyard_core::identity::Identity;
use lanyard_core::state::{Service, Workload};
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
    /// Names Kubernetes Services in `destination_service` (`name.namespace.svc.<domain>`).
    cluster_domain: String,
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
    pub fn new(
        registry: &Registry,
        access_log: AccessLog,
        cluster_domain: &str,
    ) -> Result<Self, prometheus::Error> {
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
            cluster_domain: cluster_domain.to_string(),
        })
    }
}

/// An address as the access log shows it: HBONE carries only the client's IP.
#[derive(Clone, Copy, Debug)]
pub enum Addr {
    Ip(IpAddr),
    Socket(SocketAddr),
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Ip(ip) => ip.fmt(f),
            Addr::Socket(s) => s.fmt(f),
        }
    }
}

/// One end of a connection. Names are referenced from the mesh state, not copied: an idle
/// connection holds no strings.
#[derive(Clone, Debug, Default)]
pub struct Party {
    pub addr: Option<Addr>,
    pub workload: Option<Arc<Workload>>,
    /// The identity proven (inbound) or required (outbound) over mutual TLS.
    pub principal: Option<Identity>,
}

impl Party {
    fn workload_name(&self) -> &str {
        self.workload
            .as_deref()
            .map_or("", Workload::canonical_name)
    }

    fn namespace(&self) -> &str {
        self.workload
            .as_deref()
            .map_or("", |w| w.namespace.as_str())
    }

    fn principal(&self) -> &str {
        self.principal.as_ref().map_or("", Identity::uri)
    }
}

/// Which end of the connection this agent is (Istio's `reporter` label). A byte rather
/// than a string: every idle connection's task holds one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reporter {
    #[default]
    Source,
    Destination,
}

impl Reporter {
    pub fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
}

/// Istio's `connection_security_policy` label.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Security {
    #[default]
    Unknown,
    MutualTls,
    None,
}

impl Security {
    pub fn as_str(self) -> &'static str {
        match self {
            Security::Unknown => "unknown",
            Security::MutualTls => "mutual_tls",
            Security::None => "none",
        }
    }
}

/// Who talked to whom, as metrics and logs name it.
#[derive(Clone, Debug, Default)]
pub struct ConnInfo {
    pub reporter: Reporter,
    pub src: Party,
    pub dst: Party,
    pub dst_service: Option<Arc<Service>>,
    pub security: Security,
    /// The policy (and rule) that decided, when one did.
    pub policy: Option<Box<str>>,
}

impl ConnInfo {
    /// `destination_service`: formatted, as Services do not keep their hostname.
    fn service(&self, cluster_domain: &str) -> String {
        self.dst_service
            .as_ref()
            .map(|s| s.hostname(cluster_domain))
            .unwrap_or_default()
    }

    fn labels<'a>(&'a self, service: &'a str, flags: &'a str) -> [&'a str; 10] {
        let or_unknown = |s: &'a str| if s.is_empty() { "unknown" } else { s };
        [
            self.reporter.as_str(),
            or_unknown(self.src.workload_name()),
            or_unknown(self.src.namespace()),
            or_unknown(self.src.principal()),
            or_unknown(self.dst.workload_name()),
            or_unknown(self.dst.namespace()),
            or_unknown(self.dst.principal()),
            or_unknown(service),
            self.security.as_str(),
            flags,
        ]
    }
}

/// Open from the moment a connection is accepted; records close, bytes and the log line.
pub struct ConnRecord {
    metrics: Arc<Metrics>,
    pub info: ConnInfo,
    start: Instant,
}

impl ConnRecord {
    /// Counts a policy denial of this connection (`reason`: authorization, strict_mtls).
    pub fn denied(&mut self, policy: &str, rule: Option<String>, reason: &str) {
        let dst = &self.info.dst;
        self.metrics
            .denied
            .with_label_values(&[dst.workload_name(), dst.namespace(), policy, reason])
            .inc();
        self.info.policy = Some(rule.unwrap_or_else(|| policy.to_string()).into());
    }

    pub fn open(metrics: &Arc<Metrics>, info: ConnInfo) -> Self {
        let service = info.service(&metrics.cluster_domain);
        metrics
            .opened
            .with_label_values(&info.labels(&service, "-"))
            .inc();
        Self {
            metrics: metrics.clone(),
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
        let i = &self.info;
        let service = i.service(&self.metrics.cluster_domain);
        let labels = i.labels(&service, flags);
        let m = &self.metrics;
        m.closed.with_label_values(&labels).inc();
        m.received.with_label_values(&labels).inc_by(from_client);
        m.sent.with_label_values(&labels).inc_by(to_client);
        // The entry formats addresses: only when it is written.
        if !m.access_log.enabled() {
            return;
        }
        let addr = |p: &Party| p.addr.map(|a| a.to_string()).unwrap_or_default();
        let (src_addr, dst_addr) = (addr(&i.src), addr(&i.dst));
        let error = error.map(|e| e.to_string());
        let entry = AccessEntry {
            direction: i.reporter.as_str(),
            src_addr: &src_addr,
            src_workload: i.src.workload_name(),
            src_namespace: i.src.namespace(),
            src_identity: i.src.principal(),
            dst_addr: &dst_addr,
            dst_workload: i.dst.workload_name(),
            dst_namespace: i.dst.namespace(),
            dst_identity: i.dst.principal(),
            dst_service: &service,
            security: i.security.as_str(),
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Write;
    use std::sync::Mutex;
    use std::time::Duration;

    use lanyard_core::state::EndpointSource;
    use prometheus::Encoder;

    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn workload(name: &str, ns: &str, app: &str) -> Arc<Workload> {
        Arc::new(Workload {
            uid: format!("uid-{name}"),
            name: name.into(),
            namespace: ns.into(),
            service_account: "default".into(),
            node: None,
            ip: None,
            labels: BTreeMap::from([("app".to_string(), app.to_string())]),
            named_ports: BTreeMap::new(),
            ready: true,
            host_network: false,
            external: false,
            identity: Default::default(),
        })
    }

    /// Names are referenced while the connection lives and formatted when it opens and
    /// closes: the labels and the log line must read as Istio's and ztunnel's do.
    #[test]
    fn a_record_labels_metrics_and_logs_both_parties() {
        let registry = Registry::new();
        let sink = Sink::default();
        let log = AccessLog::to_writer(sink.clone(), Duration::from_secs(3600));
        let metrics = Arc::new(Metrics::new(&registry, log.clone(), "cluster.local").unwrap());
        let info = ConnInfo {
            reporter: Reporter::Source,
            src: Party {
                addr: Some(Addr::Socket("10.0.0.1:40000".parse().unwrap())),
                workload: Some(workload("client-7f9", "demo", "client")),
                principal: Some(Identity::new("cluster.local", "demo", "client")),
            },
            dst: Party {
                addr: Some(Addr::Ip("10.0.1.5".parse().unwrap())),
                workload: Some(workload("web-1", "shop", "web")),
                principal: None,
            },
            dst_service: Some(Arc::new(Service {
                name: "web".into(),
                namespace: "shop".into(),
                host: None,
                vips: vec![],
                ports: vec![],
                endpoints: EndpointSource::Selector(BTreeMap::new()),
                labels: BTreeMap::new(),
            })),
            security: Security::MutualTls,
            policy: None,
        };
        ConnRecord::open(&metrics, info).close(10, 20, "-", None);
        log.close();

        let mut text = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&registry.gather(), &mut text)
            .unwrap();
        let text = String::from_utf8(text).unwrap();
        let sent = text
            .lines()
            .find(|l| l.starts_with("istio_tcp_sent_bytes_total{"))
            .expect("sent bytes counted");
        for label in [
            r#"source_workload="client""#,
            r#"source_workload_namespace="demo""#,
            r#"source_principal="spiffe://cluster.local/ns/demo/sa/client""#,
            r#"destination_workload="web""#,
            r#"destination_principal="unknown""#,
            r#"destination_service="web.shop.svc.cluster.local""#,
        ] {
            assert!(sent.contains(label), "{label} missing from {sent}");
        }
        assert!(sent.ends_with(" 20"), "{sent}");

        let line = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(v["src.addr"], "10.0.0.1:40000");
        assert_eq!(v["dst.addr"], "10.0.1.5");
        assert_eq!(
            v["src.identity"],
            "spiffe://cluster.local/ns/demo/sa/client"
        );
        assert_eq!(v["dst.identity"], "");
        assert_eq!(v["dst.service"], "web.shop.svc.cluster.local");
        assert_eq!(v["bytes_from_client"], 10);
    }
}
