//! The L4 mesh end to end: real CA, real agents, pods in network namespaces.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use lanyard_e2e::pcap::{self, PacketCapture};
use lanyard_e2e::{metric, probe, Mesh, PodSpec, ServiceSpec};

fn two_node_mesh(prefix: &str) -> Mesh {
    Mesh::builder(prefix)
        .nodes(2)
        .namespace("demo", true)
        .namespace("legacy", false)
        .pod(PodSpec::new("client", "demo").node(0))
        .pod(PodSpec::new("local-server", "demo").node(0))
        .pod(PodSpec::new("server", "demo").node(1))
        .pod(PodSpec::new("legacy", "legacy").node(1))
        .start()
        .expect("mesh starts")
}

/// Connections counted by `node`'s agent as `reporter`, secured by mTLS, to `dst`.
fn mtls_connections(mesh: &Mesh, node: usize, reporter: &str, dst: &str) -> f64 {
    let text = mesh.metrics(node).unwrap();
    metric(
        &text,
        "istio_tcp_connections_closed_total",
        &[
            ("reporter", reporter),
            ("destination_workload", dst),
            ("connection_security_policy", "mutual_tls"),
        ],
    )
}

#[test]
fn pods_reach_each_other_across_and_within_nodes_with_real_client_ip() {
    let mut mesh = two_node_mesh("l4a");
    mesh.serve("server", 8080).unwrap();
    mesh.serve("local-server", 8080).unwrap();
    let client_ip = mesh.pod("client").ip.to_string();

    for target in ["server", "local-server"] {
        let addr = format!("{}:8080", mesh.pod(target).ip);
        let out = mesh
            .run(
                "client",
                &[
                    "client",
                    "--addr",
                    &addr,
                    "--bytes",
                    "100000",
                    "--timeout",
                    "5",
                ],
            )
            .unwrap();
        assert_eq!(
            out.trim(),
            format!("greeting={target} {client_ip} echoed=100000")
        );
    }
    // Both hops went through the agents, over mutual TLS.
    lanyard_e2e::wait_for(Duration::from_secs(5), "metrics", || {
        (mtls_connections(&mesh, 0, "source", "server") == 1.0
            && mtls_connections(&mesh, 1, "destination", "server") == 1.0
            && mtls_connections(&mesh, 0, "source", "local-server") == 1.0
            && mtls_connections(&mesh, 0, "destination", "local-server") == 1.0)
            .then_some(())
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nnode0:\n{}\nnode1:\n{}",
            mesh.metrics(0).unwrap(),
            mesh.metrics(1).unwrap()
        )
    });
}

#[test]
fn no_plaintext_crosses_the_node_link_and_certificates_carry_spiffe_ids() {
    let mut mesh = two_node_mesh("l4b");
    mesh.serve("server", 8080).unwrap();
    mesh.serve("legacy", 8080).unwrap();
    let marker = "LANYARD-SECRET-MARKER-7f3a9c";

    // Positive control: the capture does see plaintext, when it is plaintext (mesh client to a
    // non-mesh destination passes through unencrypted).
    let capture = PacketCapture::start(&mesh.nodes[0].netns, &mesh.link_name(0)).unwrap();
    let legacy = format!("{}:8080", mesh.pod("legacy").ip);
    let out = mesh
        .run("client", &["send", "--addr", &legacy, "--text", marker])
        .unwrap();
    assert!(out.contains(marker), "{out}");
    let seen = capture.finish().unwrap();
    assert!(
        pcap::contains(&seen, marker.as_bytes()),
        "control: capture must see plaintext"
    );

    let capture = PacketCapture::start(&mesh.nodes[0].netns, &mesh.link_name(0)).unwrap();
    let server = format!("{}:8080", mesh.pod("server").ip);
    let out = mesh
        .run("client", &["send", "--addr", &server, "--text", marker])
        .unwrap();
    assert!(out.contains(marker), "{out}");
    let seen = capture.finish().unwrap();
    assert!(!seen.is_empty());
    assert!(
        !pcap::contains(&seen, marker.as_bytes()),
        "payload crossed the node link in clear"
    );

    // What the server pod's agent presents on 15008 is the server's SPIFFE identity.
    let ca = mesh.ca_dir();
    let cert =
        probe::workload_cert(Some(&ca), &ca, "spiffe://cluster.local/ns/demo/sa/client").unwrap();
    let hbone = SocketAddr::from((mesh.pod("server").ip, 15008));
    let ids = probe::presented_identities(
        &mesh.nodes[0].netns,
        hbone,
        cert,
        "spiffe://cluster.local/ns/demo/sa/server",
    )
    .unwrap();
    assert_eq!(
        ids.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
        ["spiffe://cluster.local/ns/demo/sa/server"]
    );
}

#[test]
fn one_gib_both_ways_and_a_thousand_concurrent_connections() {
    let mut mesh = two_node_mesh("l4c");
    mesh.serve("server", 8080).unwrap();
    let addr = format!("{}:8080", mesh.pod("server").ip);
    let gib = (1u64 << 30).to_string();
    let out = mesh
        .run(
            "client",
            &[
                "client",
                "--addr",
                &addr,
                "--bytes",
                &gib,
                "--timeout",
                "120",
            ],
        )
        .unwrap();
    assert!(out.trim().ends_with(&format!("echoed={gib}")), "{out}");

    let out = mesh
        .run("client", &["conns", "--addr", &addr, "--count", "1000"])
        .unwrap();
    assert_eq!(out.trim(), "ok=1000");
    // Every one of them was carried by the mesh.
    lanyard_e2e::wait_for(Duration::from_secs(10), "1001 connections counted", || {
        (mtls_connections(&mesh, 1, "destination", "server") == 1001.0).then_some(())
    })
    .unwrap();
    let text = mesh.metrics(1).unwrap();
    let received = metric(
        &text,
        "istio_tcp_received_bytes_total",
        &[("destination_workload", "server")],
    );
    assert!(received >= (1u64 << 30) as f64, "received bytes {received}");
}

#[test]
fn the_source_port_space_towards_an_app_is_per_destination() {
    let mut mesh = two_node_mesh("l4p");
    // A small ephemeral range in the server pod, where the destination agent connects to the
    // app from the client's address; the agent reads it when it enrolls the pod.
    let status = mesh
        .exec_command(
            "server",
            "sh",
            &[
                "-c",
                "echo 40000 40019 > /proc/sys/net/ipv4/ip_local_port_range",
            ],
        )
        .status()
        .unwrap();
    assert!(status.success());
    mesh.set_namespace_ambient("demo", false).unwrap();
    mesh.wait_enrolled(Duration::from_secs(10)).unwrap();
    mesh.set_namespace_ambient("demo", true).unwrap();
    mesh.wait_enrolled(Duration::from_secs(10)).unwrap();
    let ip = mesh.pod("server").ip;
    for port in [9000, 9001] {
        let cmd = mesh.command("server", &["hold-server", "--port", &port.to_string()]);
        mesh.start_listening(cmd, "hold server").unwrap();
    }

    // 15 + 15 connections from one client address: more than the 20 ports, but no more than
    // 20 towards either app port, which is what a client without a mesh could open.
    let timeout = Duration::from_secs(5);
    let _first = mesh
        .hold("client", &format!("{ip}:9000"), 15, timeout)
        .unwrap();
    let _second = mesh
        .hold("client", &format!("{ip}:9001"), 15, timeout)
        .unwrap();
    lanyard_e2e::wait_for(Duration::from_secs(5), "30 meshed connections", || {
        let text = mesh.metrics(1).unwrap();
        let opened = metric(
            &text,
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "destination"),
                ("destination_workload", "server"),
            ],
        );
        (opened == 30.0).then_some(())
    })
    .unwrap();
}

#[test]
fn service_vips_spread_over_endpoints_and_non_mesh_destinations_pass_through() {
    let mut mesh = Mesh::builder("l4d")
        .nodes(2)
        .namespace("demo", true)
        .namespace("legacy", false)
        .pod(PodSpec::new("client", "demo").node(0))
        .pod(PodSpec::new("web-a", "demo").node(1).label("app", "web"))
        .pod(PodSpec::new("web-b", "demo").node(0).label("app", "web"))
        .pod(PodSpec::new("legacy", "legacy").node(1))
        .service(ServiceSpec::new("web", "demo", Ipv4Addr::new(10, 96, 0, 10)).port(80, 8080))
        .start()
        .unwrap();
    mesh.serve("web-a", 8080).unwrap();
    mesh.serve("web-b", 8080).unwrap();
    mesh.serve("legacy", 8080).unwrap();
    let mut hits = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..30 {
        let out = mesh
            .run("client", &["client", "--addr", "10.96.0.10:80"])
            .unwrap();
        let name = out
            .trim()
            .trim_start_matches("greeting=")
            .split(' ')
            .next()
            .unwrap()
            .to_string();
        *hits.entry(name).or_default() += 1;
    }
    assert_eq!(hits.len(), 2, "both endpoints serve: {hits:?}");
    assert!(hits.values().all(|n| *n >= 3), "{hits:?}");
    let text = mesh.metrics(0).unwrap();
    assert_eq!(
        metric(
            &text,
            "istio_tcp_connections_closed_total",
            &[("destination_service", "web.demo.svc.cluster.local")]
        ),
        30.0
    );

    let client_ip = mesh.pod("client").ip.to_string();
    let legacy = format!("{}:8080", mesh.pod("legacy").ip);
    let out = mesh
        .run("client", &["client", "--addr", &legacy, "--bytes", "1000"])
        .unwrap();
    assert_eq!(
        out.trim(),
        format!("greeting=legacy {client_ip} echoed=1000")
    );
    let text = mesh.metrics(0).unwrap();
    let passthrough = [
        ("destination_workload", "legacy"),
        ("connection_security_policy", "unknown"),
    ];
    assert_eq!(
        metric(&text, "istio_tcp_connections_closed_total", &passthrough),
        1.0
    );

    // A selector-less Service served by an EndpointSlice (a meshed pod: HBONE), and a
    // ServiceEntry whose endpoint is outside the mesh (plain TCP).
    let web_a = mesh.pod("web-a").ip;
    let legacy_ip = mesh.pod("legacy").ip;
    mesh.extra_yaml = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: web-manual, namespace: demo}}\n\
         spec: {{clusterIP: 10.96.0.11, ports: [{{name: web, port: 80}}]}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: web-manual-1, namespace: demo, labels: {{kubernetes.io/service-name: web-manual}}}}\n\
         addressType: IPv4\nports: [{{name: web, port: 8080}}]\n\
         endpoints: [{{addresses: [{web_a}]}}, {{addresses: [{web_a}], conditions: {{ready: false}}}}]\n\
         ---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: {{name: legacy-db, namespace: demo}}\n\
         spec: {{hosts: [db.legacy.example], addresses: [240.0.0.10], resolution: STATIC,\n\
                 ports: [{{number: 5432, name: tcp-db, targetPort: 8080}}], endpoints: [{{address: {legacy_ip}}}]}}\n"
    );
    mesh.write_config().unwrap();
    lanyard_e2e::wait_for(Duration::from_secs(10), "the new services", || {
        let dump = mesh.config_dump(0).ok()?;
        let services = dump["state"]["services"].as_array()?.clone();
        (services.len() == 3).then_some(())
    })
    .unwrap();
    let out = mesh
        .run("client", &["client", "--addr", "10.96.0.11:80"])
        .unwrap();
    assert!(out.starts_with("greeting=web-a "), "{out}");
    let text = mesh.metrics(0).unwrap();
    let manual = [
        ("destination_service", "web-manual.demo.svc.cluster.local"),
        ("connection_security_policy", "mutual_tls"),
    ];
    assert_eq!(
        metric(&text, "istio_tcp_connections_closed_total", &manual),
        1.0
    );
    let out = mesh
        .run(
            "client",
            &["client", "--addr", "240.0.0.10:5432", "--bytes", "100"],
        )
        .unwrap();
    assert_eq!(
        out.trim(),
        format!("greeting=legacy {client_ip} echoed=100")
    );
    let text = mesh.metrics(0).unwrap();
    let entry = [
        ("destination_service", "db.legacy.example"),
        ("connection_security_policy", "unknown"),
    ];
    assert_eq!(
        metric(&text, "istio_tcp_connections_closed_total", &entry),
        1.0
    );
}

#[test]
fn strict_refuses_legacy_plaintext_and_permissive_accepts_it() {
    let mut mesh = Mesh::builder("l4e")
        .nodes(2)
        .namespace("demo", true)
        .namespace("legacy", false)
        .pod(PodSpec::new("server", "demo").node(1))
        .pod(PodSpec::new("legacy", "legacy").node(0))
        .mtls_mode("strict")
        .start()
        .unwrap();
    mesh.serve("server", 8080).unwrap();
    let addr = format!("{}:8080", mesh.pod("server").ip);
    let err = mesh
        .run("legacy", &["client", "--addr", &addr, "--timeout", "5"])
        .unwrap_err();
    assert!(err.contains("greeting") || err.contains("reset"), "{err}");
    let text = mesh.metrics(1).unwrap();
    let denied = [
        ("response_flags", "DENY"),
        ("connection_security_policy", "none"),
    ];
    assert_eq!(
        metric(&text, "istio_tcp_connections_closed_total", &denied),
        1.0
    );

    // A kubelet probe comes from the node itself: it reaches the app directly, not refused.
    let node_ns = mesh.nodes[1].netns.clone();
    let target: SocketAddr = addr.parse().unwrap();
    let greeting = lanyard_e2e::in_netns(&node_ns, move || -> std::io::Result<String> {
        use std::io::BufRead;
        let s = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut line = String::new();
        std::io::BufReader::new(s).read_line(&mut line)?;
        Ok(line)
    })
    .unwrap();
    assert_eq!(
        greeting.trim(),
        "server 172.30.0.2",
        "probe from node1's address"
    );

    // The same pod under PERMISSIVE: restart the server's agent with the other mode.
    mesh.stop_agent(1);
    mesh.mtls_mode = "permissive".into();
    mesh.start_agent(1).unwrap();
    mesh.wait_enrolled(Duration::from_secs(10)).unwrap();
    let legacy_ip = mesh.pod("legacy").ip.to_string();
    let out = mesh
        .run("legacy", &["client", "--addr", &addr, "--bytes", "1000"])
        .unwrap();
    assert_eq!(
        out.trim(),
        format!("greeting=server {legacy_ip} echoed=1000")
    );
}

#[test]
fn enrolling_and_unenrolling_a_namespace_takes_effect_live() {
    let mut mesh = two_node_mesh("l4f");
    mesh.serve("server", 8080).unwrap();
    let addr = format!("{}:8080", mesh.pod("server").ip);
    let round_trip = |mesh: &Mesh| {
        mesh.run("client", &["client", "--addr", &addr, "--bytes", "10"])
            .unwrap()
    };

    round_trip(&mesh);
    assert_eq!(mtls_connections(&mesh, 1, "destination", "server"), 1.0);

    mesh.set_namespace_ambient("demo", false).unwrap();
    mesh.wait_enrolled(Duration::from_secs(10)).unwrap();
    round_trip(&mesh);
    assert_eq!(
        mtls_connections(&mesh, 1, "destination", "server"),
        1.0,
        "not captured any more"
    );

    mesh.set_namespace_ambient("demo", true).unwrap();
    mesh.wait_enrolled(Duration::from_secs(10)).unwrap();
    round_trip(&mesh);
    lanyard_e2e::wait_for(Duration::from_secs(5), "captured again", || {
        (mtls_connections(&mesh, 1, "destination", "server") == 2.0).then_some(())
    })
    .unwrap();
}

#[test]
fn connections_keep_working_on_cached_certificates_while_the_ca_is_down() {
    let mut mesh = two_node_mesh("l4g");
    mesh.serve("server", 8080).unwrap();
    let addr = format!("{}:8080", mesh.pod("server").ip);
    mesh.run("client", &["client", "--addr", &addr, "--bytes", "10"])
        .unwrap();

    let chat = mesh
        .spawn(
            "client",
            &[
                "chat",
                "--addr",
                &addr,
                "--rounds",
                "30",
                "--interval-ms",
                "100",
            ],
        )
        .unwrap();
    let mut stdout = std::io::BufReader::new(chat.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(line, "connected\n");

    mesh.stop_ca();
    for _ in 0..5 {
        let out = mesh
            .run("client", &["client", "--addr", &addr, "--bytes", "1000"])
            .unwrap();
        assert!(out.trim().ends_with("echoed=1000"), "{out}");
    }
    // The long-lived connection, established before the CA went away, completes every round.
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert_eq!(rest, "rounds=30\n");
}

#[test]
fn garbage_and_wrong_certificates_on_15008_are_refused_and_counted() {
    let mut mesh = two_node_mesh("l4h");
    mesh.serve("server", 8080).unwrap();
    let hbone = SocketAddr::from((mesh.pod("server").ip, 15008));
    let failures = |mesh: &Mesh| {
        metric(
            &mesh.metrics(1).unwrap(),
            "lanyard_hbone_handshake_failures_total",
            &[],
        )
    };

    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    probe::send_raw(&mesh.nodes[0].netns, hbone, garbage).unwrap();
    lanyard_e2e::wait_for(Duration::from_secs(5), "garbage counted", || {
        (failures(&mesh) == 1.0).then_some(())
    })
    .unwrap();

    let ca = mesh.ca_dir();
    let rogue =
        probe::workload_cert(None, &ca, "spiffe://cluster.local/ns/demo/sa/client").unwrap();
    // TLS 1.3: the client may finish its side before the server rejects its certificate;
    // what matters is that the server refuses and counts it.
    let _ = probe::presented_identities(
        &mesh.nodes[0].netns,
        hbone,
        rogue,
        "spiffe://cluster.local/ns/demo/sa/server",
    );
    lanyard_e2e::wait_for(Duration::from_secs(5), "wrong cert counted", || {
        (failures(&mesh) == 2.0).then_some(())
    })
    .unwrap();

    // The agent is unharmed.
    let addr = format!("{}:8080", mesh.pod("server").ip);
    mesh.run("client", &["client", "--addr", &addr, "--bytes", "10"])
        .unwrap();
}

#[test]
fn a_malformed_object_is_reported_and_the_last_good_state_keeps_serving() {
    let mut mesh = two_node_mesh("l4i");
    mesh.serve("server", 8080).unwrap();
    let addr = format!("{}:8080", mesh.pod("server").ip);
    // A broken new object, and an existing Service-less pod left as it was.
    mesh.extra_yaml = "---\napiVersion: v1\nkind: Pod\nmetadata: {name: broken, namespace: demo, uid: u-broken}\n\
                       spec: {nodeName: node1, containers: [{name: c, ports: [{containerPort: eighty}]}]}\n"
        .into();
    mesh.write_config().unwrap();
    let rejected = lanyard_e2e::wait_for(Duration::from_secs(5), "the rejection to show", || {
        let dump = mesh.config_dump(1).ok()?;
        let r = dump["state"]["rejected"].as_array()?.clone();
        (!r.is_empty()).then_some(r)
    })
    .unwrap();
    assert_eq!(rejected.len(), 1);
    let msg = rejected[0].as_str().unwrap();
    assert!(
        msg.starts_with("Pod demo/broken: spec.containers[0].ports[0].containerPort:"),
        "{msg}"
    );
    assert!(
        mesh.agent_log(1).contains("Pod demo/broken"),
        "rejection is logged"
    );
    let out = mesh
        .run("client", &["client", "--addr", &addr, "--bytes", "10"])
        .unwrap();
    assert!(out.trim().ends_with("echoed=10"));
    assert_eq!(mtls_connections(&mesh, 1, "destination", "server"), 1.0);
}

#[test]
fn a_pod_whose_sandbox_is_recreated_is_enrolled_again_in_its_new_namespace() {
    let mut mesh = two_node_mesh("l4r");
    mesh.serve("server", 8080).unwrap();
    let addr = format!("{}:8080", mesh.pod("server").ip);
    let echoed = |mesh: &Mesh| {
        mesh.run("client", &["client", "--addr", &addr, "--bytes", "10"])
            .ok()
            .filter(|o| o.trim().ends_with("echoed=10"))
    };
    assert!(echoed(&mesh).is_some());
    // Same pod UID and IP, new network namespace: the agent's listeners and BPF entries for
    // the old one reach nothing now.
    mesh.recreate_sandbox("server").unwrap();
    mesh.serve("server", 8080).unwrap();
    lanyard_e2e::wait_for(
        Duration::from_secs(15),
        "the server over the mesh again",
        || echoed(&mesh),
    )
    .unwrap();
    assert!(
        mesh.agent_log(1).contains("pod sandbox recreated"),
        "{}",
        mesh.agent_log(1)
    );
    assert_eq!(mtls_connections(&mesh, 1, "destination", "server"), 2.0);
}

/// Congestion control of each established TCP connection in `pod`'s namespace:
/// (local address, peer address, algorithm).
fn congestion_controls(mesh: &Mesh, pod: &str) -> Vec<(String, String, String)> {
    let out = mesh
        .exec_command(pod, "ss", &["-tinH", "state", "established"])
        .output()
        .expect("ss runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut conns = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(peer)) = (f.get(f.len().wrapping_sub(2)), f.last()) else {
            continue;
        };
        let info = lines
            .next_if(|l| l.starts_with(char::is_whitespace))
            .unwrap_or("");
        let cc = info
            .split_whitespace()
            .find(|t| ["cubic", "reno", "bbr"].contains(t))
            .unwrap_or("?");
        // ss writes IPv4-mapped addresses of dual-stack sockets in brackets.
        let plain = |a: &str| a.replace("[::ffff:", "").replace(']', "");
        conns.push((plain(local), plain(peer), cc.to_string()));
    }
    conns
}

/// The hops between an app and its node's agent never leave the pod's network namespace, so
/// neither of their ends paces, whatever the namespace's default; connections between nodes
/// keep that default.
#[test]
fn only_hops_between_nodes_keep_the_namespaces_congestion_control() {
    let mut mesh = two_node_mesh("l4cc");
    for pod in ["client", "server"] {
        // Reno: a default a namespace other than the node's may choose.
        let s = mesh
            .exec_command(
                pod,
                "sysctl",
                &["-qw", "net.ipv4.tcp_congestion_control=reno"],
            )
            .status()
            .unwrap();
        assert!(s.success());
    }
    mesh.serve("server", 8080).unwrap();
    let server = format!("{}:8080", mesh.pod("server").ip);
    let _held = mesh
        .hold("client", &server, 1, Duration::from_secs(10))
        .unwrap();
    let hbone = format!("{}:15008", mesh.pod("server").ip);
    let client_ip = mesh.pod("client").ip.to_string();

    let client = congestion_controls(&mesh, "client");
    let find = |conns: &[(String, String, String)], what: &str, f: &dyn Fn(&str, &str) -> bool| {
        conns
            .iter()
            .find(|(l, p, _)| f(l, p))
            .map(|c| c.2.clone())
            .unwrap_or_else(|| panic!("no {what} among {conns:?}"))
    };
    let app_to_agent = find(&client, "app to agent", &|_, p| p == "127.0.0.1:15001");
    let agent_from_app = find(&client, "agent from app", &|l, _| l == "127.0.0.1:15001");
    let hbone_out = find(&client, "HBONE out", &|_, p| p == hbone);
    assert_eq!(
        (
            app_to_agent.as_str(),
            agent_from_app.as_str(),
            hbone_out.as_str()
        ),
        ("cubic", "cubic", "reno"),
        "{client:?}"
    );

    let server_side = congestion_controls(&mesh, "server");
    let hbone_in = find(&server_side, "HBONE in", &|l, _| l == hbone);
    let agent_to_app = find(&server_side, "agent to app", &|l, p| {
        p == server && l.starts_with(&format!("{client_ip}:"))
    });
    let app_from_agent = find(&server_side, "app from agent", &|l, p| {
        l == server && p.starts_with(&format!("{client_ip}:"))
    });
    assert_eq!(
        (
            hbone_in.as_str(),
            agent_to_app.as_str(),
            app_from_agent.as_str()
        ),
        ("reno", "cubic", "cubic"),
        "{server_side:?}"
    );
}
