//! The agent's HTTP endpoints: admin (config dump, certificates) on localhost, Prometheus
//! metrics, and readiness.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
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

use lanyard_kube::SourceStatus;

use crate::proxy::{Peer, ProxyInputs};

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    pub inputs: Arc<ProxyInputs>,
    pub registry: Registry,
    pub enrolled: watch::Receiver<BTreeMap<String, Ipv4Addr>>,
    pub ready: watch::Receiver<bool>,
    /// How the config source is doing (an API outage is reported, not fatal).
    pub source: watch::Receiver<SourceStatus>,
}

type Body = Full<Bytes>;

fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

fn route(s: &AdminState, path: &str, query: &str) -> Response<Body> {
    match path {
        "/explain" => explain(s, query),
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
                respond(StatusCode::OK, "text/plain", s.source.borrow().readiness())
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

/// `/explain?src=IP&dst=IP&port=P`: would the agent allow this connection, and why. The
/// source counts as its mesh identity when it is a meshed workload, as plaintext otherwise.
fn explain(s: &AdminState, query: &str) -> Response<Body> {
    let params: BTreeMap<&str, &str> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let bad = |msg: String| {
        respond(
            StatusCode::BAD_REQUEST,
            "application/json",
            json!({ "error": msg }).to_string(),
        )
    };
    let (Some(src), Some(dst), Some(port)) =
        (params.get("src"), params.get("dst"), params.get("port"))
    else {
        return bad("usage: /explain?src=<ip>&dst=<ip>&port=<port>".into());
    };
    let (Ok(src), Ok(dst), Ok(port)) = (
        src.parse::<Ipv4Addr>(),
        dst.parse::<Ipv4Addr>(),
        port.parse::<u16>(),
    ) else {
        return bad("src and dst must be IPv4 addresses and port a number".into());
    };
    let state = s.inputs.state.borrow().clone();
    let Some(w) = state.workload_by_ip(dst) else {
        return respond(
            StatusCode::NOT_FOUND,
            "application/json",
            json!({ "error": format!("no workload has IP {dst}") }).to_string(),
        );
    };
    let source = state.workload_by_ip(src);
    let identity = source
        .filter(|w| state.is_captured(w))
        .map(|w| w.identity(state.trust_domain()));
    let peer = Peer {
        ip: src.into(),
        identity: identity.clone(),
    };
    let result = state.admit_inbound(
        s.inputs.config.mtls_mode.into(),
        w,
        &peer,
        SocketAddr::from((dst, port)),
    );
    let (allowed, decided_by, reason, dry_run) = match &result {
        Ok(d) => (
            true,
            d.policy(),
            d.reason.to_string(),
            d.dry_run
                .iter()
                .map(|(p, allow)| json!({"policy": p.to_string(), "wouldAllow": allow}))
                .collect(),
        ),
        Err(denial) => (
            false,
            denial.policy.clone(),
            denial.detail.clone(),
            Vec::new(),
        ),
    };
    let body = json!({
        "source": {"ip": src.to_string(), "workload": source.map(|w| format!("{}/{}", w.namespace, w.name)), "identity": identity.map(|i| i.to_string())},
        "destination": {"ip": dst.to_string(), "port": port, "workload": format!("{}/{}", w.namespace, w.name)},
        "allowed": allowed,
        "decidedBy": (!decided_by.is_empty()).then_some(decided_by),
        "reason": reason,
        "dryRun": dry_run,
        "warnings": state.warnings(),
    });
    respond(StatusCode::OK, "application/json", body.to_string())
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
                    route(&state, path, req.uri().query().unwrap_or_default())
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
