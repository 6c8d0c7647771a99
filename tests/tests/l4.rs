//! The L4 mesh end to end: real CA, real agents, pods in network namespaces.

use std::time::Duration;

use lanyard_e2e::{metric, Mesh, PodSpec};

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
