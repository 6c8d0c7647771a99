//! Authorization at mesh scale: 5,000 AuthorizationPolicies in 100 namespaces, 50 of them
//! applying to the destination. Measures one L4 decision, and a whole config update (documents
//! to a published `MeshState`).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use lanyard_core::config::Store;
use lanyard_core::policy::authz::Request;
use lanyard_core::state::{MeshState, Settings};
use serde_json::{json, Value};

const NAMESPACES: usize = 100;
const PER_NAMESPACE: usize = 50;

fn documents() -> Vec<Value> {
    let mut docs = vec![json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "server", "namespace": "ns0", "uid": "u-server", "labels": {"app": "server"}},
        "spec": {"nodeName": "n1", "serviceAccountName": "server", "containers": [{"name": "c"}]},
        "status": {"podIP": "10.0.0.2"}
    })];
    for n in 0..NAMESPACES {
        for p in 0..PER_NAMESPACE {
            // Half select the server, half the whole namespace; none of them match the
            // request below except the last, so a decision looks at every applying policy.
            let selector = if p % 2 == 0 {
                json!({"matchLabels": {"app": "server"}})
            } else {
                Value::Null
            };
            let principal = if p == PER_NAMESPACE - 1 {
                "cluster.local/ns/client/sa/client".to_string()
            } else {
                format!("cluster.local/ns/other{p}/sa/app{p}")
            };
            let mut spec = json!({
                "action": "ALLOW",
                "rules": [{
                    "from": [{"source": {"principals": [principal], "namespaces": [format!("ns-{p}"), "client"]}}],
                    "to": [{"operation": {"ports": ["8080", "9090"]}}],
                    "when": [{"key": "source.ip", "values": ["10.0.0.0/8"]}]
                }]
            });
            if !selector.is_null() {
                spec["selector"] = selector;
            }
            docs.push(json!({
                "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                "metadata": {"name": format!("p{p}"), "namespace": format!("ns{n}")},
                "spec": spec
            }));
        }
    }
    docs
}

fn bench(c: &mut Criterion) {
    let docs = documents();
    let settings = Settings::default();
    let state = MeshState::build(Store::default().update(docs.clone()), &settings);
    let server = state
        .workload_by_uid("u-server")
        .expect("server pod")
        .clone();
    let req = Request {
        principal: Some("cluster.local/ns/client/sa/client"),
        source_namespace: Some("client"),
        source_service_account: Some("client"),
        source_ip: "10.0.0.9".parse().unwrap(),
        destination_ip: "10.0.0.2".parse().unwrap(),
        destination_port: 8080,
        http: None,
    };
    let d = state.authorize_l4(&server, &req);
    assert!(d.allowed, "the last applying policy allows: {:?}", d.reason);
    assert_eq!(d.policy(), format!("ns0/p{}", PER_NAMESPACE - 1));

    c.bench_function("l4 decision, 5000 policies, 50 applying", |b| {
        b.iter(|| black_box(state.authorize_l4(black_box(&server), black_box(&req))))
    });
    let mut group = c.benchmark_group("config update");
    group.sample_size(10);
    group.bench_function("5000 policies: documents to MeshState", |b| {
        b.iter_batched(
            || docs.clone(),
            |docs| black_box(MeshState::build(Store::default().update(docs), &settings)),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
