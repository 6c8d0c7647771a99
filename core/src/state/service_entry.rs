//! A ServiceEntry: services Kubernetes does not know (an external API, a VM, a database), or
//! extra names and addresses for pods. Each host becomes one `Service` of the mesh state, as
//! in Istio, so routes, DestinationRules and metrics treat it like any other.
//!
//! Validation follows Istio's (`ValidateServiceEntry`): the same objects are refused, with the
//! field named.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use super::service::{EndpointSource, Service, ServicePort, StaticEndpoint, TargetPort};
use crate::traffic::wire::ServiceEntrySpec;
use crate::traffic::Invalid;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEntry {
    pub namespace: String,
    pub name: String,
    /// One per host, in the order written.
    pub services: Vec<Arc<Service>>,
    /// Fields accepted but not acted on, for the analyzers.
    pub warnings: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resolution {
    None,
    Static,
    Dns,
}

// === impl ServiceEntry ===

impl ServiceEntry {
    pub fn validate(
        namespace: &str,
        name: &str,
        labels: &BTreeMap<String, String>,
        spec: &ServiceEntrySpec,
    ) -> Result<Self, Invalid> {
        let bad = |field: String, msg: String| Err((field, msg));
        let mut warnings = Vec::new();
        if spec.hosts.is_empty() {
            return bad("spec.hosts".into(), "at least one host is required".into());
        }
        let mut hosts = Vec::new();
        for (i, h) in spec.hosts.iter().enumerate() {
            let host = h.to_ascii_lowercase();
            if host == "*" || !valid_host(host.strip_prefix("*.").unwrap_or(&host)) {
                return bad(
                    format!("spec.hosts[{i}]"),
                    format!(
                        "{h:?} is not a host name (e.g. \"api.example.com\" or \"*.example.com\")"
                    ),
                );
            }
            hosts.push(host);
        }
        let resolution = match spec.resolution.as_deref().unwrap_or("NONE") {
            "NONE" => Resolution::None,
            "STATIC" => Resolution::Static,
            "DNS" | "DNS_ROUND_ROBIN" => Resolution::Dns,
            other => {
                return bad(
                    "spec.resolution".into(),
                    format!("{other:?} is not one of NONE, STATIC, DNS, DNS_ROUND_ROBIN"),
                )
            }
        };
        if let Some(l) = spec.location.as_deref() {
            if !matches!(l, "MESH_EXTERNAL" | "MESH_INTERNAL") {
                return bad(
                    "spec.location".into(),
                    format!("{l:?} is not one of MESH_EXTERNAL, MESH_INTERNAL"),
                );
            }
        }
        if spec
            .export_to
            .as_ref()
            .is_some_and(|e| e.iter().any(|x| x != "*"))
        {
            warnings.push("spec.exportTo: ignored; the entry is visible to the whole mesh".into());
        }
        let mut vips = Vec::new();
        for (i, raw) in spec.addresses.iter().enumerate() {
            let (ip, prefix) = match raw.split_once('/') {
                Some((ip, p)) => (ip, p.parse::<u8>().ok()),
                None => (raw.as_str(), Some(32)),
            };
            if ip.contains(':') {
                continue; // IPv6: valid, outside what the IPv4 data path carries.
            }
            let (Ok(ip), Some(prefix @ 0..=32)) = (ip.parse::<Ipv4Addr>(), prefix) else {
                return bad(
                    format!("spec.addresses[{i}]"),
                    format!("{raw:?} is not an IP address or CIDR range"),
                );
            };
            // A range needs no entry: destinations outside the mesh already pass through.
            if prefix == 32 {
                vips.push(ip);
            }
        }
        let mut ports = Vec::new();
        let mut names = BTreeSet::new();
        for (i, p) in spec.ports.iter().enumerate() {
            let field = |f: &str| format!("spec.ports[{i}].{f}");
            let port = port_number(p.number).ok_or_else(|| {
                (
                    field("number"),
                    format!("{} is not a port number", p.number),
                )
            })?;
            if ports.iter().any(|q: &ServicePort| q.port == port) {
                return bad(field("number"), format!("port {port} is listed twice"));
            }
            if !p.name.is_empty() && !names.insert(p.name.clone()) {
                return bad(
                    field("name"),
                    format!("port name {:?} is used twice", p.name),
                );
            }
            let target_port =
                match p.target_port {
                    None => TargetPort::Number(port),
                    Some(t) => TargetPort::Number(port_number(t).ok_or_else(|| {
                        (field("targetPort"), format!("{t} is not a port number"))
                    })?),
                };
            ports.push(ServicePort {
                name: Some(p.name.clone()).filter(|n| !n.is_empty()),
                port,
                target_port,
                // Istio's protocol names (HTTP, HTTP2, GRPC, TCP, TLS…) read as appProtocol.
                app_protocol: p.protocol.clone(),
            });
        }
        if spec.workload_selector.is_some() && !spec.endpoints.is_empty() {
            return bad(
                "spec.workloadSelector".into(),
                "only one of workloadSelector and endpoints may be set".into(),
            );
        }
        if resolution == Resolution::None && !spec.endpoints.is_empty() {
            return bad(
                "spec.endpoints".into(),
                "no endpoints may be listed with resolution NONE".into(),
            );
        }
        let mut statics = Vec::new();
        for (i, e) in spec.endpoints.iter().enumerate() {
            let field = |f: &str| format!("spec.endpoints[{i}].{f}");
            let Some(raw) = e.address.as_deref().filter(|a| !a.is_empty()) else {
                return bad(field("address"), "is required".into());
            };
            for (port_name, n) in &e.ports {
                if !names.contains(port_name) {
                    return bad(
                        field(&format!("ports.{port_name}")),
                        format!("{port_name:?} names no port of spec.ports"),
                    );
                }
                if port_number(*n).is_none() {
                    return bad(
                        field(&format!("ports.{port_name}")),
                        format!("{n} is not a port number"),
                    );
                }
            }
            let address = match raw.parse::<Ipv4Addr>() {
                Ok(ip) => ip,
                Err(_) if resolution == Resolution::Dns && valid_host(raw) => {
                    warnings.push(format!(
                        "spec.endpoints[{i}].address: host name {raw:?} is not resolved by \
                         Lanyard; clients that resolve it themselves pass through"
                    ));
                    continue;
                }
                Err(_) => {
                    return bad(
                        field("address"),
                        format!("{raw:?} is not an IPv4 address (resolution is STATIC)"),
                    )
                }
            };
            statics.push(StaticEndpoint {
                address,
                ports: e
                    .ports
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), port_number(*v)?)))
                    .collect(),
                labels: e.labels.clone(),
                service_account: e.service_account.clone(),
            });
        }
        if resolution == Resolution::Static
            && statics.is_empty()
            && spec.workload_selector.is_none()
        {
            return bad(
                "spec.endpoints".into(),
                "resolution STATIC needs endpoints or a workloadSelector".into(),
            );
        }
        let endpoints = match (&spec.workload_selector, resolution) {
            (Some(sel), _) => EndpointSource::Selector(sel.labels.clone()),
            (None, Resolution::None) => EndpointSource::Passthrough,
            (None, _) if !statics.is_empty() => EndpointSource::Static(statics),
            // DNS over the hosts themselves: the client resolved the name and dials the
            // answer, which passes through; a VIP of this entry has nothing behind it.
            (None, _) => {
                if !vips.is_empty() {
                    warnings.push(
                        "spec.addresses: DNS resolution is done by clients, not Lanyard: \
                         connections to these addresses fail"
                            .into(),
                    );
                }
                EndpointSource::Passthrough
            }
        };
        let services = hosts
            .into_iter()
            .map(|host| {
                Arc::new(Service {
                    name: host.clone(),
                    namespace: namespace.to_string(),
                    host: Some(host),
                    vips: vips.clone(),
                    ports: ports.clone(),
                    endpoints: endpoints.clone(),
                    labels: labels.clone(),
                })
            })
            .collect();
        Ok(ServiceEntry {
            namespace: namespace.to_string(),
            name: name.to_string(),
            services,
            warnings,
        })
    }
}

fn port_number(n: u32) -> Option<u16> {
    u16::try_from(n).ok().filter(|n| *n > 0)
}

/// A DNS name: labels of letters, digits and dashes (RFC 1123), at most 253 characters.
fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}
