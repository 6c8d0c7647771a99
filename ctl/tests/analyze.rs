//! `lanyardctl analyze` against one fixture per finding (`fixtures/analyze/`), each checked
//! together with the same base mesh: the code, the object, the field, and the exit code.

use std::path::PathBuf;
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/analyze")
        .join(name)
}

/// Runs `analyze -o json` on base + `case`; returns (exit code, [(code, object, field)]).
fn analyze(case: &str, extra: &[&str]) -> (i32, Vec<(String, String, String)>) {
    let out = Command::new(env!("CARGO_BIN_EXE_lanyardctl"))
        .args(["analyze", "-o", "json", "-f"])
        .arg(fixture("base.yaml"))
        .arg("-f")
        .arg(fixture(case))
        .args(extra)
        .output()
        .expect("lanyardctl runs");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{case}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let findings = v
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                s(&m["code"]),
                format!(
                    "{} {}/{}",
                    s(&m["kind"]),
                    s(&m["namespace"]),
                    s(&m["object"])
                ),
                s(&m["field"]),
            )
        })
        .collect();
    (out.status.code().unwrap_or(-1), findings)
}

#[test]
fn each_analyzer_finding_names_code_object_and_field() {
    let cases = [
        (
            "ist0106.yaml",
            1,
            "IST0106",
            "VirtualService demo/backend",
            "spec.http[0].rout",
        ),
        (
            "ist0101-subset.yaml",
            1,
            "IST0101",
            "VirtualService demo/backend",
            "spec.http[0].route[1].destination.subset",
        ),
        (
            "ist0101-host.yaml",
            1,
            "IST0101",
            "VirtualService demo/backend",
            "spec.http[0].route[0].destination.host",
        ),
        (
            "ist0101-targetref.yaml",
            1,
            "IST0101",
            "AuthorizationPolicy demo/get-only",
            "spec.targetRefs[0]",
        ),
        (
            "ist0131.yaml",
            0,
            "IST0131",
            "VirtualService demo/backend",
            "spec.http[1]",
        ),
        (
            "ist0127.yaml",
            0,
            "IST0127",
            "AuthorizationPolicy demo/deny-nothing",
            "spec.selector",
        ),
        (
            "lyd0001.yaml",
            0,
            "LYD0001",
            "VirtualService demo/ghost",
            "spec.hosts[0]",
        ),
        (
            "lyd0002.yaml",
            0,
            "LYD0002",
            "VirtualService demo/backend",
            "spec.http[0].fault",
        ),
    ];
    for (case, exit, code, object, field) in cases {
        let (status, findings) = analyze(case, &[]);
        assert_eq!(
            findings,
            vec![(code.to_string(), object.to_string(), field.to_string())],
            "{case}"
        );
        assert_eq!(
            status, exit,
            "{case}: exit code at the default threshold (error)"
        );
    }
}

#[test]
fn clean_config_has_no_findings_and_thresholds_decide_the_exit_code() {
    assert_eq!(analyze("clean.yaml", &[]), (0, vec![]));
    assert_eq!(
        analyze("lyd0002.yaml", &["--failure-threshold", "warning"]).0,
        1
    );
    assert_eq!(
        analyze("ist0131.yaml", &["--failure-threshold", "warning"]).0,
        0
    );
    let (_, shown) = analyze("ist0131.yaml", &["--output-threshold", "warning"]);
    assert!(
        shown.is_empty(),
        "Info findings are hidden above the output threshold"
    );
}

#[test]
fn unreadable_input_is_exit_code_2_with_the_path() {
    let out = Command::new(env!("CARGO_BIN_EXE_lanyardctl"))
        .args(["analyze", "-f", "/nonexistent/mesh.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/mesh.yaml"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyze_reads_the_cluster_as_it_reads_files() {
    let api = lanyard_kube::testing::FakeApiServer::start().await;
    for case in ["base.yaml", "ist0101-subset.yaml"] {
        let text = std::fs::read_to_string(fixture(case)).unwrap();
        for doc in lanyard_core::config::parse_documents(&text).unwrap() {
            api.apply(doc);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_lanyardctl"))
            .args(["analyze", "--kube", "-o", "json"])
            .env("KUBECONFIG", &kubeconfig)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(v[0]["code"], "IST0101", "{v}");
    assert_eq!(v[0]["field"], "spec.http[0].route[1].destination.subset");
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(out.status.code(), Some(1));
}
