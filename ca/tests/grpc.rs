//! The CA over real gRPC and mTLS, in-process: node-scoped issuance and caller authentication.

use std::sync::Arc;
use std::time::Duration;

use lanyard_ca::{entitlement, server};
use lanyard_core::ca::{csr_for, Authority, CaClient, CertificateProvider, ClientTls, Credential};
use lanyard_core::config::{parse_documents, Store};
use lanyard_core::identity::Identity;
use lanyard_core::state::{MeshState, Settings};
use tokio::sync::watch;

const PODS: &str = r#"
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

async fn start_ca() -> (Arc<Authority>, String) {
    let authority = Arc::new(Authority::generate("cluster.local").unwrap());
    let state = MeshState::build(
        Store::default().update(parse_documents(PODS).unwrap()),
        &Settings::default(),
    );
    let (_tx, rx) = watch::channel(Arc::new(state));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = server::ServeConfig {
        server_name: "lanyard-ca".into(),
        max_ttl: Duration::from_secs(3600),
        default_ttl: Duration::from_secs(3600),
        tokens: None,
    };
    let a = authority.clone();
    tokio::spawn(async move {
        let _tx = _tx; // keep the state sender alive for the server's lifetime
        server::serve(listener, config, a, rx, std::future::pending())
            .await
            .unwrap();
    });
    (authority, format!("https://{addr}"))
}

fn client(authority: &Authority, addr: &str, uri: &str) -> CaClient {
    let (cert_pem, key_pem) = authority
        .issue(&[uri.to_string()], &[], Duration::from_secs(3600))
        .unwrap();
    let tls = ClientTls {
        root_pem: authority.root_pem().to_string(),
        credential: Credential::Certificate { cert_pem, key_pem },
        server_name: "lanyard-ca".into(),
    };
    CaClient::new(addr, Some(tls)).unwrap()
}

async fn ask(client: &CaClient, id: &str) -> Result<Vec<String>, lanyard_core::ca::Error> {
    let id: Identity = id.parse().unwrap();
    let (csr, _) = csr_for(&id).unwrap();
    client
        .create_certificate(&id, csr, Duration::from_secs(600))
        .await
}

#[tokio::test]
async fn node_agent_gets_only_identities_of_its_pods() {
    let (authority, addr) = start_ca().await;
    let n1 = client(
        &authority,
        &addr,
        &entitlement::node_uri("cluster.local", "n1"),
    );
    let chain = ask(&n1, "spiffe://cluster.local/ns/demo/sa/app")
        .await
        .unwrap();
    assert_eq!(chain.len(), 2, "leaf then root");
    let err = ask(&n1, "spiffe://cluster.local/ns/demo/sa/db")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("node n1 runs no pod with identity"), "{err}");
}

#[tokio::test]
async fn unknown_or_untrusted_callers_are_refused() {
    let (authority, addr) = start_ca().await;
    let stranger = client(&authority, &addr, "https://not-a-spiffe-id.example");
    let err = ask(&stranger, "spiffe://cluster.local/ns/demo/sa/app")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("names no node agent"), "{err}");

    // A certificate from another root does not get through the TLS handshake.
    let rogue = Authority::generate("cluster.local").unwrap();
    let (cert_pem, key_pem) = rogue
        .issue(
            &[entitlement::node_uri("cluster.local", "n1")],
            &[],
            Duration::from_secs(3600),
        )
        .unwrap();
    let tls = ClientTls {
        root_pem: authority.root_pem().into(),
        credential: Credential::Certificate { cert_pem, key_pem },
        server_name: "lanyard-ca".into(),
    };
    let forged = CaClient::new(&addr, Some(tls)).unwrap();
    assert!(ask(&forged, "spiffe://cluster.local/ns/demo/sa/app")
        .await
        .is_err());
}
