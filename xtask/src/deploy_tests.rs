//! deploy/ checked offline: the generated files are current, every object the chart renders
//! (with its defaults and with the options users change) passes the Kubernetes schema, the
//! CRDs are structural, and the Istio YAML of the walkthroughs our users learn from passes
//! both our CRDs and Lanyard's own reading of it.

use lanyard_core::config::{parse_documents, Store};
use lanyard_kube::schema::{check_builtin, check_custom};
use serde_json::{json, Value};

use crate::chart::{self, repo_root};

fn problems_of(objects: &[Value]) -> Vec<String> {
    objects
        .iter()
        .flat_map(|o| {
            let name = format!(
                "{} {}",
                o["kind"].as_str().unwrap_or("?"),
                o["metadata"]["name"]
            );
            check_builtin(o)
                .into_iter()
                .map(move |p| format!("{name}: {p}"))
        })
        .collect()
}

#[test]
fn the_manifest_file_is_the_rendered_chart() {
    let on_disk =
        std::fs::read_to_string(repo_root().join(chart::MANIFEST_FILE)).unwrap_or_default();
    assert!(
        on_disk == chart::manifest().unwrap(),
        "{} is stale: run `cargo xtask manifests`",
        chart::MANIFEST_FILE
    );
}

/// Objects by (kind, namespace, name), for comparing renderings regardless of order.
fn by_key(objects: Vec<Value>) -> std::collections::BTreeMap<String, Value> {
    objects
        .into_iter()
        .map(|o| {
            let key = format!(
                "{} {}/{}",
                o["kind"].as_str().unwrap_or_default(),
                o["metadata"]["namespace"].as_str().unwrap_or_default(),
                o["metadata"]["name"].as_str().unwrap_or_default()
            );
            (key, o)
        })
        .collect()
}

#[test]
fn helm_itself_lints_the_chart_and_renders_what_our_renderer_does() {
    let helm = crate::setup::helm().expect("helm (fetched by `cargo xtask setup`)");
    let chart_dir = repo_root().join("deploy/helm/lanyard");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&helm)
            .args(args)
            .arg(&chart_dir)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "helm {args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    run(&["lint", "--strict"]);
    let istiod = json!({"ca": {"enabled": false}, "agent": {"ca": {
        "address": "https://istiod.istio-system.svc:15012",
        "serverName": "istiod.istio-system.svc",
        "rootConfigMap": "istio-ca-root-cert"}}});
    for overrides in [json!({}), istiod] {
        let file = std::env::temp_dir().join(format!("lanyard-values-{}.json", std::process::id()));
        std::fs::write(&file, overrides.to_string()).unwrap();
        let text = run(&[
            "template",
            "r",
            "--namespace",
            "mesh",
            "--include-crds",
            "--values",
            file.to_str().unwrap(),
        ]);
        let _ = std::fs::remove_file(&file);
        let theirs = by_key(chart::documents(&text).unwrap());
        let values = chart::values(&overrides).unwrap();
        let mut ours = chart::render(&values, "mesh", "r").unwrap();
        ours.extend(chart::crds().unwrap());
        let ours = by_key(ours);
        assert_eq!(
            theirs.keys().collect::<Vec<_>>(),
            ours.keys().collect::<Vec<_>>(),
            "{overrides}"
        );
        for (key, object) in &ours {
            assert_eq!(&theirs[key], object, "{overrides}: {key}");
        }
    }
}

#[test]
fn every_rendered_object_passes_the_kubernetes_schema() {
    let variants = [
        json!({}),
        // Agents on istiod's CA, no CA of ours.
        json!({"ca": {"enabled": false}, "agent": {"ca": {
            "address": "https://istiod.istio-system.svc:15012",
            "serverName": "istiod.istio-system.svc",
            "rootConfigMap": "istio-ca-root-cert"}}}),
        json!({"agent": {"exemptProbes": false, "mtlsMode": "strict", "podCgroup": "kubepods"},
               "image": {"tag": "dev"}}),
    ];
    for overrides in variants {
        let values = chart::values(&overrides).unwrap();
        let objects = chart::render(&values, "mesh", "r").unwrap();
        assert!(objects.len() >= 5, "{overrides}: {} objects", objects.len());
        let problems = problems_of(&objects);
        assert!(problems.is_empty(), "{overrides}: {problems:#?}");
    }
    let manifest =
        chart::documents(&std::fs::read_to_string(repo_root().join(chart::MANIFEST_FILE)).unwrap())
            .unwrap();
    let problems = problems_of(&manifest);
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Whether `role` (a rendered ClusterRole) lets its holder list and watch `kind`.
fn can_watch(role: &Value, kind: &lanyard_kube::kinds::Kind) -> bool {
    let has = |list: &Value, want: &str| {
        list.as_array()
            .is_some_and(|l| l.iter().any(|x| x == want || x == "*"))
    };
    role["rules"].as_array().into_iter().flatten().any(|r| {
        has(&r["apiGroups"], kind.group)
            && has(&r["resources"], kind.plural)
            && has(&r["verbs"], "list")
            && has(&r["verbs"], "watch")
    })
}

#[test]
fn every_watched_kind_is_readable_by_each_role_that_watches_it() {
    let values = chart::values(&json!({})).unwrap();
    let objects = chart::render(&values, "mesh", "r").unwrap();
    let role = |name: &str| {
        objects
            .iter()
            .find(|o| o["kind"] == "ClusterRole" && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no ClusterRole {name}"))
    };
    for kind in lanyard_kube::kinds::ALL {
        for holder in ["lanyard-agent", "lanyard-ca"] {
            assert!(can_watch(role(holder), kind), "{holder}: {}", kind.kind);
        }
        // A waypoint reads Istio config through its namespaced bindings, the rest cluster-wide.
        let (waypoint, other) = if kind.istio {
            ("lanyard-waypoint-config", "lanyard-waypoint-workloads")
        } else {
            ("lanyard-waypoint-workloads", "lanyard-waypoint-config")
        };
        assert!(can_watch(role(waypoint), kind), "{waypoint}: {}", kind.kind);
        assert!(!can_watch(role(other), kind), "{other}: {}", kind.kind);
    }
}

#[test]
fn values_reach_the_objects() {
    let values = chart::values(&json!({"ca": {"enabled": false},
        "agent": {"ca": {"address": "https://istiod.istio-system.svc:15012", "rootConfigMap": "istio-ca-root-cert"},
                  "exemptProbes": false}})).unwrap();
    let objects = chart::render(&values, "mesh", "r").unwrap();
    assert!(
        !objects
            .iter()
            .any(|o| o["metadata"]["name"] == "lanyard-ca"),
        "CA disabled"
    );
    let agent = objects.iter().find(|o| o["kind"] == "DaemonSet").unwrap();
    let pod = &agent["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(args.contains(&"--no-probe-exemption"), "{args:?}");
    let env = container["env"].as_array().unwrap();
    let ca = env
        .iter()
        .find(|e| e["name"] == "LANYARD_CA_ADDRESS")
        .unwrap();
    assert_eq!(ca["value"], "https://istiod.istio-system.svc:15012");
    let root = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "ca-root")
        .unwrap();
    assert_eq!(root["configMap"]["name"], "istio-ca-root-cert");
}

#[test]
fn every_crd_is_structural_and_serves_istios_versions() {
    let crds = chart::crds().unwrap();
    assert_eq!(crds.len(), 6);
    assert!(problems_of(&crds).is_empty(), "{:#?}", problems_of(&crds));
    let vs = crds
        .iter()
        .find(|c| c["spec"]["names"]["kind"] == "VirtualService")
        .unwrap();
    let served: Vec<&str> = vs["spec"]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(served, ["v1", "v1beta1", "v1alpha3"]);
}

fn walkthroughs() -> Vec<(String, String)> {
    let dir = repo_root().join("deploy/tests/walkthroughs");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect()
}

#[test]
fn the_walkthroughs_istio_yaml_passes_our_crds_and_lanyard_reads_it_all() {
    let crds = chart::crds().unwrap();
    let files = walkthroughs();
    assert_eq!(files.len(), 4);
    let mut checked = 0;
    for (name, text) in files {
        for obj in chart::documents(&text).unwrap() {
            let problems = check_custom(&obj, &crds);
            assert!(
                problems.is_empty(),
                "{name} {}: {problems:?}",
                obj["metadata"]["name"]
            );
            checked += 1;
        }
        let snapshot = Store::default().update(parse_documents(&text).unwrap());
        assert!(
            snapshot.rejections.is_empty(),
            "{name}: {:?}",
            snapshot.rejections
        );
    }
    assert_eq!(checked, 23, "objects in the four walkthrough files");
}

#[test]
fn a_typo_is_refused_by_the_crd_and_by_lanyard_alike() {
    let crds = chart::crds().unwrap();
    let text = "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {name: r}\n\
                spec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews}\n      weigth: 5\n";
    let obj = &chart::documents(text).unwrap()[0];
    assert_eq!(
        check_custom(obj, &crds),
        vec!["spec.http[0].route[0].weigth: unknown field"]
    );
    let snapshot = Store::default().update(parse_documents(text).unwrap());
    assert_eq!(snapshot.rejections.len(), 1);
    assert!(
        snapshot.rejections[0].to_string().contains("weigth"),
        "{}",
        snapshot.rejections[0]
    );
}
