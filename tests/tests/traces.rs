//! Request tracing end to end: a waypoint with an OTLP endpoint joins the client's trace,
//! hands the backend a context whose parent is the waypoint's span, and exports that span
//! to a collector.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lanyard_e2e::{in_netns, metric, wait_for, Mesh, PodSpec, ServiceSpec};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::Value;

const URL: &str = "http://10.96.0.20:80";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// An OTLP collector listening inside a pod's network namespace, served from this process.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans = request
            .into_inner()
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans);
        self.0.lock().unwrap().extend(spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Stops the collector's runtime when the test ends.
struct Running(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

fn start_collector(netns: &str, addr: &str) -> (Collector, Running) {
    let addr = addr.to_string();
    let listener = in_netns(netns, move || std::net::TcpListener::bind(addr))
        .expect("collector port in the waypoint's netns");
    listener.set_nonblocking(true).unwrap();
    let collector = Collector::default();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let svc = TraceServiceServer::new(collector.clone());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async {
                        let _ = rx.await;
                    },
                )
                .await;
        });
    });
    (collector, Running(Some(tx)))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The traceparent the backend received in the last response of a load run.
fn backend_traceparent(r: &Value) -> String {
    let body: Value = serde_json::from_str(r["lastBody"].as_str().unwrap()).unwrap();
    body["headers"]["traceparent"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn the_waypoint_joins_traces_and_exports_its_spans_over_otlp() {
    let mut mesh = Mesh::builder("trace")
        .nodes(2)
        .namespace("demo", true)
        .waypoint("demo")
        .waypoint_args(&[
            "--otlp-endpoint",
            "http://127.0.0.1:4317",
            "--trace-sampling",
            "100",
        ])
        .pod(PodSpec::new("client", "demo").node(0))
        .pod(PodSpec::new("backend", "demo").node(1))
        .service(
            ServiceSpec::new("backend", "demo", Ipv4Addr::new(10, 96, 0, 20))
                .named_port("http", 80, 8080),
        )
        .start()
        .expect("mesh starts");
    mesh.serve_http("backend", 8080, &[]).unwrap();
    let (collector, _running) = start_collector(&mesh.pod("waypoint-demo").netns, "127.0.0.1:4317");
    let spans = || collector.0.lock().unwrap().clone();

    // A sampled caller: the backend continues the same trace from the waypoint's span.
    let tp = format!("traceparent:00-{TRACE}-{PARENT}-01");
    let r = mesh
        .load(
            "client",
            &[
                "--url",
                &format!("{URL}/a"),
                "--count",
                "5",
                "--header",
                &tp,
            ],
        )
        .unwrap();
    assert_eq!(r["statuses"]["200"], 5, "{r}");
    let forwarded = backend_traceparent(&r);
    let parts: Vec<&str> = forwarded.split('-').collect();
    assert_eq!(parts.len(), 4, "{forwarded}");
    assert_eq!(
        (parts[0], parts[1], parts[3]),
        ("00", TRACE, "01"),
        "{forwarded}"
    );
    assert_ne!(
        parts[2], PARENT,
        "the waypoint's own span is the backend's parent"
    );

    let joined = wait_for(
        Duration::from_secs(10),
        "5 spans of the caller's trace",
        || {
            let s: Vec<Span> = spans()
                .into_iter()
                .filter(|s| hex(&s.trace_id) == TRACE)
                .collect();
            (s.len() == 5).then_some(s)
        },
    )
    .unwrap();
    assert!(joined.iter().all(|s| hex(&s.parent_span_id) == PARENT));
    assert!(
        joined.iter().any(|s| hex(&s.span_id) == parts[2]),
        "the exported span is the one the backend saw as its parent"
    );
    let s = &joined[0];
    assert_eq!(s.name, "backend.demo.svc.cluster.local/*");
    assert!(s.end_time_unix_nano >= s.start_time_unix_nano && s.start_time_unix_nano > 0);

    // No caller context: the waypoint starts a trace (sampling 100 %) and the backend gets it.
    let r = mesh
        .load("client", &["--url", &format!("{URL}/b"), "--count", "3"])
        .unwrap();
    let forwarded = backend_traceparent(&r);
    let new_trace = forwarded.split('-').nth(1).unwrap_or_default().to_string();
    assert_eq!(new_trace.len(), 32, "{forwarded}");
    let root = wait_for(Duration::from_secs(10), "the new trace's root span", || {
        spans().into_iter().find(|s| hex(&s.trace_id) == new_trace)
    })
    .unwrap();
    assert!(
        root.parent_span_id.is_empty(),
        "a new trace's span is its root"
    );

    // A caller that decided not to sample: propagated as such, nothing exported.
    let unsampled = "1bf92f3577b34da6a3ce929d0e0e4736";
    let tp = format!("traceparent:00-{unsampled}-{PARENT}-00");
    let r = mesh
        .load(
            "client",
            &[
                "--url",
                &format!("{URL}/c"),
                "--count",
                "3",
                "--header",
                &tp,
            ],
        )
        .unwrap();
    assert!(backend_traceparent(&r).ends_with("-00"), "{r}");

    // The export counter covers all sampled requests (5 + 3) and nothing else.
    let exported = || {
        let text = mesh.waypoint_metrics("demo").ok()?;
        Some(metric(
            &text,
            "lanyard_trace_spans_total",
            &[("outcome", "exported")],
        ))
    };
    wait_for(Duration::from_secs(10), "8 exported spans", || {
        exported().filter(|&n| n >= 8.0)
    })
    .unwrap();
    // Longer than the export flush interval (1 s): a late ninth span would show.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(exported(), Some(8.0));
    assert!(
        spans().iter().all(|s| hex(&s.trace_id) != unsampled),
        "an unsampled trace is not exported"
    );
    assert_eq!(spans().len(), 8);
}
