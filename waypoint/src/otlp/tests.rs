use std::sync::{Arc, Mutex};

use lanyard_core::state::{EndpointSource, Service};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use super::*;

/// A collector on loopback that keeps every request it gets.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    fn spans(&self) -> Vec<Span> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| s.spans.clone())
            .collect()
    }
}

async fn collector() -> (Collector, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let c = Collector::default();
    let svc = TraceServiceServer::new(c.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (c, format!("http://{addr}"))
}

fn exporter(endpoint: String) -> Exporter {
    Exporter {
        endpoint,
        service_name: "waypoint.demo".into(),
        namespace: "demo".into(),
        flush: Duration::from_millis(20),
    }
}

fn ctx(n: u8) -> SpanContext {
    SpanContext {
        trace_id: [n; 16],
        span_id: [n; 8],
        parent: n.is_multiple_of(2).then_some([0xaa; 8]),
        sampled: true,
        start_unix_nanos: 1_000,
    }
}

fn record(code: u16) -> RequestRecord {
    let service = Service {
        name: "backend".into(),
        namespace: "demo".into(),
        host: None,
        vips: vec![],
        ports: vec![],
        endpoints: EndpointSource::Slices,
        labels: Default::default(),
    };
    RequestRecord {
        method: http::Method::GET,
        path: Some(http::uri::PathAndQuery::from_static("/hello?x=1")),
        authority: "backend".into(),
        service: Some(Arc::new(service)),
        protocol: "http",
        code,
        flags: "-",
        request_id: Some(http::HeaderValue::from_static("rid")),
        ..Default::default()
    }
}

fn attr<'a>(s: &'a Span, key: &str) -> Option<&'a any_value::Value> {
    s.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn counter(registry: &Registry, outcome: &str) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == "lanyard_trace_spans_total")
        .flat_map(|f| f.get_metric())
        .filter(|m| m.get_label().iter().any(|l| l.value() == outcome))
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

async fn wait(mut done: impl FnMut() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn spans_reach_the_collector_in_a_batch_with_ids_and_tags() {
    let (collector, url) = collector().await;
    let registry = Registry::new();
    let sink = exporter(url).start(&registry).unwrap();
    sink.send(ctx(1), record(200));
    sink.send(ctx(2), record(503));
    wait(|| collector.spans().len() == 2).await;

    let requests = collector.0.lock().unwrap().clone();
    assert_eq!(requests.len(), 1, "both spans in one batch");
    let rs = &requests[0].resource_spans[0];
    let resource = rs.resource.as_ref().unwrap();
    assert!(resource
        .attributes
        .contains(&kv("service.name", "waypoint.demo")));
    let spans = collector.spans();
    let (ok, failed) = (&spans[0], &spans[1]);
    assert_eq!(ok.trace_id, vec![1; 16]);
    assert_eq!(ok.span_id, vec![1; 8]);
    assert!(ok.parent_span_id.is_empty(), "a root span");
    assert_eq!(failed.parent_span_id, vec![0xaa; 8]);
    assert_eq!(ok.name, "backend.demo.svc.cluster.local/*");
    assert_eq!(ok.kind, SpanKind::Server as i32);
    assert_eq!(ok.start_time_unix_nano, 1_000);
    assert!(ok.end_time_unix_nano > 1_000);
    assert_eq!(
        attr(ok, "http.url"),
        Some(&any_value::Value::StringValue(
            "http://backend/hello?x=1".into()
        ))
    );
    assert_eq!(
        attr(failed, "http.status_code"),
        Some(&any_value::Value::IntValue(503))
    );
    assert_eq!(ok.status.as_ref().unwrap().code, StatusCode::Unset as i32);
    assert_eq!(
        failed.status.as_ref().unwrap().code,
        StatusCode::Error as i32
    );
    wait(|| counter(&registry, "exported") == 2).await;
    assert_eq!(counter(&registry, "exported"), 2);
}

#[tokio::test]
async fn a_missing_collector_drops_and_counts_spans_without_blocking() {
    // A port that was just free: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let registry = Registry::new();
    let sink = exporter(format!("http://127.0.0.1:{port}"))
        .start(&registry)
        .unwrap();
    sink.send(ctx(1), record(200));
    wait(|| counter(&registry, "export_failed") == 1).await;
    assert_eq!(counter(&registry, "export_failed"), 1);
    assert_eq!(counter(&registry, "exported"), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_full_queue_drops_instead_of_waiting() {
    let (_collector, url) = collector().await;
    let registry = Registry::new();
    let sink = exporter(url).start(&registry).unwrap();
    // The export task cannot run while this loop holds the only thread.
    for _ in 0..QUEUE + 10 {
        sink.send(ctx(1), record(200));
    }
    assert_eq!(counter(&registry, "queue_full"), 10);
}

#[test]
fn only_plaintext_grpc_endpoints_are_accepted() {
    let err = exporter("https://collector:4317".into())
        .start(&Registry::new())
        .err()
        .unwrap();
    assert!(err.to_string().contains("--otlp-endpoint"), "{err}");
}
