//! The CA in a cluster, against the in-process API server: callers without a client
//! certificate present ServiceAccount tokens, which TokenReview checks; a node agent's token
//! is tied to its node through the pod it is bound to; the root lives in a Secret.

use std::sync::Arc;
use std::time::Duration;

use lanyard_ca::{cluster, server, token::TokenAuthenticator};
use lanyard_core::ca::{csr_for, Authority, CaClient, CertificateProvider, ClientTls, Credential};
use lanyard_core::identity::Identity;
use lanyard_core::state::{MeshState, Settings};
use lanyard_kube::testing::FakeApiServer;
use lanyard_kube::{KubeSource, Scope, SourceStatus};
use serde_json::{json, Value};
use tokio::sync::watch;

fn pod(ns: &str, name: &str, uid: &str, node: &str, sa: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": ns, "uid": uid},
           "spec": {"nodeName": node, "serviceAccountName": sa, "containers": [{"name": "c"}]},
           "status": {"podIP": ip, "phase": "Running"}})
}

fn agent_token_user(pod: &str, uid: &str) -> Value {
    json!({"username": "system:serviceaccount:lanyard-system:lanyard-agent",
           "extra": {"authentication.kubernetes.io/pod-name": [pod],
                     "authentication.kubernetes.io/pod-uid": [uid]}})
}

struct Cluster {
    api: FakeApiServer,
    authority: Arc<Authority>,
    addr: String,
    tokens: tempfile::TempDir,
    _state: watch::Sender<Arc<MeshState>>,
}

/// Two nodes: an agent pod and an app pod on n1, a db pod on n2, a waypoint on n1; the CA
/// reads them through the kube source, as it does in a cluster.
async fn cluster() -> Cluster {
    let api = FakeApiServer::start().await;
    api.apply(json!({"apiVersion": "v1", "kind": "Namespace",
                     "metadata": {"name": "demo", "labels": {"istio.io/dataplane-mode": "ambient"}}}));
    api.apply(pod(
        "lanyard-system",
        "agent-n1",
        "agent-uid-1",
        "n1",
        "lanyard-agent",
        "10.0.0.11",
    ));
    api.apply(pod("demo", "app", "u1", "n1", "app", "10.0.1.2"));
    api.apply(pod("demo", "db", "u2", "n2", "db", "10.0.2.2"));
    api.add_token(
        "agent-n1-token",
        agent_token_user("agent-n1", "agent-uid-1"),
    );
    api.add_token(
        "waypoint-token",
        json!({"username": "system:serviceaccount:demo:waypoint"}),
    );
    api.add_token("user-token", json!({"username": "jane@example.com"}));

    let authority = Arc::new(
        cluster::root_from_secret(
            api.client(),
            "lanyard-system",
            "lanyard-ca-root",
            "cluster.local",
        )
        .await
        .unwrap(),
    );
    let (state_tx, states) = watch::channel(Arc::new(MeshState::default()));
    let (status_tx, mut status) = watch::channel(SourceStatus::default());
    let source = KubeSource::new(api.client(), Arc::new(Settings::default()), Scope::Cluster);
    let publish = state_tx.clone();
    tokio::spawn(source.run(publish, status_tx));
    tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| s.synced))
        .await
        .expect("kube source synced")
        .unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("https://{}", listener.local_addr().unwrap());
    let tokens = TokenAuthenticator::new(
        api.client(),
        "istio-ca".into(),
        "cluster.local".into(),
        vec![("lanyard-system".into(), "lanyard-agent".into())],
    );
    let config = server::ServeConfig {
        server_name: "lanyard-ca".into(),
        max_ttl: Duration::from_secs(3600),
        default_ttl: Duration::from_secs(3600),
        tokens: Some(tokens),
    };
    let a = authority.clone();
    tokio::spawn(async move {
        server::serve(listener, config, a, states, std::future::pending())
            .await
            .unwrap();
    });
    Cluster {
        api,
        authority,
        addr,
        tokens: tempfile::tempdir().unwrap(),
        _state: state_tx,
    }
}

impl Cluster {
    fn client(&self, token: &str) -> CaClient {
        let path = self.tokens.path().join(token);
        std::fs::write(&path, format!("{token}\n")).unwrap();
        let tls = ClientTls {
            root_pem: self.authority.root_pem().into(),
            credential: Credential::Token(path),
            server_name: "lanyard-ca".into(),
        };
        CaClient::new(&self.addr, Some(tls)).unwrap()
    }
}

async fn ask(client: &CaClient, id: &str) -> Result<Vec<String>, String> {
    let id: Identity = id.parse().unwrap();
    let (csr, _) = csr_for(&id).unwrap();
    client
        .create_certificate(&id, csr, Duration::from_secs(600))
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn an_agent_token_gets_identities_of_pods_on_its_node_only() {
    let c = cluster().await;
    let agent = c.client("agent-n1-token");
    let chain = ask(&agent, "spiffe://cluster.local/ns/demo/sa/app")
        .await
        .unwrap();
    assert_eq!(chain.len(), 2, "leaf then root");
    let err = ask(&agent, "spiffe://cluster.local/ns/demo/sa/db")
        .await
        .unwrap_err();
    assert!(err.contains("node n1 runs no pod with identity"), "{err}");
}

#[tokio::test]
async fn forged_stale_and_foreign_tokens_are_refused() {
    let c = cluster().await;
    let app = "spiffe://cluster.local/ns/demo/sa/app";

    // A token the API server does not accept: forged, or expired.
    let err = ask(&c.client("forged-token"), app).await.unwrap_err();
    assert!(
        err.contains("Unauthenticated") && err.contains("invalid bearer token"),
        "{err}"
    );

    // A genuine token bound to an agent pod that was since replaced (same name, new uid).
    c.api
        .add_token("stale-token", agent_token_user("agent-n1", "old-uid"));
    let err = ask(&c.client("stale-token"), app).await.unwrap_err();
    assert!(err.contains("no longer exists with uid old-uid"), "{err}");

    // A user's token is no ServiceAccount's.
    let err = ask(&c.client("user-token"), app).await.unwrap_err();
    assert!(err.contains("not a ServiceAccount"), "{err}");

    // Neither certificate nor token.
    let tls = ClientTls {
        root_pem: c.authority.root_pem().into(),
        credential: Credential::Token(c.tokens.path().join("missing")),
        server_name: "lanyard-ca".into(),
    };
    let err = ask(&CaClient::new(&c.addr, Some(tls)).unwrap(), app)
        .await
        .unwrap_err();
    assert!(err.contains("reading token"), "{err}");
}

#[tokio::test]
async fn a_workload_token_renews_only_its_own_identity() {
    let c = cluster().await;
    let waypoint = c.client("waypoint-token");
    assert!(ask(&waypoint, "spiffe://cluster.local/ns/demo/sa/waypoint")
        .await
        .is_ok());
    let err = ask(&waypoint, "spiffe://cluster.local/ns/demo/sa/app")
        .await
        .unwrap_err();
    assert!(err.contains("may only renew its own identity"), "{err}");
}

#[tokio::test]
async fn the_root_is_created_once_in_a_secret_and_published_without_its_key() {
    let c = cluster().await;
    let secret = c
        .api
        .get("v1", "Secret", "lanyard-system", "lanyard-ca-root")
        .expect("root Secret created on first start");
    assert!(secret["data"]["root-key.pem"].is_string());

    // A second replica (or a restart) reads the same root.
    let again = cluster::root_from_secret(
        c.api.client(),
        "lanyard-system",
        "lanyard-ca-root",
        "cluster.local",
    )
    .await
    .unwrap();
    assert_eq!(again.root_pem(), c.authority.root_pem());

    cluster::publish_root(
        c.api.client(),
        "lanyard-system",
        "lanyard-ca-root",
        c.authority.root_pem(),
    )
    .await
    .unwrap();
    let map = c
        .api
        .get("v1", "ConfigMap", "lanyard-system", "lanyard-ca-root")
        .unwrap();
    assert_eq!(map["data"]["root-cert.pem"], c.authority.root_pem());
    assert!(map["data"].get("root-key.pem").is_none());

    // Every namespace, including one created later, gets the root to mount.
    let distribute = tokio::spawn(cluster::distribute_root(
        c.api.client(),
        "lanyard-ca-root".into(),
        c.authority.root_pem().into(),
    ));
    c.api
        .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "later"}}));
    for ns in ["demo", "later"] {
        let mut found = None;
        for _ in 0..100 {
            found = c.api.get("v1", "ConfigMap", ns, "lanyard-ca-root");
            if found.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let map = found.unwrap_or_else(|| panic!("no root ConfigMap in {ns}"));
        assert_eq!(map["data"]["root-cert.pem"], c.authority.root_pem());
    }
    distribute.abort();

    // A Secret the user provided is used as it is; a broken one names what is wrong.
    let user_root = Authority::generate("cluster.local").unwrap();
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    c.api.apply(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "provided", "namespace": "lanyard-system"},
        "data": {"root-cert.pem": b64(user_root.root_pem()), "root-key.pem": b64(user_root.key_pem())}}));
    let loaded = cluster::root_from_secret(
        c.api.client(),
        "lanyard-system",
        "provided",
        "cluster.local",
    )
    .await
    .unwrap();
    assert_eq!(loaded.root_pem(), user_root.root_pem());
    c.api.apply(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "broken", "namespace": "lanyard-system"},
        "data": {"root-cert.pem": b64(user_root.root_pem())}}));
    let err =
        cluster::root_from_secret(c.api.client(), "lanyard-system", "broken", "cluster.local")
            .await
            .err()
            .unwrap()
            .to_string();
    assert_eq!(err, "Secret lanyard-system/broken lacks data.root-key.pem");
}
