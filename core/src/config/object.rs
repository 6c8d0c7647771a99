//! Kubernetes-style objects as they arrive from a config source, and why one was rejected.

use std::collections::BTreeMap;
use std::fmt;

use super::k8s::{EndpointSlice, Namespace, Pod, Service};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::policy::authn::RequestAuthenticationSpec;
use crate::policy::wire::{AuthorizationPolicySpec, PeerAuthenticationSpec};
use crate::traffic::wire::{DestinationRuleSpec, ServiceEntrySpec, VirtualServiceSpec};

/// Names one object the way an operator would: `Pod default/todoui-1`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {}/{}", self.kind, ns, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// An object left out of the mesh state, with the field at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {field}: {message}")]
pub struct Rejection {
    pub object: ObjectRef,
    pub field: String,
    pub message: String,
}

impl Rejection {
    pub fn new(object: &ObjectRef, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            object: object.clone(),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The kinds Lanyard reads. Unknown kinds are skipped, not rejected: a user's file may hold
/// Deployments and the like next to what we need.
#[derive(Debug)]
pub enum Object {
    Namespace(Box<Namespace>),
    Pod(Box<Pod>),
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    ServiceEntry(Box<IstioObject<ServiceEntrySpec>>),
    AuthorizationPolicy(Box<IstioObject<AuthorizationPolicySpec>>),
    PeerAuthentication(Box<IstioObject<PeerAuthenticationSpec>>),
    RequestAuthentication(Box<IstioObject<RequestAuthenticationSpec>>),
    VirtualService(Box<IstioObject<VirtualServiceSpec>>),
    DestinationRule(Box<IstioObject<DestinationRuleSpec>>),
}

/// An Istio custom resource: what we read of its metadata, and its spec.
#[derive(Debug, Deserialize)]
pub struct IstioObject<S> {
    #[serde(default)]
    pub metadata: IstioMeta,
    #[serde(default)]
    pub spec: S,
}

#[derive(Debug, Default, Deserialize)]
pub struct IstioMeta {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// The outcome of reading one document.
#[derive(Debug)]
pub enum Parsed {
    Object(ObjectRef, Object),
    Rejected(Rejection),
    Ignored,
}

/// Reads one document (already a JSON value) into a typed object.
pub fn parse(value: serde_json::Value) -> Parsed {
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or_default()
        .to_string();
    let api_version = value
        .get("apiVersion")
        .and_then(|k| k.as_str())
        .unwrap_or_default();
    let meta = value.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or_default()
        .to_string();
    let namespaced = kind != "Namespace";
    let namespace = namespaced.then(|| {
        meta.and_then(|m| m.get("namespace"))
            .and_then(|n| n.as_str())
            .unwrap_or("default")
            .to_string()
    });
    let object = ObjectRef {
        kind: kind.clone(),
        namespace,
        name,
    };
    let security = matches!(
        api_version,
        "security.istio.io/v1" | "security.istio.io/v1beta1"
    );
    let networking = matches!(
        api_version,
        "networking.istio.io/v1" | "networking.istio.io/v1beta1" | "networking.istio.io/v1alpha3"
    );
    let known = matches!(
        (api_version, kind.as_str()),
        ("v1", "Namespace" | "Pod" | "Service")
    ) || (api_version == "discovery.k8s.io/v1" && kind == "EndpointSlice")
        || (security
            && matches!(
                kind.as_str(),
                "AuthorizationPolicy" | "PeerAuthentication" | "RequestAuthentication"
            ))
        || (networking
            && matches!(
                kind.as_str(),
                "VirtualService" | "DestinationRule" | "ServiceEntry"
            ));
    if !known {
        return Parsed::Ignored;
    }
    if object.name.is_empty() {
        return Parsed::Rejected(Rejection::new(&object, "metadata.name", "is required"));
    }
    let typed = match kind.as_str() {
        "Namespace" => decode(&object, value).map(|o| Object::Namespace(Box::new(o))),
        "Pod" => decode(&object, value).map(|o| Object::Pod(Box::new(o))),
        "Service" => decode(&object, value).map(|o| Object::Service(Box::new(o))),
        "EndpointSlice" => decode(&object, value).map(|o| Object::EndpointSlice(Box::new(o))),
        "ServiceEntry" => decode(&object, value).map(|o| Object::ServiceEntry(Box::new(o))),
        "AuthorizationPolicy" => {
            decode(&object, value).map(|o| Object::AuthorizationPolicy(Box::new(o)))
        }
        "PeerAuthentication" => {
            decode(&object, value).map(|o| Object::PeerAuthentication(Box::new(o)))
        }
        "RequestAuthentication" => {
            decode(&object, value).map(|o| Object::RequestAuthentication(Box::new(o)))
        }
        "VirtualService" => decode(&object, value).map(|o| Object::VirtualService(Box::new(o))),
        "DestinationRule" => decode(&object, value).map(|o| Object::DestinationRule(Box::new(o))),
        _ => unreachable!("checked by `known` above"),
    };
    match typed {
        Ok(o) => Parsed::Object(object, o),
        Err(r) => Parsed::Rejected(r),
    }
}

fn decode<T: DeserializeOwned>(
    object: &ObjectRef,
    value: serde_json::Value,
) -> Result<T, Rejection> {
    // The plain decoder is fast; the path-tracking one only runs to explain a failure.
    match T::deserialize(&value) {
        Ok(t) => Ok(t),
        Err(_) => match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(t) => Ok(t),
            Err(e) => {
                let path = e.path().to_string();
                Err(Rejection::new(object, path, e.into_inner().to_string()))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_the_field_of_a_type_error() {
        let v = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "a"},
                       "spec": {"containers": [{"name": "c", "ports": [{"containerPort": "eighty"}]}]}});
        match parse(v) {
            Parsed::Rejected(r) => {
                assert_eq!(r.object.to_string(), "Pod a/p");
                assert_eq!(r.field, "spec.containers[0].ports[0].containerPort");
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn skips_unknown_kinds_and_requires_names() {
        assert!(matches!(
            parse(json!({"apiVersion": "apps/v1", "kind": "Deployment"})),
            Parsed::Ignored
        ));
        match parse(json!({"apiVersion": "v1", "kind": "Service", "metadata": {}})) {
            Parsed::Rejected(r) => assert_eq!(r.field, "metadata.name"),
            other => panic!("expected a rejection, got {other:?}"),
        }
    }
}
