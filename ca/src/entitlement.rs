//! Who may obtain which identity. A node agent may obtain the identity of any pod scheduled
//! on its node (istiod's node authorization for ztunnel); a workload may renew its own.

use lanyard_core::identity::Identity;
use lanyard_core::state::MeshState;

/// The authenticated caller, from its client certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A node agent: URI SAN `spiffe://<trust-domain>/lanyard/node/<node>`.
    Node {
        trust_domain: String,
        node: String,
    },
    Workload(Identity),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Denied {
    #[error("client certificate names no node agent or workload identity")]
    UnknownCaller,
    #[error("caller is in trust domain {got}, this CA serves {want}")]
    WrongTrustDomain { got: String, want: String },
    #[error("node {node} runs no pod with identity {requested}")]
    NotOnNode { node: String, requested: Identity },
    #[error("workload {caller} may only renew its own identity, not {requested}")]
    NotSelf {
        caller: Identity,
        requested: Identity,
    },
}

/// The URI SAN a node agent's bootstrap certificate carries.
pub fn node_uri(trust_domain: &str, node: &str) -> String {
    format!("spiffe://{trust_domain}/lanyard/node/{node}")
}

impl Caller {
    pub fn from_uris<'a>(uris: impl IntoIterator<Item = &'a str>) -> Result<Self, Denied> {
        for uri in uris {
            if let Ok(id) = uri.parse::<Identity>() {
                return Ok(Caller::Workload(id));
            }
            let node = uri
                .strip_prefix("spiffe://")
                .and_then(|rest| rest.split_once("/lanyard/node/"))
                .filter(|(td, node)| !td.is_empty() && !node.is_empty() && !node.contains('/'));
            if let Some((td, node)) = node {
                return Ok(Caller::Node {
                    trust_domain: td.to_string(),
                    node: node.to_string(),
                });
            }
        }
        Err(Denied::UnknownCaller)
    }
}

pub fn authorize(state: &MeshState, caller: &Caller, requested: &Identity) -> Result<(), Denied> {
    let want = state.trust_domain();
    let check_td = |got: &str| {
        if got == want {
            Ok(())
        } else {
            Err(Denied::WrongTrustDomain {
                got: got.to_string(),
                want: want.to_string(),
            })
        }
    };
    check_td(requested.trust_domain())?;
    match caller {
        Caller::Node { trust_domain, node } => {
            check_td(trust_domain)?;
            let entitled = state
                .workloads_on_node(node)
                .any(|w| &w.identity(want) == requested);
            if entitled {
                Ok(())
            } else {
                Err(Denied::NotOnNode {
                    node: node.clone(),
                    requested: requested.clone(),
                })
            }
        }
        Caller::Workload(id) if id == requested => Ok(()),
        Caller::Workload(id) => Err(Denied::NotSelf {
            caller: id.clone(),
            requested: requested.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_core::config::{parse_documents, Store};
    use lanyard_core::state::Settings;

    fn state() -> MeshState {
        let yaml = r#"
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: demo, uid: u1}
spec: {nodeName: n1, serviceAccountName: app, containers: [{name: c}]}
status: {podIP: 10.0.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: demo, uid: u2}
spec: {nodeName: n2, serviceAccountName: db, containers: [{name: c}]}
status: {podIP: 10.0.2.2}
"#;
        MeshState::build(
            Store::default().update(parse_documents(yaml).unwrap()),
            &Settings::default(),
        )
    }

    fn id(s: &str) -> Identity {
        s.parse().unwrap()
    }

    #[test]
    fn node_gets_only_its_pods_identities() {
        let s = state();
        let n1 = Caller::from_uris(["spiffe://cluster.local/lanyard/node/n1"]).unwrap();
        assert_eq!(
            authorize(&s, &n1, &id("spiffe://cluster.local/ns/demo/sa/app")),
            Ok(())
        );
        assert!(matches!(
            authorize(&s, &n1, &id("spiffe://cluster.local/ns/demo/sa/db")),
            Err(Denied::NotOnNode { .. })
        ));
        let other_td = Caller::from_uris(["spiffe://evil.local/lanyard/node/n1"]).unwrap();
        assert!(matches!(
            authorize(&s, &other_td, &id("spiffe://cluster.local/ns/demo/sa/app")),
            Err(Denied::WrongTrustDomain { .. })
        ));
    }

    #[test]
    fn workload_renews_only_itself() {
        let s = state();
        let w = Caller::from_uris(["spiffe://cluster.local/ns/demo/sa/app"]).unwrap();
        assert_eq!(
            authorize(&s, &w, &id("spiffe://cluster.local/ns/demo/sa/app")),
            Ok(())
        );
        assert!(authorize(&s, &w, &id("spiffe://cluster.local/ns/demo/sa/db")).is_err());
        assert_eq!(
            Caller::from_uris(["https://example.com"]),
            Err(Denied::UnknownCaller)
        );
        assert_eq!(
            Caller::from_uris(["spiffe://td/lanyard/node/"]),
            Err(Denied::UnknownCaller)
        );
    }
}
