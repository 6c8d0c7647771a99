//! An EndpointSlice: the endpoints of a Service that has no selector (a database outside the
//! cluster, pods of another system), as Kubernetes users publish them by hand or by controller.

use std::net::Ipv4Addr;

use crate::config::k8s::EndpointSlice as K8sSlice;
use crate::config::{ObjectRef, Rejection};

/// The label that ties a slice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSlice {
    pub namespace: String,
    /// The Service it belongs to; None: the label is missing, so it serves nothing.
    pub service: Option<String>,
    /// Port name (empty for an unnamed port) -> number.
    pub ports: Vec<(String, u16)>,
    pub endpoints: Vec<SliceEndpoint>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub address: Ipv4Addr,
    pub ready: bool,
    /// The pod (or other object) behind the address, for names in metrics and logs.
    pub target: Option<String>,
}

// === impl EndpointSlice ===

impl EndpointSlice {
    pub fn try_from_k8s(object: &ObjectRef, slice: &K8sSlice) -> Result<Self, Rejection> {
        let namespace = object.namespace.clone().unwrap_or_default();
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .cloned();
        // IPv6 and FQDN slices are valid Kubernetes the IPv4 data path does not carry.
        if slice.address_type != "IPv4" {
            return Ok(EndpointSlice {
                namespace,
                service,
                ports: Vec::new(),
                endpoints: Vec::new(),
            });
        }
        let mut ports = Vec::new();
        for (i, p) in slice.ports.iter().flatten().enumerate() {
            if p.protocol.as_deref().is_some_and(|proto| proto != "TCP") {
                continue;
            }
            // A port without a number means "all ports" to Kubernetes; nothing to map here.
            let Some(raw) = p.port else { continue };
            let port = u16::try_from(raw).ok().filter(|p| *p > 0).ok_or_else(|| {
                Rejection::new(
                    object,
                    format!("ports[{i}].port"),
                    format!("{raw} is not a port number"),
                )
            })?;
            ports.push((p.name.clone().unwrap_or_default(), port));
        }
        let mut endpoints = Vec::new();
        for (i, e) in slice.endpoints.iter().enumerate() {
            for (j, raw) in e.addresses.iter().enumerate() {
                let address = raw.parse::<Ipv4Addr>().map_err(|_| {
                    Rejection::new(
                        object,
                        format!("endpoints[{i}].addresses[{j}]"),
                        format!("{raw:?} is not an IPv4 address (addressType is IPv4)"),
                    )
                })?;
                endpoints.push(SliceEndpoint {
                    address,
                    // Kubernetes: an unknown readiness is to be read as ready.
                    ready: e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
                    target: e.target_ref.as_ref().and_then(|t| t.name.clone()),
                });
            }
        }
        Ok(EndpointSlice {
            namespace,
            service,
            ports,
            endpoints,
        })
    }

    /// The port of this slice serving the Service port named `name` (Kubernetes matches by
    /// name; a single unnamed port is named "").
    pub fn port(&self, name: &str) -> Option<u16> {
        self.ports.iter().find(|(n, _)| n == name).map(|(_, p)| *p)
    }
}
