use std::collections::BTreeMap;

use lanyard_core::config::Snapshot;
use lanyard_core::state::Settings;

use super::*;

fn workload(name: &str, version: &str) -> Arc<Workload> {
    Arc::new(Workload {
        uid: format!("uid-{name}"),
        name: format!("{name}-pod"),
        namespace: "demo".into(),
        service_account: name.into(),
        node: None,
        ip: None,
        labels: BTreeMap::from([
            ("app".to_string(), name.to_string()),
            ("version".to_string(), version.to_string()),
        ]),
        named_ports: BTreeMap::new(),
        ready: true,
        host_network: false,
        external: false,
        identity: Default::default(),
    })
}

fn state() -> Arc<MeshState> {
    Arc::new(MeshState::build(Snapshot::default(), &Settings::default()))
}

/// `istio_requests_total` series as (labels that matter here, count).
fn requests(registry: &Registry) -> Vec<(Vec<(String, String)>, u64)> {
    const SHOWN: [&str; 5] = [
        "destination_workload",
        "destination_version",
        "destination_principal",
        "response_code",
        "destination_cluster",
    ];
    let mut out: Vec<_> = registry
        .gather()
        .iter()
        .filter(|f| f.name() == "istio_requests_total")
        .flat_map(|f| f.get_metric().to_vec())
        .map(|m| {
            let labels = m
                .get_label()
                .iter()
                .filter(|l| SHOWN.contains(&l.name()))
                .map(|l| (l.name().to_string(), l.value().to_string()))
                .collect();
            (labels, m.get_counter().get_value() as u64)
        })
        .collect();
    out.sort();
    out
}

fn label<'a>(series: &'a [(Vec<(String, String)>, u64)], i: usize, name: &str) -> &'a str {
    let (labels, _) = &series[i];
    &labels.iter().find(|(n, _)| n == name).unwrap().1
}

#[test]
fn one_label_set_is_one_series_with_names_read_from_the_objects() {
    let registry = Registry::new();
    let metrics = Metrics::new(&registry, AccessLog::off(), None).unwrap();
    let (state, dst) = (state(), workload("backend", "v2"));
    let rec = |code| RequestRecord {
        state: Some(state.clone()),
        dst: Some(dst.clone()),
        protocol: "http",
        code,
        flags: "-",
        ..Default::default()
    };
    metrics.record(rec(200));
    metrics.record(rec(200));
    metrics.record(rec(503));
    let series = requests(&registry);
    assert_eq!(series.len(), 2, "{series:?}");
    assert_eq!(
        (series[0].1, label(&series, 0, "response_code")),
        (2, "200")
    );
    assert_eq!(
        (series[1].1, label(&series, 1, "response_code")),
        (1, "503")
    );
    assert_eq!(label(&series, 0, "destination_workload"), "backend");
    assert_eq!(label(&series, 0, "destination_version"), "v2");
    assert_eq!(
        label(&series, 0, "destination_principal"),
        "spiffe://cluster.local/ns/demo/sa/backend"
    );
    assert_eq!(label(&series, 0, "destination_cluster"), "unknown");
}

/// Names that come from the state (the trust domain here) are read again after a config
/// update, even for objects the update kept.
#[test]
fn a_new_state_reads_names_again() {
    let registry = Registry::new();
    let metrics = Metrics::new(&registry, AccessLog::off(), None).unwrap();
    let dst = workload("backend", "v1");
    for trust_domain in ["cluster.local", "corp.example", "corp.example"] {
        let settings = Settings {
            trust_domain: trust_domain.into(),
            ..Default::default()
        };
        metrics.record(RequestRecord {
            state: Some(Arc::new(MeshState::build(Snapshot::default(), &settings))),
            dst: Some(dst.clone()),
            protocol: "http",
            code: 200,
            flags: "-",
            ..Default::default()
        });
    }
    let series = requests(&registry);
    assert_eq!(series.len(), 2, "{series:?}");
    let principal = |i| label(&series, i, "destination_principal");
    assert_eq!(
        (series[0].1, principal(0)),
        (1, "spiffe://cluster.local/ns/demo/sa/backend")
    );
    assert_eq!(
        (series[1].1, principal(1)),
        (2, "spiffe://corp.example/ns/demo/sa/backend")
    );
}

#[test]
fn the_authority_is_the_uri_s_else_the_host_header_s_else_the_dialed_address() {
    let dialed: SocketAddr = "10.96.0.9:8080".parse().unwrap();
    let of = |uri: &str, host: Option<&[u8]>| {
        let mut req = Request::builder().uri(uri);
        if let Some(h) = host {
            req = req.header(header::HOST, HeaderValue::from_bytes(h).unwrap());
        }
        Authority::of(&req.body(()).unwrap(), dialed).to_string()
    };
    assert_eq!(of("http://reviews:9080/a", Some(b"other")), "reviews:9080");
    assert_eq!(of("/a", Some(b"reviews.demo:9080")), "reviews.demo:9080");
    assert_eq!(of("/a", None), "10.96.0.9:8080");
    // Not visible ASCII: not a name to route or log by.
    assert_eq!(of("/a", Some(b"caf\xc3\xa9")), "10.96.0.9:8080");
    assert_eq!(Authority::default().as_str(), "");
}
