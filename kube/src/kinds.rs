//! The kinds Lanyard watches, as the API server serves them.

use kube::discovery::ApiResource;

/// One watched kind. Istio's CRDs serve every version from the same storage, so watching the
/// newest one sees objects written in any of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    /// Istio config (as opposed to workloads and services): a waypoint may watch it in its
    /// own and the root namespace only.
    pub istio: bool,
}

pub const NAMESPACE: Kind = core_kind("Namespace", "namespaces");
pub const POD: Kind = core_kind("Pod", "pods");
pub const SERVICE: Kind = core_kind("Service", "services");
pub const ENDPOINT_SLICE: Kind = Kind {
    group: "discovery.k8s.io",
    version: "v1",
    kind: "EndpointSlice",
    plural: "endpointslices",
    istio: false,
};
/// Istio config, but it names services like Services do: a route may lead to any of them,
/// so it is watched everywhere.
pub const SERVICE_ENTRY: Kind = Kind {
    istio: false,
    ..istio("networking.istio.io", "ServiceEntry", "serviceentries")
};

const fn core_kind(kind: &'static str, plural: &'static str) -> Kind {
    Kind {
        group: "",
        version: "v1",
        kind,
        plural,
        istio: false,
    }
}

const fn istio(group: &'static str, kind: &'static str, plural: &'static str) -> Kind {
    Kind {
        group,
        version: "v1",
        kind,
        plural,
        istio: true,
    }
}

/// Everything the mesh state is built from.
pub const ALL: &[Kind] = &[
    NAMESPACE,
    POD,
    SERVICE,
    ENDPOINT_SLICE,
    SERVICE_ENTRY,
    istio(
        "security.istio.io",
        "AuthorizationPolicy",
        "authorizationpolicies",
    ),
    istio(
        "security.istio.io",
        "PeerAuthentication",
        "peerauthentications",
    ),
    istio(
        "security.istio.io",
        "RequestAuthentication",
        "requestauthentications",
    ),
    istio("networking.istio.io", "VirtualService", "virtualservices"),
    istio("networking.istio.io", "DestinationRule", "destinationrules"),
];

// === impl Kind ===

impl Kind {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn api_resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.into(),
            version: self.version.into(),
            api_version: self.api_version(),
            kind: self.kind.into(),
            plural: self.plural.into(),
        }
    }

    pub fn namespaced(&self) -> bool {
        self.kind != "Namespace"
    }
}
