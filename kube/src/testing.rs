//! An in-process Kubernetes API server that speaks real list/watch JSON for a handful of
//! collections: lists with a resourceVersion, watch streams of ADDED/MODIFIED/DELETED events
//! from a given version, BOOKMARKs, `410 Gone` for versions older than the last compaction,
//! and an outage switch (connections cut). Enough for kube-rs watchers; nothing else.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};

type Body = BoxBody<Bytes, Infallible>;

#[derive(Clone, Debug)]
enum Msg {
    Event {
        collection: String,
        event: Value,
        namespace: String,
    },
    Bookmark(u64),
    /// Ends every open watch stream (a reconnect, or an outage).
    Close,
}

#[derive(Default)]
struct Collection {
    objects: BTreeMap<(String, String), Value>,
    /// (resourceVersion, watch event) since the start.
    log: Vec<(u64, Value, String)>,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// Watches from a version older than this get `410 Gone`.
    compacted: u64,
    collections: HashMap<String, Collection>,
}

struct Inner {
    state: Mutex<State>,
    /// `410 Gone` answers served so far.
    gone: std::sync::atomic::AtomicUsize,
    tx: broadcast::Sender<Msg>,
    down: AtomicBool,
}

pub struct FakeApiServer {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `apiVersion` + plural → the collection key the URL paths map to.
fn collection_of(obj: &Value) -> String {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    let plural = match obj["kind"].as_str().unwrap_or_default() {
        "Namespace" => "namespaces",
        "Pod" => "pods",
        "Service" => "services",
        "AuthorizationPolicy" => "authorizationpolicies",
        "PeerAuthentication" => "peerauthentications",
        "RequestAuthentication" => "requestauthentications",
        "VirtualService" => "virtualservices",
        "DestinationRule" => "destinationrules",
        other => panic!("the fake API server does not serve {other}"),
    };
    // Istio serves every version from one storage: file them all under v1.
    let group = api_version.rsplit_once('/').map(|(g, _)| g);
    match group {
        Some(g) => format!("{g}/v1/{plural}"),
        None => format!("v1/{plural}"),
    }
}

fn key_of(obj: &Value) -> (String, String) {
    let m = &obj["metadata"];
    (
        m["namespace"].as_str().unwrap_or_default().to_string(),
        m["name"].as_str().unwrap_or_default().to_string(),
    )
}

impl FakeApiServer {
    /// A kubeconfig file's text that points clients (and `KUBECONFIG`) at this server.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: 'http://{}'}}}}]\nusers: [{{name: fake, user: {{}}}}]\ncontexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\ncurrent-context: fake\n",
            self.addr
        )
    }

    pub async fn start() -> FakeApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, _) = broadcast::channel(1024);
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            gone: Default::default(),
            tx,
            down: AtomicBool::new(false),
        });
        let served = inner.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                // Down: connections are cut, as with an unreachable API server (a 503 would
                // be retried inside the client instead).
                if served.down.load(Ordering::SeqCst) {
                    drop(tcp);
                    continue;
                }
                let inner = served.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let inner = inner.clone();
                        async move {
                            if inner.down.load(Ordering::SeqCst) {
                                // Closes the kept-alive connection without an answer.
                                return Err(std::io::Error::other("down"));
                            }
                            Ok(handle(&inner, req))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        FakeApiServer { addr, inner, task }
    }

    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(format!("http://{}", self.addr).parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    /// Creates or replaces an object (ADDED or MODIFIED to watchers).
    pub fn apply(&self, mut obj: Value) {
        let mut s = self.inner.state.lock().unwrap();
        s.rv += 1;
        let rv = s.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let coll = collection_of(&obj);
        let key = key_of(&obj);
        let c = s.collections.entry(coll.clone()).or_default();
        let kind = if c.objects.insert(key.clone(), obj.clone()).is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.record(c, coll, rv, kind, obj, key.0);
    }

    pub fn delete(&self, obj: &Value) {
        let mut s = self.inner.state.lock().unwrap();
        s.rv += 1;
        let rv = s.rv;
        let coll = collection_of(obj);
        let key = key_of(obj);
        let c = s.collections.entry(coll.clone()).or_default();
        if let Some(mut gone) = c.objects.remove(&key) {
            gone["metadata"]["resourceVersion"] = json!(rv.to_string());
            self.record(c, coll, rv, "DELETED", gone, key.0);
        }
    }

    fn record(
        &self,
        c: &mut Collection,
        coll: String,
        rv: u64,
        kind: &str,
        obj: Value,
        ns: String,
    ) {
        let event = json!({"type": kind, "object": obj});
        c.log.push((rv, event.clone(), ns.clone()));
        let _ = self.inner.tx.send(Msg::Event {
            collection: coll,
            event,
            namespace: ns,
        });
    }

    /// Sends a BOOKMARK at the current version on every open watch.
    pub fn bookmark(&self) {
        let rv = self.inner.state.lock().unwrap().rv;
        let _ = self.inner.tx.send(Msg::Bookmark(rv));
    }

    /// Ends every open watch; watchers reconnect from their last version.
    pub fn close_watches(&self) {
        let _ = self.inner.tx.send(Msg::Close);
    }

    /// Forgets history: a watch from any version before now gets `410 Gone`.
    pub fn compact(&self) {
        let mut s = self.inner.state.lock().unwrap();
        s.compacted = s.rv + 1;
    }

    /// How many watches were answered `410 Gone`.
    pub fn gone_count(&self) -> usize {
        self.inner.gone.load(Ordering::SeqCst)
    }

    /// An outage: connections are cut and open watches end.
    pub fn set_down(&self, down: bool) {
        self.inner.down.store(down, Ordering::SeqCst);
        if down {
            self.close_watches();
        }
    }
}

fn full(status: StatusCode, v: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed())
        .unwrap()
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// `/api/v1[/namespaces/NS]/PLURAL` or `/apis/G/V[/namespaces/NS]/PLURAL`.
fn parse_path(path: &str) -> Option<(String, Option<String>)> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (prefix, rest) = match parts.as_slice() {
        ["api", v, rest @ ..] => (v.to_string(), rest.to_vec()),
        ["apis", g, v, rest @ ..] => (format!("{g}/{v}"), rest.to_vec()),
        _ => return None,
    };
    match rest.as_slice() {
        [plural] => Some((format!("{prefix}/{plural}"), None)),
        ["namespaces", ns, plural] => Some((format!("{prefix}/{plural}"), Some(ns.to_string()))),
        _ => None,
    }
}

fn handle(inner: &Arc<Inner>, req: Request<Incoming>) -> Response<Body> {
    let Some((coll, ns)) = parse_path(req.uri().path()) else {
        return full(
            StatusCode::NOT_FOUND,
            status_body(404, "NotFound", "no such path"),
        );
    };
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let in_ns = |obj_ns: &str| ns.as_deref().is_none_or(|n| n == obj_ns);
    let watching = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    let mut state = inner.state.lock().unwrap();
    if !watching {
        let rv = state.rv;
        let items: Vec<Value> = state
            .collections
            .get(&coll)
            .map(|c| {
                c.objects
                    .iter()
                    .filter(|((n, _), _)| in_ns(n))
                    .map(|(_, o)| {
                        // As a real server lists them: items carry no apiVersion or kind.
                        let mut o = o.clone();
                        o.as_object_mut().unwrap().remove("apiVersion");
                        o.as_object_mut().unwrap().remove("kind");
                        o
                    })
                    .collect()
            })
            .unwrap_or_default();
        return full(
            StatusCode::OK,
            json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
        );
    }
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
    let line = |v: &Value| Ok(Frame::data(Bytes::from(format!("{v}\n"))));
    if from < state.compacted {
        inner.gone.fetch_add(1, Ordering::SeqCst);
        let gone = json!({"type": "ERROR", "object": status_body(410, "Expired", "too old resource version")});
        let _ = tx.try_send(line(&gone));
        drop(tx);
    } else {
        let mut sub = inner.tx.subscribe();
        let backlog: Vec<Value> = state
            .collections
            .entry(coll.clone())
            .or_default()
            .log
            .iter()
            .filter(|(rv, _, n)| *rv > from && in_ns(n))
            .map(|(_, e, _)| e.clone())
            .collect();
        drop(state);
        let ns = ns.clone();
        let api_version = coll
            .rsplit_once('/')
            .map(|(p, _)| p.to_string())
            .unwrap_or_default();
        tokio::spawn(async move {
            for e in backlog {
                if tx.send(line(&e)).await.is_err() {
                    return;
                }
            }
            loop {
                let msg = match sub.recv().await {
                    Ok(m) => m,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return,
                };
                let out = match msg {
                    Msg::Close => return,
                    Msg::Bookmark(rv) => {
                        json!({"type": "BOOKMARK", "object": {"apiVersion": api_version, "kind": "Bookmark", "metadata": {"resourceVersion": rv.to_string()}}})
                    }
                    Msg::Event {
                        collection,
                        event,
                        namespace,
                    } => {
                        if collection != coll || ns.as_deref().is_some_and(|n| n != namespace) {
                            continue;
                        }
                        event
                    }
                };
                if tx.send(line(&out)).await.is_err() {
                    return;
                }
            }
        });
    }
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap()
}
