//! A Service: virtual IPs, ports, and the selector that picks its endpoints.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use crate::config::k8s::{IntOrString, Service as K8sService};

use crate::config::{ObjectRef, Rejection};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    Named(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u16,
    pub target_port: TargetPort,
    pub app_protocol: Option<String>,
}

/// What a port speaks, from Istio's rules: `appProtocol`, else the port name's prefix
/// (`http-web`, `grpc`, …). Anything else is opaque TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Http1,
    /// HTTP/2 with prior knowledge (also gRPC).
    Http2,
}

impl ServicePort {
    pub fn protocol(&self) -> Protocol {
        // Asked per request at a waypoint: compared in place rather than lower-cased.
        let from = |p: &str| {
            let is = |names: &[&str]| names.iter().any(|n| p.eq_ignore_ascii_case(n));
            if is(&["http"]) {
                Some(Protocol::Http1)
            } else if is(&["http2", "grpc", "grpc-web", "h2c", "kubernetes.io/h2c"]) {
                Some(Protocol::Http2)
            } else if is(&["tcp", "tls", "https", "mongo", "mysql", "redis"]) {
                Some(Protocol::Tcp)
            } else {
                None
            }
        };
        if let Some(p) = self.app_protocol.as_deref().and_then(from) {
            return p;
        }
        let name = self.name.as_deref().unwrap_or_default();
        let prefix = name.split('-').next().unwrap_or_default();
        from(prefix).unwrap_or(Protocol::Tcp)
    }
}

/// Where a service's endpoints come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointSource {
    /// Ready pods of the service's namespace with these labels: a Service's `selector`, or a
    /// ServiceEntry's `workloadSelector`.
    Selector(BTreeMap<String, String>),
    /// EndpointSlices labelled with the service's name: a Service without a selector.
    Slices,
    /// Listed in the object: a ServiceEntry's `endpoints`.
    Static(Vec<StaticEndpoint>),
    /// None: connections go on to the address the client dialed (a ServiceEntry resolved
    /// by the client, `resolution: NONE` or `DNS` without listed addresses).
    Passthrough,
}

/// A ServiceEntry endpoint (Istio's `WorkloadEntry`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticEndpoint {
    pub address: Ipv4Addr,
    /// Service port name -> the port this endpoint listens on.
    pub ports: BTreeMap<String, u16>,
    pub labels: BTreeMap<String, String>,
    pub service_account: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    /// A ServiceEntry's host; Kubernetes Services are `name.namespace.svc.<domain>`.
    pub host: Option<String>,
    pub vips: Vec<Ipv4Addr>,
    pub ports: Vec<ServicePort>,
    pub endpoints: EndpointSource,
    pub labels: BTreeMap<String, String>,
}

// === impl Service ===

impl Service {
    /// `name.namespace.svc.<domain>`, as Istio's `destination_service` label shows it.
    pub fn hostname(&self, cluster_domain: &str) -> String {
        self.write_hostname(cluster_domain).to_string()
    }

    /// The host name, written where it is displayed instead of into a new string (the
    /// waypoint writes it into each request's log line).
    pub fn write_hostname<'a>(&'a self, cluster_domain: &'a str) -> impl fmt::Display + 'a {
        HostName(self, cluster_domain)
    }

    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }

    pub fn try_from_k8s(object: &ObjectRef, svc: &K8sService) -> Result<Self, Rejection> {
        let spec = svc.spec.clone().unwrap_or_default();
        let mut raw_ips: Vec<String> = spec.cluster_ips.clone().unwrap_or_default();
        if raw_ips.is_empty() {
            raw_ips.extend(spec.cluster_ip.clone());
        }
        let mut vips = Vec::new();
        for (i, raw) in raw_ips.iter().enumerate() {
            if raw.is_empty() || raw == "None" {
                continue;
            }
            // IPv6 VIPs are valid Kubernetes but outside what the IPv4 data path carries.
            if raw.contains(':') {
                continue;
            }
            let ip = raw.parse::<Ipv4Addr>().map_err(|_| {
                Rejection::new(
                    object,
                    format!("spec.clusterIPs[{i}]"),
                    format!("{raw:?} is not an IP address"),
                )
            })?;
            vips.push(ip);
        }
        let mut ports = Vec::new();
        for (i, p) in spec.ports.iter().flatten().enumerate() {
            if p.protocol.as_deref().is_some_and(|proto| proto != "TCP") {
                continue;
            }
            let port = u16::try_from(p.port)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| {
                    Rejection::new(
                        object,
                        format!("spec.ports[{i}].port"),
                        format!("{} is not a port number", p.port),
                    )
                })?;
            let target_port = match &p.target_port {
                None => TargetPort::Number(port),
                Some(IntOrString::Int(n)) => TargetPort::Number(
                    u16::try_from(*n).ok().filter(|n| *n > 0).ok_or_else(|| {
                        Rejection::new(
                            object,
                            format!("spec.ports[{i}].targetPort"),
                            format!("{n} is not a port number"),
                        )
                    })?,
                ),
                Some(IntOrString::String(s)) if s.is_empty() => {
                    return Err(Rejection::new(
                        object,
                        format!("spec.ports[{i}].targetPort"),
                        "must not be empty",
                    ))
                }
                Some(IntOrString::String(s)) => TargetPort::Named(s.clone()),
            };
            ports.push(ServicePort {
                name: p.name.clone(),
                port,
                target_port,
                app_protocol: p.app_protocol.clone(),
            });
        }
        Ok(Service {
            name: svc.metadata.name.clone().unwrap_or_default(),
            namespace: object.namespace.clone().unwrap_or_default(),
            vips,
            ports,
            host: None,
            endpoints: match spec.selector.clone().filter(|s| !s.is_empty()) {
                Some(selector) => EndpointSource::Selector(selector),
                None => EndpointSource::Slices,
            },
            labels: svc.metadata.labels.clone().unwrap_or_default(),
        })
    }
}

struct HostName<'a>(&'a Service, &'a str);

impl fmt::Display for HostName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let HostName(s, domain) = self;
        match &s.host {
            Some(h) => f.write_str(h),
            None => write!(f, "{}.{}.svc.{domain}", s.name, s.namespace),
        }
    }
}
