//! The agent's HTTP endpoints: admin (config dump, certificates) on localhost, Prometheus
//! metrics, and readiness.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus::{Encoder, Registry, TextEncoder};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::proxy::ProxyInputs;

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    pub inputs: Arc<ProxyInputs>,
    pub registry: Registry,
    pub enrolled: watch::Receiver<BTreeMap<String, Ipv4Addr>>,
    pub ready: watch::Receiver<bool>,
}

type Body = Full<Bytes>;

fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

fn route(s: &AdminState, path: &str) -> Response<Body> {
    match path {
        "/metrics" => {
            let mut buf = Vec::new();
            match TextEncoder::new().encode(&s.registry.gather(), &mut buf) {
                Ok(()) => respond(StatusCode::OK, "text/plain; version=0.0.4", buf),
                Err(e) => respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    e.to_string(),
                ),
            }
        }
        "/healthz/ready" => {
            if *s.ready.borrow() {
                respond(StatusCode::OK, "text/plain", "ready\n")
            } else {
                respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready: config or capture not loaded\n",
                )
            }
        }
        "/config_dump" => {
            let state = s.inputs.state.borrow().clone();
            let enrolled: BTreeMap<_, _> = s
                .enrolled
                .borrow()
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect();
            let body = json!({
                "node": s.inputs.config.node,
                "mtlsMode": format!("{:?}", s.inputs.config.mtls_mode).to_uppercase(),
                "enrolledPods": enrolled,
                "hbonePoolConnections": s.inputs.pool.size(),
                "state": state.dump(),
            });
            respond(StatusCode::OK, "application/json", body.to_string())
        }
        "/certs" => {
            let certs: Vec<_> = s
                .inputs
                .secrets
                .status()
                .into_iter()
                .map(|c| {
                    let secs = |t: std::time::SystemTime| {
                        t.duration_since(UNIX_EPOCH)
                            .map(|d| d.as_secs())
                            .unwrap_or(0)
                    };
                    json!({
                        "identity": c.identity.to_string(),
                        "state": if c.cert.is_some() { "available" } else { "pending" },
                        "notBefore": c.cert.as_ref().map(|c| secs(c.not_before)),
                        "notAfter": c.cert.as_ref().map(|c| secs(c.not_after)),
                        "lastError": c.last_error.as_deref(),
                    })
                })
                .collect();
            respond(
                StatusCode::OK,
                "application/json",
                serde_json::Value::from(certs).to_string(),
            )
        }
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// Serves HTTP/1.1 on `listener` with `paths` allowed (others answer 404).
pub async fn serve(listener: TcpListener, state: AdminState, paths: &'static [&'static str]) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let path = req.uri().path();
                let resp = if paths.contains(&path) {
                    route(&state, path)
                } else {
                    respond(StatusCode::NOT_FOUND, "text/plain", "not found\n")
                };
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
