//! The waypoint's HTTP endpoints: config dump (localhost), Prometheus metrics, readiness.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus::{Encoder, Registry, TextEncoder};
use serde_json::json;
use tokio::net::TcpListener;

use lanyard_kube::SourceStatus;
use tokio::sync::watch;

use crate::route::Inputs;

#[derive(Clone)]
pub struct AdminState {
    pub inputs: Arc<Inputs>,
    pub registry: Registry,
    /// How the config source is doing (an API outage is reported, not fatal).
    pub source: watch::Receiver<SourceStatus>,
}

fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

fn route(s: &AdminState, path: &str) -> Response<Full<Bytes>> {
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
        "/healthz/ready" => respond(StatusCode::OK, "text/plain", s.source.borrow().readiness()),
        "/config_dump" => {
            let state = s.inputs.state.borrow().clone();
            let c = &s.inputs.config;
            let mut dump = state.dump();
            dump["waypoint"] = json!({"name": c.waypoint.name, "namespace": c.waypoint.namespace, "identity": c.identity.to_string()});
            dump["virtualServices"] = state
                .virtual_services()
                .iter()
                .map(|v| json!({"name": format!("{}/{}", v.namespace, v.name),
                               "hosts": v.hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
                               "httpRoutes": v.http.len(), "tcpRoutes": v.tcp.len(), "fault": v.has_fault()}))
                .collect();
            dump["destinationRules"] = state
                .destination_rules()
                .iter()
                .map(|d| json!({"name": format!("{}/{}", d.namespace, d.name), "host": d.host.to_string(),
                               "subsets": d.subsets.iter().map(|s| s.name.clone()).collect::<Vec<_>>()}))
                .collect();
            respond(
                StatusCode::OK,
                "application/json",
                serde_json::to_vec_pretty(&dump).unwrap_or_default(),
            )
        }
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// Serves `allowed` paths of the admin API on `listener`.
pub async fn serve(listener: TcpListener, state: AdminState, allowed: &'static [&'static str]) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let path = req.uri().path().to_string();
                let resp = if allowed.contains(&path.as_str()) {
                    route(&state, &path)
                } else {
                    respond(StatusCode::NOT_FOUND, "text/plain", "not found\n")
                };
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}
