//! An HTTP app and load client for the L7 end-to-end tests, run inside pods:
//!
//! - `serve --port P --name N [--version V] [--fail-every K]`: HTTP/1.1 and HTTP/2 (prior
//!   knowledge); answers JSON describing the request (`name`, `version`, `method`, `path`,
//!   `host`, `headers`); `/status/<code>` answers that code, `/delay/<ms>` waits first; with
//!   `--fail-every K` every K-th request gets 503. gRPC requests (`application/grpc`) get
//!   their messages echoed back with `grpc-status: 0` trailers.
//!   `--jwks FILE` serves that key set at `/jwks.json`.
//! - `load --url U --count N [--concurrency C] [--method M] [--header k:v]… [--h2] [--grpc]`:
//!   sends N requests over keep-alive connections and prints a JSON summary (status counts,
//!   which `name`/`version` served, errors, latency percentiles, the last body).
//!
//! `--cgroup DIR` and `--netns PATH` join a pod before anything else starts.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn args_all(args: &[String], name: &str) -> Vec<String> {
    args.windows(2)
        .filter(|w| w[0] == name)
        .map(|w| w[1].clone())
        .collect()
}

fn join(args: &[String]) {
    if let Some(cg) = arg(args, "--cgroup") {
        std::fs::write(format!("{cg}/cgroup.procs"), std::process::id().to_string())
            .expect("joining cgroup");
    }
    if let Some(ns) = arg(args, "--netns") {
        let f = std::fs::File::open(&ns).expect("opening netns");
        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // Before the runtime starts: its threads inherit this thread's namespace.
    join(&args);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    match args.get(1).map(String::as_str) {
        Some("serve") => rt.block_on(serve(&args)),
        Some("load") => rt.block_on(load(&args)),
        Some("ws") => rt.block_on(ws(&args)),
        _ => {
            eprintln!("usage: e2e-app serve|load …");
            std::process::exit(2);
        }
    }
}

struct App {
    /// Served at `/jwks.json` when given (a local identity provider's keys).
    jwks: Option<String>,
    name: String,
    version: String,
    fail_every: u64,
    count: AtomicU64,
}

async fn serve(args: &[String]) {
    let port: u16 = arg(args, "--port").expect("--port").parse().expect("port");
    let app = Arc::new(App {
        jwks: arg(args, "--jwks").map(|f| std::fs::read_to_string(f).expect("reading --jwks file")),
        name: arg(args, "--name").unwrap_or_else(|| "app".into()),
        version: arg(args, "--version").unwrap_or_else(|| "v1".into()),
        fail_every: arg(args, "--fail-every").map_or(0, |s| s.parse().expect("--fail-every")),
        count: AtomicU64::new(0),
    });
    let l = tokio::net::TcpListener::bind(("0.0.0.0", port))
        .await
        .expect("bind");
    println!("listening");
    loop {
        let Ok((tcp, _)) = l.accept().await else {
            continue;
        };
        let app = app.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |r| handle(app.clone(), r));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

async fn handle(app: Arc<App>, mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let n = app.count.fetch_add(1, Ordering::Relaxed) + 1;
    if let Some(proto) = req.headers().get("upgrade").cloned() {
        // WebSocket-style upgrade: 101, then echo whatever arrives.
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let mut resp = Response::new(full(Bytes::new()));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut()
            .insert("connection", HeaderValue::from_static("upgrade"));
        resp.headers_mut().insert("upgrade", proto);
        return Ok(resp);
    }
    let grpc = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        return Ok(grpc_echo(req).await);
    }
    let path = req.uri().path().to_string();
    if let (Some(jwks), "/jwks.json") = (&app.jwks, path.as_str()) {
        let mut resp = Response::new(full(jwks.clone()));
        resp.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/json"));
        return Ok(resp);
    }
    let headers: BTreeMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    let host = req
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let method = req.method().to_string();
    let body_len = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    let mut status = StatusCode::OK;
    if let Some(ms) = path.strip_prefix("/delay/").and_then(|s| s.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(code) = path.strip_prefix("/status/").and_then(|s| s.parse().ok()) {
        status = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    }
    if app.fail_every > 0 && n.is_multiple_of(app.fail_every) {
        status = StatusCode::SERVICE_UNAVAILABLE;
    }
    let body = json!({"name": app.name, "version": app.version, "method": method, "path": path,
                      "host": host, "headers": headers, "bodyLen": body_len, "n": n});
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    resp.headers_mut().insert(
        "x-served-by",
        HeaderValue::from_str(&app.name).expect("name"),
    );
    Ok(resp)
}

/// Echoes each gRPC message as it arrives (so streaming works), then `grpc-status: 0`.
async fn grpc_echo(req: Request<Incoming>) -> Response<Body> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(16);
    let mut body = req.into_body();
    tokio::spawn(async move {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                if tx.send(Ok(Frame::data(data))).await.is_err() {
                    return;
                }
            }
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let _ = tx.send(Ok(Frame::trailers(trailers))).await;
    });
    let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut resp = Response::new(StreamBody::new(stream).boxed());
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    resp
}

fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + msg.len());
    b.extend_from_slice(&[0]);
    b.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    b.extend_from_slice(msg);
    b.freeze()
}

/// Upgrades one HTTP/1.1 connection (`Upgrade: websocket`), sends `--text`, and prints the
/// status and what came back.
async fn ws(args: &[String]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let url: http::Uri = arg(args, "--url").expect("--url").parse().expect("url");
    let text = arg(args, "--text").unwrap_or_else(|| "ping".into());
    let authority = url.authority().expect("authority").to_string();
    let mut s = tokio::net::TcpStream::connect(&authority)
        .await
        .expect("connect");
    let req = format!(
        "GET {} HTTP/1.1\r\nhost: {authority}\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n",
        url.path()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
        if s.read(&mut b).await.expect("read") == 0 {
            break;
        }
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status: u16 = head.get(9..12).and_then(|x| x.parse().ok()).unwrap_or(0);
    let mut echo = vec![0u8; text.len()];
    if status == 101 {
        s.write_all(text.as_bytes()).await.expect("write");
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echo)).await;
    }
    println!(
        "{}",
        json!({"status": status, "echo": String::from_utf8_lossy(&echo)})
    );
}

async fn load(args: &[String]) {
    let url: http::Uri = arg(args, "--url").expect("--url").parse().expect("url");
    let count: usize = arg(args, "--count").map_or(1, |s| s.parse().expect("count"));
    let conc: usize = arg(args, "--concurrency").map_or(1, |s| s.parse().expect("concurrency"));
    let method = arg(args, "--method").unwrap_or_else(|| "GET".into());
    let h2 = args.iter().any(|a| a == "--h2");
    let grpc_messages: usize = arg(args, "--grpc").map_or(0, |s| s.parse().expect("--grpc N"));
    let headers: Vec<(String, String)> = args_all(args, "--header")
        .into_iter()
        .filter_map(|h| {
            h.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let mut b = Client::builder(TokioExecutor::new());
    b.http2_only(h2 || grpc_messages > 0);
    let client: Client<_, Body> = b.build_http();
    let next = Arc::new(AtomicU64::new(0));
    let results = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..conc.max(1) {
        let (client, url, method, headers, next, results) = (
            client.clone(),
            url.clone(),
            method.clone(),
            headers.clone(),
            next.clone(),
            results.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while (next.fetch_add(1, Ordering::Relaxed) as usize) < count {
                let mut req = Request::builder().method(method.as_str()).uri(url.clone());
                for (k, v) in &headers {
                    req = req.header(k, v);
                }
                let body = if grpc_messages > 0 {
                    req = req
                        .header("content-type", "application/grpc")
                        .header("te", "trailers");
                    let frames: Vec<_> = (0..grpc_messages)
                        .map(|i| grpc_frame(format!("message {i}").as_bytes()))
                        .collect();
                    full(frames.concat())
                } else {
                    full(Bytes::new())
                };
                let start = Instant::now();
                let outcome = match tokio::time::timeout(
                    Duration::from_secs(20),
                    client.request(req.body(body).expect("request")),
                )
                .await
                {
                    Ok(Ok(resp)) => {
                        let status = resp.status().as_u16();
                        let served = resp
                            .headers()
                            .get("x-served-by")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string();
                        let mut grpc_status = resp
                            .headers()
                            .get("grpc-status")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string);
                        let collected = resp.into_body().collect().await;
                        let (body, trailers) = match collected {
                            Ok(c) => {
                                let t = c.trailers().cloned();
                                (c.to_bytes(), t)
                            }
                            Err(_) => (Bytes::new(), None),
                        };
                        if let Some(t) = trailers {
                            grpc_status = t
                                .get("grpc-status")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string);
                        }
                        let text = String::from_utf8_lossy(&body).into_owned();
                        let version = serde_json::from_str::<serde_json::Value>(&text)
                            .ok()
                            .and_then(|v| v["version"].as_str().map(str::to_string))
                            .unwrap_or_default();
                        Ok((status, served, version, text, grpc_status, body.len()))
                    }
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("timeout".to_string()),
                };
                results.lock().unwrap().push((start.elapsed(), outcome));
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let results = std::mem::take(&mut *results.lock().unwrap());
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    let mut served: BTreeMap<String, u64> = BTreeMap::new();
    let mut versions: BTreeMap<String, u64> = BTreeMap::new();
    let mut grpc: BTreeMap<String, u64> = BTreeMap::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut lat: Vec<f64> = Vec::new();
    let mut last_body = String::new();
    let mut body_bytes = 0;
    for (d, o) in results {
        lat.push(d.as_secs_f64() * 1000.0);
        match o {
            Ok((status, who, version, body, gs, n)) => {
                *statuses.entry(status.to_string()).or_default() += 1;
                *served.entry(who).or_default() += 1;
                *versions.entry(version).or_default() += 1;
                if let Some(g) = gs {
                    *grpc.entry(g).or_default() += 1;
                }
                body_bytes += n;
                last_body = body;
            }
            Err(e) => *errors.entry(e).or_default() += 1,
        }
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    println!(
        "{}",
        json!({"statuses": statuses, "servedBy": served, "versions": versions, "grpcStatus": grpc,
               "errors": errors, "p50Ms": pct(0.5), "p99Ms": pct(0.99), "minMs": lat.first(), "maxMs": lat.last(),
               "bodyBytes": body_bytes, "lastBody": last_body})
    );
}
