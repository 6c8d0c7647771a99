//! The CA's root in a cluster: kept in a Secret (created on first start, or provided by the
//! user), and published through a ConfigMap holding only the certificate in every namespace
//! (as istiod does with `istio-ca-root-cert`), so agents and waypoints anywhere can mount it.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use lanyard_core::ca::Authority;
use tracing::{info, warn};

use crate::root::{ROOT_CERT, ROOT_KEY};

const FIELD_MANAGER: &str = "lanyard-ca";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("Secret {namespace}/{name} lacks data.{key}")]
    MissingKey {
        namespace: String,
        name: String,
        key: &'static str,
    },
    #[error("Secret {namespace}/{name}: {source}")]
    BadRoot {
        namespace: String,
        name: String,
        source: lanyard_core::ca::Error,
    },
    #[error("Secret {namespace}/{name} was created and deleted while this CA started; retry")]
    Raced { namespace: String, name: String },
    #[error(transparent)]
    Ca(#[from] lanyard_core::ca::Error),
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
}

/// Loads the root from `namespace/name`, or generates one and stores it there. When two
/// replicas start together, the one whose create loses reads the winner's root.
pub async fn root_from_secret(
    client: kube::Client,
    namespace: &str,
    name: &str,
    trust_domain: &str,
) -> Result<Authority, ClusterError> {
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    if let Some(secret) = secrets.get_opt(name).await? {
        return authority_of(&secret, namespace, name);
    }
    let authority = Authority::generate(trust_domain)?;
    let data = BTreeMap::from([
        (ROOT_CERT.to_string(), bytes(authority.root_pem())),
        (ROOT_KEY.to_string(), bytes(authority.key_pem())),
    ]);
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            ..Default::default()
        },
        data: Some(data),
        type_: Some("Opaque".into()),
        ..Default::default()
    };
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            info!(target: "ca", secret = %format!("{namespace}/{name}"), "generated a new mesh root");
            Ok(authority)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => match secrets.get_opt(name).await? {
            Some(secret) => authority_of(&secret, namespace, name),
            None => Err(ClusterError::Raced {
                namespace: namespace.into(),
                name: name.into(),
            }),
        },
        Err(e) => Err(e.into()),
    }
}

/// Writes the root certificate (never the key) to ConfigMap `namespace/name`, which agents
/// and waypoints mount to check the CA and their peers.
pub async fn publish_root(
    client: kube::Client,
    namespace: &str,
    name: &str,
    root_pem: &str,
) -> Result<(), ClusterError> {
    let maps: Api<ConfigMap> = Api::namespaced(client, namespace);
    let map = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(ROOT_CERT.into(), root_pem.into())])),
        ..Default::default()
    };
    let params = PatchParams::apply(FIELD_MANAGER).force();
    maps.patch(name, &params, &Patch::Apply(&map)).await?;
    Ok(())
}

/// Keeps ConfigMap `name` with the root certificate in every namespace, new ones included.
/// Runs until the watch ends; failures are logged and retried with the watcher's backoff.
pub async fn distribute_root(client: kube::Client, name: String, root_pem: String) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let stream = watcher(namespaces, watcher::Config::default())
        .default_backoff()
        .applied_objects();
    futures::pin_mut!(stream);
    loop {
        match stream.try_next().await {
            Ok(Some(ns)) => {
                let Some(ns) = ns.metadata.name else { continue };
                if let Err(e) = publish_root(client.clone(), &ns, &name, &root_pem).await {
                    warn!(target: "ca", namespace = %ns, "publishing the mesh root: {e}");
                }
            }
            Ok(None) => return,
            Err(e) => warn!(target: "ca", "watching namespaces: {e}"),
        }
    }
}

fn bytes(s: &str) -> ByteString {
    ByteString(s.as_bytes().to_vec())
}

fn authority_of(secret: &Secret, namespace: &str, name: &str) -> Result<Authority, ClusterError> {
    let data = secret.data.clone().unwrap_or_default();
    let field = |key: &'static str| {
        data.get(key)
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .ok_or_else(|| ClusterError::MissingKey {
                namespace: namespace.into(),
                name: name.into(),
                key,
            })
    };
    Authority::from_pem(&field(ROOT_CERT)?, &field(ROOT_KEY)?).map_err(|source| {
        ClusterError::BadRoot {
            namespace: namespace.into(),
            name: name.into(),
            source,
        }
    })
}
