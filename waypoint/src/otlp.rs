//! OTLP span export: sampled requests' spans go to a collector over gRPC
//! (`opentelemetry.proto.collector.trace.v1.TraceService/Export`), in batches, from one
//! task. The request path only hands a finished record to a bounded queue; when the queue
//! is full or the collector fails, spans are dropped and counted, never waited for.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tracing::{info, warn};

use crate::metrics::RequestRecord;
use crate::trace::{self, SpanContext};

/// Spans waiting for export; beyond this they are dropped.
const QUEUE: usize = 4096;
/// Most spans in one export call.
const BATCH: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--otlp-endpoint {0:?}: {1}")]
    Endpoint(String, String),
    #[error("registering the span export metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Where finished requests' spans are handed over.
pub struct SpanSink {
    tx: mpsc::Sender<(SpanContext, RequestRecord, u64)>,
    queue_full: IntCounter,
}

/// Settings of the exporter task.
pub struct Exporter {
    pub endpoint: String,
    /// `service.name` of the spans, `<waypoint>.<namespace>` as Istio names a waypoint.
    pub service_name: String,
    pub namespace: String,
    /// How long a span may wait for companions before its batch is sent.
    pub flush: Duration,
}

struct Counters {
    exported: IntCounter,
    failed: IntCounter,
}

// === impl SpanSink ===

impl SpanSink {
    /// Called when a sampled request ends.
    pub fn send(&self, ctx: SpanContext, rec: RequestRecord) {
        if self.tx.try_send((ctx, rec, trace::unix_nanos())).is_err() {
            self.queue_full.inc();
        }
    }
}

// === impl Exporter ===

impl Exporter {
    /// Starts the export task; the collector is dialed when the first batch is ready, and
    /// again after a failure.
    pub fn start(self, registry: &Registry) -> Result<SpanSink, Error> {
        let bad = |why: &str| Error::Endpoint(self.endpoint.clone(), why.to_string());
        if !self.endpoint.starts_with("http://") {
            return Err(bad(
                "only plaintext gRPC (http://host:4317) collectors are supported",
            ));
        }
        let channel = Endpoint::from_shared(self.endpoint.clone())
            .map_err(|e| bad(&e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect_lazy();
        let spans = IntCounterVec::new(
            Opts::new(
                "lanyard_trace_spans_total",
                "Request spans by what became of them: exported, or dropped because the \
                 export queue was full or the collector failed",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(spans.clone()))?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let counters = Counters {
            exported: spans.with_label_values(&["exported"]),
            failed: spans.with_label_values(&["export_failed"]),
        };
        info!(endpoint = %self.endpoint, "exporting request spans over OTLP");
        tokio::spawn(self.run(TraceServiceClient::new(channel), rx, counters));
        Ok(SpanSink {
            tx,
            queue_full: spans.with_label_values(&["queue_full"]),
        })
    }

    async fn run(
        self,
        mut client: TraceServiceClient<Channel>,
        mut rx: mpsc::Receiver<(SpanContext, RequestRecord, u64)>,
        counters: Counters,
    ) {
        let resource = Resource {
            attributes: vec![
                kv("service.name", &self.service_name),
                kv("k8s.namespace.name", &self.namespace),
            ],
            ..Default::default()
        };
        let scope = InstrumentationScope {
            name: "lanyard-waypoint".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        };
        let mut batch = Vec::with_capacity(BATCH);
        let mut failing = false;
        loop {
            if rx.recv_many(&mut batch, BATCH).await == 0 {
                return;
            }
            if batch.len() < BATCH && rx.len() < BATCH - batch.len() {
                tokio::time::sleep(self.flush).await;
            }
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(s) => batch.push(s),
                    Err(_) => break,
                }
            }
            let n = batch.len() as u64;
            let spans = batch
                .drain(..)
                .map(|(c, r, end)| span(&c, &r, end))
                .collect();
            let request = ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(resource.clone()),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(scope.clone()),
                        spans,
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                }],
            };
            match client.export(request).await {
                Ok(_) => {
                    counters.exported.inc_by(n);
                    if failing {
                        info!(endpoint = %self.endpoint, "span export recovered");
                        failing = false;
                    }
                }
                Err(e) => {
                    counters.failed.inc_by(n);
                    // Once per outage, not per batch.
                    if !failing {
                        warn!(endpoint = %self.endpoint, error = %e.message(), "span export failed; spans are dropped until the collector answers");
                        failing = true;
                    }
                }
            }
        }
    }
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn kv_int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

/// A request's span with the tags Istio's proxies put on theirs, so that existing trace
/// searches (`http.status_code=503`, `response_flags=UO`) find waypoint spans too.
fn span(ctx: &SpanContext, r: &RequestRecord, end_unix_nanos: u64) -> Span {
    let host = match r.service {
        Some(_) => r.dst_service().to_string(),
        None => r.authority.to_string(),
    };
    let mut attributes = vec![
        kv("component", "proxy"),
        kv("http.method", r.method.as_str()),
        kv("http.url", &format!("http://{}{}", r.authority, r.path())),
        kv("http.protocol", r.protocol),
        kv_int("http.status_code", r.code.into()),
        kv("response_flags", r.flags),
        kv("guid:x-request-id", r.request_id()),
        kv("upstream_cluster", r.cluster_name()),
        kv("upstream_address", &r.upstream().to_string()),
        kv("istio.source_principal", r.src_principal()),
        kv_int("request_size", r.request_bytes as i64),
        kv_int("response_size", r.response_bytes as i64),
    ];
    if let Some(s) = r.grpc_status {
        attributes.push(kv("grpc.status_code", &s.to_string()));
    }
    let error = r.code >= 500 || r.code == 0;
    Span {
        trace_id: ctx.trace_id.to_vec(),
        span_id: ctx.span_id.to_vec(),
        parent_span_id: ctx.parent.map(|p| p.to_vec()).unwrap_or_default(),
        // W3C trace flags: sampled.
        flags: 1,
        name: format!("{host}/*"),
        kind: SpanKind::Server as i32,
        start_time_unix_nano: ctx.start_unix_nanos,
        end_time_unix_nano: end_unix_nanos.max(ctx.start_unix_nanos),
        attributes,
        status: Some(Status {
            code: if error {
                StatusCode::Error
            } else {
                StatusCode::Unset
            } as i32,
            message: String::new(),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
