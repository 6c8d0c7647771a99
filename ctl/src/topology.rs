//! `lanyardctl topology`: the service graph, from the Istio metrics agents and waypoints
//! export. Requests come from waypoints (`istio_requests_total{reporter="waypoint"}`),
//! connections from agents (`istio_tcp_connections_opened_total`, the destination's report
//! preferred so that a connection counts once). Hops to and from a waypoint are folded away:
//! the waypoint's own request edges say more about the same traffic.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use clap::Args;
use layout::backends::svg::SVGWriter;
use layout::gv::{DotParser, GraphBuilder};
use prometheus_parse::{Sample, Scrape, Value};
use serde::Serialize;

use crate::output;
use crate::{admin, Error, Outcome, OutputArg};

#[derive(Args)]
pub struct Cmd {
    /// Metrics endpoints of agents and waypoints (`host:port`, default path `/metrics`).
    #[arg(long = "metrics")]
    urls: Vec<String>,
    /// Saved metrics text (Prometheus exposition format), read like an endpoint.
    #[arg(long = "metrics-file")]
    files: Vec<PathBuf>,
    /// Write the graph in Graphviz DOT here.
    #[arg(long)]
    dot: Option<PathBuf>,
    /// Write the graph as SVG here.
    #[arg(long)]
    svg: Option<PathBuf>,
    #[command(flatten)]
    out: OutputArg,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Edge {
    pub source: String,
    pub destination: String,
    /// `http`, `grpc` or `tcp`.
    pub protocol: String,
    pub requests: u64,
    /// Responses with status 5xx (HTTP) or non-OK grpc-status.
    pub errors: u64,
    pub connections: u64,
    /// Whether all of it was mutual TLS.
    pub mtls: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct Graph {
    pub nodes: Vec<String>,
    pub edges: Vec<Edge>,
}

pub fn run(cmd: Cmd) -> Result<Outcome, Error> {
    if cmd.urls.is_empty() && cmd.files.is_empty() {
        return Err(Error::Usage(
            "give at least one --metrics endpoint or --metrics-file".into(),
        ));
    }
    let mut texts = Vec::new();
    for url in &cmd.urls {
        // `host:port` or `http://host:port` get the default path; a given path is kept.
        let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
        let url = if rest.trim_end_matches('/').contains('/') {
            admin::join(url, "")
        } else {
            admin::join(url, "/metrics")
        };
        texts.push(String::from_utf8_lossy(&admin::get(&url)?).into_owned());
    }
    for path in &cmd.files {
        texts.push(std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.clone(),
            source,
        })?);
    }
    let samples = texts.iter().flat_map(|t| parse(t)).collect::<Vec<_>>();
    let graph = build(&samples);
    if let Some(path) = &cmd.dot {
        write(path, dot(&graph))?;
    }
    if let Some(path) = &cmd.svg {
        write(path, svg(&dot(&graph))?)?;
    }
    match output::structured(cmd.out.output, &graph)? {
        Some(text) => println!("{text}"),
        None => print!("{}", text(&graph)),
    }
    Ok(Outcome::Ok)
}

fn write(path: &PathBuf, content: String) -> Result<(), Error> {
    std::fs::write(path, content).map_err(|source| Error::Write {
        path: path.clone(),
        source,
    })
}

fn parse(text: &str) -> Vec<Sample> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    Scrape::parse(lines).map(|s| s.samples).unwrap_or_default()
}

fn value(s: &Sample) -> u64 {
    match s.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v.max(0.0) as u64,
        _ => 0,
    }
}

fn workload(s: &Sample, side: &str) -> String {
    let name = s.labels.get(&format!("{side}_workload")).unwrap_or("");
    let ns = s
        .labels
        .get(&format!("{side}_workload_namespace"))
        .unwrap_or("");
    if name.is_empty() || name == "unknown" {
        // Outside the mesh: the service (or address) is all we know.
        let svc = s.labels.get("destination_service").unwrap_or("");
        return match (side, svc) {
            ("destination", svc) if !svc.is_empty() && svc != "unknown" => svc.to_string(),
            _ => "unknown".to_string(),
        };
    }
    format!("{ns}/{name}")
}

/// Builds the graph from samples of any number of endpoints.
pub fn build(samples: &[Sample]) -> Graph {
    let waypoints: BTreeSet<&str> = samples
        .iter()
        .filter(|s| s.metric == "lanyard_waypoint_info")
        .filter_map(|s| s.labels.get("principal"))
        .collect();
    let through_waypoint = |s: &Sample| {
        ["source_principal", "destination_principal"]
            .iter()
            .any(|k| s.labels.get(k).is_some_and(|p| waypoints.contains(p)))
    };
    let mut edges: BTreeMap<(String, String, String), Edge> = BTreeMap::new();
    let mut insecure: BTreeSet<(String, String, String)> = BTreeSet::new();
    let mut add = |s: &Sample, protocol: &str, f: &dyn Fn(&mut Edge, u64)| {
        let key = (
            workload(s, "source"),
            workload(s, "destination"),
            protocol.to_string(),
        );
        if s.labels.get("connection_security_policy") != Some("mutual_tls") {
            insecure.insert(key.clone());
        }
        let e = edges.entry(key.clone()).or_insert_with(|| Edge {
            source: key.0,
            destination: key.1,
            protocol: key.2,
            ..Default::default()
        });
        f(e, value(s));
    };
    for s in samples.iter().filter(|s| {
        s.metric == "istio_requests_total" && s.labels.get("reporter") == Some("waypoint")
    }) {
        let grpc = s.labels.get("request_protocol") == Some("grpc");
        let failed = if grpc {
            s.labels
                .get("grpc_response_status")
                .is_some_and(|c| c != "0" && !c.is_empty())
        } else {
            s.labels
                .get("response_code")
                .is_some_and(|c| c.starts_with('5'))
        };
        add(s, if grpc { "grpc" } else { "http" }, &|e, v| {
            e.requests += v;
            if failed {
                e.errors += v;
            }
        });
    }
    let tcp: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.metric == "istio_tcp_connections_opened_total" && !through_waypoint(s))
        .collect();
    let reported_by_destination: BTreeSet<(String, String)> = tcp
        .iter()
        .filter(|s| s.labels.get("reporter") == Some("destination"))
        .map(|s| (workload(s, "source"), workload(s, "destination")))
        .collect();
    for s in tcp {
        let pair = (workload(s, "source"), workload(s, "destination"));
        let counts = match s.labels.get("reporter") {
            Some("destination") => true,
            Some("source") => !reported_by_destination.contains(&pair),
            _ => false,
        };
        if counts {
            add(s, "tcp", &|e, v| e.connections += v);
        }
    }
    let mut graph = Graph::default();
    let mut nodes = BTreeSet::new();
    for (key, mut e) in edges {
        e.mtls = !insecure.contains(&key);
        if e.requests == 0 && e.connections == 0 {
            continue;
        }
        nodes.insert(e.source.clone());
        nodes.insert(e.destination.clone());
        graph.edges.push(e);
    }
    graph.nodes = nodes.into_iter().collect();
    graph
}

fn label(e: &Edge) -> String {
    let security = if e.mtls { "mTLS" } else { "plaintext" };
    if e.protocol == "tcp" {
        format!("TCP {} conn, {security}", e.connections)
    } else {
        let pct = e.errors as f64 * 100.0 / e.requests.max(1) as f64;
        format!(
            "{} {} req, {pct:.0}% err, {security}",
            e.protocol.to_uppercase(),
            e.requests
        )
    }
}

pub fn text(g: &Graph) -> String {
    if g.edges.is_empty() {
        return "no traffic recorded yet\n".into();
    }
    let rows: Vec<Vec<String>> = g
        .edges
        .iter()
        .map(|e| {
            let pct = e.errors as f64 * 100.0 / e.requests.max(1) as f64;
            vec![
                e.source.clone(),
                e.destination.clone(),
                e.protocol.to_uppercase(),
                if e.protocol == "tcp" {
                    e.connections
                } else {
                    e.requests
                }
                .to_string(),
                if e.protocol == "tcp" {
                    "-".into()
                } else {
                    format!("{pct:.1}%")
                },
                if e.mtls { "mTLS" } else { "plaintext" }.into(),
            ]
        })
        .collect();
    output::table(
        &[
            "SOURCE",
            "DESTINATION",
            "PROTOCOL",
            "REQUESTS/CONNS",
            "ERRORS",
            "SECURITY",
        ],
        &rows,
    )
}

pub fn dot(g: &Graph) -> String {
    let q = |s: &str| format!("\"{}\"", s.replace('"', "\\\""));
    let mut out = String::from("digraph mesh {\n  rankdir=LR;\n  node [shape=box];\n");
    for n in &g.nodes {
        out.push_str(&format!("  {};\n", q(n)));
    }
    for e in &g.edges {
        let style = match (e.mtls, e.errors) {
            (false, _) => ", color=red, style=dashed",
            (true, 0) => "",
            (true, _) => ", color=orange",
        };
        out.push_str(&format!(
            "  {} -> {} [label={}{style}];\n",
            q(&e.source),
            q(&e.destination),
            q(&label(e))
        ));
    }
    out.push_str("}\n");
    out
}

fn svg(dot: &str) -> Result<String, Error> {
    let graph = DotParser::new(dot)
        .process()
        .map_err(|e| Error::Encode(format!("laying out the graph: {e}")))?;
    let mut builder = GraphBuilder::new();
    builder.visit_graph(&graph);
    let mut visual = builder.get();
    let mut writer = SVGWriter::new();
    visual.do_it(false, false, false, &mut writer);
    Ok(writer.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"
# TYPE istio_tcp_connections_opened_total counter
istio_tcp_connections_opened_total{reporter="source",source_workload="todoui",source_workload_namespace="todo",source_principal="spiffe://cluster.local/ns/todo/sa/todoui",destination_workload="waypoint",destination_workload_namespace="todo",destination_principal="spiffe://cluster.local/ns/todo/sa/waypoint",destination_service="todobackend.todo.svc.cluster.local",connection_security_policy="mutual_tls",response_flags="-"} 7
istio_tcp_connections_opened_total{reporter="destination",source_workload="legacy-client",source_workload_namespace="legacy",source_principal="",destination_workload="echo",destination_workload_namespace="todo",destination_principal="spiffe://cluster.local/ns/todo/sa/echo",destination_service="echo.todo.svc.cluster.local",connection_security_policy="none",response_flags="-"} 2
istio_tcp_connections_opened_total{reporter="source",source_workload="todoui",source_workload_namespace="todo",source_principal="spiffe://cluster.local/ns/todo/sa/todoui",destination_workload="echo",destination_workload_namespace="todo",destination_principal="spiffe://cluster.local/ns/todo/sa/echo",destination_service="echo.todo.svc.cluster.local",connection_security_policy="mutual_tls",response_flags="-"} 4
istio_tcp_connections_opened_total{reporter="destination",source_workload="todoui",source_workload_namespace="todo",source_principal="spiffe://cluster.local/ns/todo/sa/todoui",destination_workload="echo",destination_workload_namespace="todo",destination_principal="spiffe://cluster.local/ns/todo/sa/echo",destination_service="echo.todo.svc.cluster.local",connection_security_policy="mutual_tls",response_flags="-"} 4
# TYPE lanyard_waypoint_info gauge
lanyard_waypoint_info{waypoint="todo/waypoint",principal="spiffe://cluster.local/ns/todo/sa/waypoint"} 1
# TYPE istio_requests_total counter
istio_requests_total{reporter="waypoint",source_workload="todoui",source_workload_namespace="todo",destination_workload="todobackend-v1",destination_workload_namespace="todo",request_protocol="http",response_code="200",grpc_response_status="",connection_security_policy="mutual_tls"} 90
istio_requests_total{reporter="waypoint",source_workload="todoui",source_workload_namespace="todo",destination_workload="todobackend-v1",destination_workload_namespace="todo",request_protocol="http",response_code="503",grpc_response_status="",connection_security_policy="mutual_tls"} 10
"#;

    #[test]
    fn edges_count_each_connection_once_and_fold_waypoint_hops() {
        let g = build(&parse(METRICS));
        let summary: Vec<_> = g
            .edges
            .iter()
            .map(|e| {
                (
                    e.source.as_str(),
                    e.destination.as_str(),
                    e.protocol.as_str(),
                    e.requests,
                    e.errors,
                    e.connections,
                    e.mtls,
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("legacy/legacy-client", "todo/echo", "tcp", 0, 0, 2, false),
                ("todo/todoui", "todo/echo", "tcp", 0, 0, 4, true),
                (
                    "todo/todoui",
                    "todo/todobackend-v1",
                    "http",
                    100,
                    10,
                    0,
                    true
                ),
            ]
        );
        assert_eq!(g.nodes.len(), 4);
        let dot = dot(&g);
        assert!(dot.contains("\"todo/todoui\" -> \"todo/todobackend-v1\" [label=\"HTTP 100 req, 10% err, mTLS\", color=orange]"), "{dot}");
        assert!(dot.contains("color=red, style=dashed"), "{dot}");
        let svg = svg(&dot).unwrap();
        assert!(
            svg.starts_with("<?xml") && svg.contains("todo/todobackend-v1"),
            "{svg}"
        );
    }
}
