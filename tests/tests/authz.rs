//! Authorization end to end: PeerAuthentication and AuthorizationPolicy enforced by the agents.

use std::process::Command;
use std::time::{Duration, Instant};

use lanyard_e2e::{metric, wait_for, Mesh, PodSpec};

fn mesh(prefix: &str) -> Mesh {
    let mut mesh = Mesh::builder(prefix)
        .nodes(2)
        .namespace("demo", true)
        .namespace("legacy", false)
        .pod(PodSpec::new("client-a", "demo").node(0))
        .pod(PodSpec::new("client-b", "demo").node(0))
        .pod(PodSpec::new("server", "demo").node(1))
        .pod(PodSpec::new("legacy", "legacy").node(0))
        .start()
        .expect("mesh starts");
    mesh.serve("server", 8080).unwrap();
    mesh.serve("server", 9090).unwrap();
    mesh
}

/// Applies `yaml` as the mesh's policies and waits until node1's agent has loaded it.
fn apply(mesh: &mut Mesh, yaml: &str, expect_policies: usize) {
    mesh.extra_yaml = yaml.to_string();
    mesh.write_config().unwrap();
    wait_for(Duration::from_secs(5), "policies loaded", || {
        let dump = mesh.config_dump(1).ok()?;
        let n = dump["state"]["authorizationPolicies"].as_array()?.len()
            + dump["state"]["peerAuthentications"].as_array()?.len();
        (n == expect_policies).then_some(())
    })
    .unwrap();
}

fn reach(mesh: &Mesh, from: &str, port: u16) -> Result<String, String> {
    let addr = format!("{}:{port}", mesh.pod("server").ip);
    mesh.run(
        from,
        &[
            "client",
            "--addr",
            &addr,
            "--bytes",
            "100",
            "--timeout",
            "5",
        ],
    )
}

const ALLOW_A: &str = "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-a, namespace: demo}
spec:
  selector: {matchLabels: {app: server}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/demo/sa/client-a]}}]
";

#[test]
fn namespace_strict_peer_authentication_refuses_the_legacy_pod() {
    let mut mesh = mesh("az1");
    assert!(
        reach(&mesh, "legacy", 8080).is_ok(),
        "PERMISSIVE by default"
    );
    apply(&mut mesh, "---\napiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: demo}\nspec: {mtls: {mode: STRICT}}\n", 1);
    assert!(
        reach(&mesh, "legacy", 8080).is_err(),
        "STRICT refuses plaintext"
    );
    assert!(reach(&mesh, "client-a", 8080).is_ok(), "mTLS still served");
    let text = mesh.metrics(1).unwrap();
    assert_eq!(
        metric(
            &text,
            "lanyard_connections_denied_total",
            &[("reason", "strict_mtls")]
        ),
        1.0
    );
}

#[test]
fn allow_policy_admits_one_principal_and_refuses_another() {
    let mut mesh = mesh("az2");
    apply(&mut mesh, ALLOW_A, 1);
    let ok = reach(&mesh, "client-a", 8080).unwrap();
    assert!(ok.contains("echoed=100"), "{ok}");
    let err = reach(&mesh, "client-b", 8080).unwrap_err();
    // The client sees its connection reset before any byte of the server.
    assert!(err.contains("greeting") || err.contains("reset"), "{err}");
    let text = mesh.metrics(1).unwrap();
    assert_eq!(
        metric(
            &text,
            "lanyard_connections_denied_total",
            &[("policy", "demo/allow-a"), ("reason", "authorization")]
        ),
        1.0
    );
    // The server's agent answered 401 on the HBONE stream; the client's agent says so.
    wait_for(Duration::from_secs(5), "logs", || {
        (mesh.agent_log(0).contains("HTTP 401")
            && mesh
                .agent_log(1)
                .contains("no rule of ALLOW policies demo/allow-a matched"))
        .then_some(())
    })
    .unwrap();
}

#[test]
fn deny_policy_on_a_port() {
    let mut mesh = mesh("az3");
    apply(
        &mut mesh,
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-9090, namespace: demo}\nspec: {action: DENY, rules: [{to: [{operation: {ports: ['9090']}}]}]}\n",
        1,
    );
    assert!(reach(&mesh, "client-a", 8080).is_ok());
    assert!(reach(&mesh, "client-a", 9090).is_err());
    // In the refused connection's access-log line, written within the flush interval.
    wait_for(Duration::from_secs(5), "the access-log line", || {
        mesh.agent_log(1)
            .contains("denied by DENY policy demo/no-9090 rule 0")
            .then_some(())
    })
    .unwrap();
}

#[test]
fn a_policy_update_cuts_a_live_connection_within_a_second() {
    let mut mesh = mesh("az4");
    let addr = format!("{}:8080", mesh.pod("server").ip);
    let chat = mesh
        .spawn(
            "client-b",
            &[
                "chat",
                "--addr",
                &addr,
                "--rounds",
                "600",
                "--interval-ms",
                "20",
            ],
        )
        .unwrap();
    let mut out = std::io::BufReader::new(chat.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line, "connected\n");
    let pid = nix::unistd::Pid::from_raw(chat.id() as i32);

    let started = Instant::now();
    mesh.extra_yaml = ALLOW_A.to_string();
    mesh.write_config().unwrap();
    // The chat client exits (with an error) once its connection is cut.
    wait_for(
        Duration::from_secs(5),
        "the live connection to be cut",
        || match nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            Ok(nix::sys::wait::WaitStatus::StillAlive) => None,
            _ => Some(()),
        },
    )
    .unwrap();
    let took = started.elapsed();
    assert!(took <= Duration::from_secs(1), "cut after {took:?}");
    assert!(mesh.agent_log(1).contains("closing live connection"));
    // client-a's new connections are still allowed.
    assert!(reach(&mesh, "client-a", 8080).is_ok());
}

#[test]
fn an_invalid_policy_is_reported_while_the_rest_keeps_working() {
    let mut mesh = mesh("az5");
    let bad = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: broken, namespace: demo}\nspec: {rules: [{from: [{source: {ipBlocks: [10.0.0.0/99]}}]}]}\n";
    mesh.extra_yaml = format!("{ALLOW_A}{bad}");
    mesh.write_config().unwrap();
    let rejected = wait_for(Duration::from_secs(5), "the rejection", || {
        let dump = mesh.config_dump(1).ok()?;
        let r = dump["state"]["rejected"].as_array()?.clone();
        (!r.is_empty()).then_some(r)
    })
    .unwrap();
    assert_eq!(
        rejected[0].as_str().unwrap(),
        "AuthorizationPolicy demo/broken: spec.rules[0].from[0].source.ipBlocks[0]: \"10.0.0.0/99\" is not an IP address or CIDR block"
    );
    assert!(reach(&mesh, "client-a", 8080).is_ok());
    assert!(
        reach(&mesh, "client-b", 8080).is_err(),
        "the valid policy is enforced"
    );
}

#[test]
fn explain_matches_the_agents_real_decision() {
    let mut mesh = mesh("az6");
    apply(&mut mesh, ALLOW_A, 1);
    let server = mesh.pod("server").ip;
    for (client, allowed) in [("client-a", true), ("client-b", false)] {
        let src = mesh.pod(client).ip;
        let body = mesh
            .admin(1, &format!("/explain?src={src}&dst={server}&port=8080"))
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["allowed"], allowed, "{body}");
        assert_eq!(v["decidedBy"], "demo/allow-a", "{body}");
        assert_eq!(
            reach(&mesh, client, 8080).is_ok(),
            allowed,
            "explain agrees with the data path"
        );
        // lanyardctl, from the agent's config file and from the running agent.
        let ctl = lanyard_e2e::bin_dir().join("lanyardctl");
        let config = mesh.config_path();
        let offline = Command::new(&ctl)
            .args(["explain", "-o", "json", "-f"])
            .arg(&config)
            .args([
                "--from",
                &format!("demo/{client}"),
                "--to",
                "demo/server:8080",
            ])
            .output()
            .unwrap();
        let live = Command::new("ip")
            .args(["netns", "exec", &mesh.nodes[1].netns])
            .arg(&ctl)
            .args(["explain", "-o", "json", "--agent", "127.0.0.1:15000"])
            .args([
                "--from",
                &src.to_string(),
                "--to",
                &format!("{server}:8080"),
            ])
            .output()
            .unwrap();
        for (how, out) in [("offline", offline), ("live", live)] {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("{how}: {e}: {}", String::from_utf8_lossy(&out.stderr)));
            assert_eq!(v["allowed"], allowed, "{how}: {v}");
            assert_eq!(v["steps"][0]["decidedBy"], "demo/allow-a", "{how}: {v}");
            assert_eq!(
                out.status.code(),
                Some(if allowed { 0 } else { 1 }),
                "{how}"
            );
        }
    }
}
