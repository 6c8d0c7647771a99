//! The Kubernetes config source against an in-process API server speaking real list/watch
//! JSON: after every change the mesh state must be exactly the one the file source builds from
//! the same objects.

use std::sync::Arc;
use std::time::Duration;

use lanyard_core::config::{parse_documents, Store};
use lanyard_core::state::{MeshState, Settings};
use lanyard_kube::source::Scope;
use lanyard_kube::testing::FakeApiServer;
use lanyard_kube::{KubeSource, SourceStatus};
use serde_json::Value;
use tokio::sync::watch;

const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: v1
kind: Pod
metadata: {name: backend-1, namespace: demo, uid: b1, labels: {app: backend, version: v1}}
spec: {nodeName: n1, serviceAccountName: backend, containers: [{name: c, image: backend, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.1.1.2, phase: Running, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: demo, uid: c1, labels: {app: client}}
spec: {nodeName: n2, serviceAccountName: client, containers: [{name: c}]}
status: {podIP: 10.1.2.3, phase: Running}
---
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: demo}
spec: {clusterIP: 10.96.0.10, selector: {app: backend}, ports: [{name: http, port: 80, targetPort: http}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: demo}
spec: {clusterIP: 10.96.0.20, ports: [{name: sql, port: 5432}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-x1, namespace: demo, labels: {kubernetes.io/service-name: db}, managedFields: [{manager: m}]}
addressType: IPv4
ports: [{name: sql, port: 15432, protocol: TCP}]
endpoints:
- {addresses: [10.1.1.2], conditions: {ready: true, serving: true}, nodeName: n1, targetRef: {kind: Pod, name: backend-1, uid: b1}}
- {addresses: [192.0.2.7], zone: z1}
- {addresses: [192.0.2.8], conditions: {ready: false}}
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: payments, namespace: demo}
spec:
  hosts: [api.payments.example]
  addresses: [240.0.0.1]
  resolution: STATIC
  ports: [{number: 443, name: https, protocol: TLS}]
  endpoints: [{address: 198.51.100.1, labels: {version: v1}}]
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: backend, namespace: demo}
spec:
  selector: {matchLabels: {app: backend}}
  rules: [{from: [{source: {principals: [cluster.local/ns/demo/sa/client]}}]}]
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: backend, namespace: demo}
spec: {host: backend, subsets: [{name: v1, labels: {version: v1}}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend, namespace: demo}
spec:
  hosts: [backend]
  http: [{route: [{destination: {host: backend, subset: v1}}]}]
"#;

fn docs(yaml: &str) -> Vec<Value> {
    parse_documents(yaml).unwrap()
}

fn file_state(objects: &[Value]) -> MeshState {
    let settings = Settings::default();
    let snapshot = Store::new(&settings.cluster_domain).update(objects.iter().cloned());
    MeshState::build(snapshot, &settings)
}

fn assert_same(kube: &MeshState, objects: &[Value]) {
    let file = file_state(objects);
    assert_eq!(kube.dump(), file.dump());
    assert_eq!(kube.findings(), file.findings());
}

struct Running {
    states: watch::Receiver<Arc<MeshState>>,
    status: watch::Receiver<SourceStatus>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn start(api: &FakeApiServer) -> Running {
    let (tx, states) = watch::channel(Arc::new(MeshState::default()));
    let (status_tx, status) = watch::channel(SourceStatus::default());
    let source = KubeSource::new(api.client(), Arc::new(Settings::default()), Scope::Cluster);
    let task = tokio::spawn(source.run(tx, status_tx));
    Running {
        states,
        status,
        task,
    }
}

/// Waits (at most 15 s) for a value of `rx` that `done` accepts.
async fn wait_for<T: Clone>(
    rx: &mut watch::Receiver<T>,
    what: &str,
    done: impl Fn(&T) -> bool,
) -> T {
    let wait = async {
        loop {
            let v = rx.borrow_and_update().clone();
            if done(&v) {
                return v;
            }
            rx.changed().await.expect("source running");
        }
    };
    tokio::time::timeout(Duration::from_secs(15), wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

async fn state_where(
    r: &mut Running,
    what: &str,
    done: impl Fn(&MeshState) -> bool,
) -> Arc<MeshState> {
    wait_for(&mut r.states, what, |s: &Arc<MeshState>| done(s)).await
}

async fn status_where(
    r: &mut Running,
    what: &str,
    done: impl Fn(&SourceStatus) -> bool,
) -> SourceStatus {
    wait_for(&mut r.status, what, done).await
}

/// An API server holding `MESH`, and those objects.
async fn serving_mesh() -> (FakeApiServer, Vec<Value>) {
    let api = FakeApiServer::start().await;
    let objects = docs(MESH);
    for o in &objects {
        api.apply(o.clone());
    }
    (api, objects)
}

/// A source on `api`, once it has published the initial state.
async fn synced(api: &FakeApiServer) -> (Running, Arc<MeshState>) {
    let mut r = start(api);
    let s = state_where(&mut r, "the initial state", |s| s.workload_count() == 2).await;
    (r, s)
}

fn of_kind(objects: &[Value], kind: &str) -> Value {
    let found = objects.iter().find(|o| o["kind"] == kind);
    found.expect("MESH holds one of each kind").clone()
}

fn has_pod(s: &MeshState, name: &str) -> bool {
    s.workloads().any(|w| w.name == name)
}

fn pod(name: &str, ip: &str) -> Value {
    docs(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: demo, uid: u-{name}, labels: {{app: backend, version: v2}}}}\nspec: {{nodeName: n2, serviceAccountName: backend, containers: [{{name: c, ports: [{{name: http, containerPort: 8080}}]}}]}}\nstatus: {{podIP: {ip}, phase: Running}}\n"
    ))
    .remove(0)
}

#[tokio::test]
async fn initial_list_then_added_modified_deleted_match_the_file_source() {
    let (api, mut objects) = serving_mesh().await;
    let (mut r, s) = synced(&api).await;
    assert_same(&s, &objects);
    assert!(r.status.borrow().synced);
    let db = s.service_by_vip("10.96.0.20".parse().unwrap()).unwrap();
    assert_eq!(
        s.endpoints(db, 5432).len(),
        2,
        "the slice's ready endpoints"
    );
    assert!(s.service_by_host("api.payments.example").is_some());

    // ADDED
    let p = pod("backend-2", "10.1.2.4");
    api.apply(p.clone());
    objects.push(p);
    let s = state_where(&mut r, "the added pod", |s| has_pod(s, "backend-2")).await;
    assert_same(&s, &objects);

    // MODIFIED: the legacy namespace joins the mesh.
    objects[1]["metadata"]["labels"] = serde_json::json!({"istio.io/dataplane-mode": "ambient"});
    api.apply(objects[1].clone());
    let s = state_where(&mut r, "the namespace label", |s| {
        s.namespace_labels("legacy").is_some_and(|l| !l.is_empty())
    })
    .await;
    assert_same(&s, &objects);

    // MODIFIED: an EndpointSlice's endpoint turns ready.
    let slice = objects
        .iter_mut()
        .find(|o| o["kind"] == "EndpointSlice")
        .unwrap();
    slice["endpoints"][2]["conditions"]["ready"] = true.into();
    api.apply(slice.clone());
    let s = state_where(&mut r, "the ready endpoint", |s| {
        s.service_by_vip("10.96.0.20".parse().unwrap())
            .is_some_and(|db| s.endpoints(db, 5432).len() == 3)
    })
    .await;
    assert_same(&s, &objects);

    // DELETED: the AuthorizationPolicy.
    let at = objects
        .iter()
        .position(|o| o["kind"] == "AuthorizationPolicy")
        .unwrap();
    let policy = objects.remove(at);
    api.delete(&policy);
    let s = state_where(&mut r, "the policy deletion", |s| {
        s.dump()["authorizationPolicies"]
            .as_array()
            .is_some_and(|a| a.is_empty())
    })
    .await;
    assert_same(&s, &objects);
}

#[tokio::test]
async fn bookmarks_and_watch_reconnects_lose_nothing() {
    let (api, mut objects) = serving_mesh().await;
    let (mut r, _) = synced(&api).await;
    api.bookmark();
    api.close_watches();
    let p = pod("backend-3", "10.1.2.5");
    api.apply(p.clone());
    objects.push(p);
    api.bookmark();
    let s = state_where(&mut r, "the pod added across a reconnect", |s| {
        has_pod(s, "backend-3")
    })
    .await;
    assert_same(&s, &objects);
    assert!(r.status.borrow().connected());
}

#[tokio::test]
async fn gone_relists_and_forgets_objects_deleted_meanwhile() {
    let (api, mut objects) = serving_mesh().await;
    let (mut r, _) = synced(&api).await;
    // While the watchers are away, history they have not seen is compacted: their next
    // watch gets 410 Gone, and only a fresh list can tell them backend-1 was deleted.
    api.set_down(true);
    let gone = objects.remove(2);
    api.delete(&gone);
    let p = pod("backend-4", "10.1.2.6");
    api.apply(p.clone());
    objects.push(p);
    api.compact();
    api.set_down(false);
    let s = state_where(&mut r, "the relisted state", |s| {
        has_pod(s, "backend-4") && !has_pod(s, "backend-1")
    })
    .await;
    assert_same(&s, &objects);
    assert!(
        api.gone_count() > 0,
        "the watchers resumed through 410 Gone"
    );
}

#[tokio::test]
async fn an_api_outage_keeps_the_last_state_serving_and_says_so() {
    let (api, mut objects) = serving_mesh().await;
    let (mut r, before) = synced(&api).await;
    api.set_down(true);
    let st = status_where(&mut r, "the outage to be reported", |s| !s.connected()).await;
    assert!(st.synced);
    assert!(
        st.detail().contains("serving the last good config"),
        "{}",
        st.detail()
    );
    assert!(
        Arc::ptr_eq(&before, &r.states.borrow()),
        "no new state while the API server is away"
    );
    let p = pod("backend-5", "10.1.2.7");
    api.apply(p.clone());
    objects.push(p);
    api.set_down(false);
    let s = state_where(&mut r, "the change made during the outage", |s| {
        has_pod(s, "backend-5")
    })
    .await;
    assert_same(&s, &objects);
    status_where(&mut r, "recovery", |s| s.connected()).await;
}

#[tokio::test]
async fn an_invalid_object_is_rejected_alone_and_its_last_version_keeps_serving() {
    let (api, objects) = serving_mesh().await;
    let (mut r, _) = synced(&api).await;
    let mut bad = of_kind(&objects, "VirtualService");
    bad["spec"]["http"][0]["rout"] = bad["spec"]["http"][0]["route"].take();
    api.apply(bad);
    let s = state_where(&mut r, "the rejection", |s| !s.rejections().is_empty()).await;
    let rejection = &s.rejections()[0];
    assert_eq!(rejection.object.to_string(), "VirtualService demo/backend");
    assert_eq!(rejection.field, "spec.http[0].rout");
    assert_eq!(
        s.virtual_services().len(),
        1,
        "the last valid version keeps serving"
    );
    assert_eq!(
        s.virtual_services()[0].http[0].matches.len(),
        0,
        "and it is the earlier, valid one"
    );
}

#[tokio::test]
async fn a_waypoint_scope_watches_istio_objects_of_its_namespaces_only() {
    let (api, objects) = serving_mesh().await;
    let mut elsewhere = of_kind(&objects, "VirtualService");
    elsewhere["metadata"]["namespace"] = "legacy".into();
    api.apply(elsewhere);
    let (tx, mut states) = watch::channel(Arc::new(MeshState::default()));
    let (status_tx, _status) = watch::channel(SourceStatus::default());
    let scope = Scope::IstioIn(vec!["demo".into(), "istio-system".into()]);
    let source = KubeSource::new(api.client(), Arc::new(Settings::default()), scope);
    let task = tokio::spawn(source.run(tx, status_tx));
    let state = wait_for(&mut states, "a state", |s: &Arc<MeshState>| {
        s.workload_count() == 2
    })
    .await;
    task.abort();
    assert_same(&state, &objects);
    let namespaces: Vec<&str> = state
        .virtual_services()
        .iter()
        .map(|v| v.namespace.as_str())
        .collect();
    assert_eq!(
        namespaces,
        ["demo"],
        "the legacy namespace's VirtualService is not watched"
    );
}

#[tokio::test]
async fn a_reporting_source_posts_each_rejection_once_as_an_event_on_the_object() {
    let (api, objects) = serving_mesh().await;
    let (tx, mut states) = watch::channel(Arc::new(MeshState::default()));
    let (status_tx, _status) = watch::channel(SourceStatus::default());
    let events = lanyard_kube::events::RejectionEvents::start(api.client(), "lanyard-ca", None);
    let source = KubeSource::new(api.client(), Arc::new(Settings::default()), Scope::Cluster)
        .report_rejections(events);
    let task = tokio::spawn(source.run(tx, status_tx));

    let mut bad = of_kind(&objects, "VirtualService");
    bad["spec"]["http"][0]["rout"] = bad["spec"]["http"][0]["route"].take();
    api.apply(bad);
    wait_for(&mut states, "the rejection", |s| !s.rejections().is_empty()).await;
    // Unrelated changes do not repost it.
    api.apply(pod("backend-2", "10.1.1.3"));
    wait_for(&mut states, "the new pod", |s| has_pod(s, "backend-2")).await;

    let mut posted = Vec::new();
    for _ in 0..100 {
        posted = api.list("events.k8s.io/v1", "Event");
        if !posted.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    task.abort();
    assert_eq!(posted.len(), 1, "{posted:#?}");
    let e = &posted[0];
    assert_eq!(e["type"], "Warning");
    assert_eq!(e["reason"], "Rejected");
    assert_eq!(e["metadata"]["namespace"], "demo");
    assert_eq!(e["regarding"]["kind"], "VirtualService");
    assert_eq!(e["regarding"]["name"], "backend");
    assert_eq!(e["regarding"]["apiVersion"], "networking.istio.io/v1");
    let note = e["note"].as_str().unwrap();
    assert!(note.starts_with("spec.http[0].rout: "), "{note}");
}
