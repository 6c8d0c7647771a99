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
use hyper::{Method, Request, Response, StatusCode};
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
    /// TokenReview answers: bearer token → the `status.user` it authenticates as.
    tokens: Mutex<HashMap<String, Value>>,
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

/// A kind's plural, by kube's own rule (what clients put in URL paths).
fn plural_of(kind: &str) -> String {
    let gvk = kube::api::GroupVersionKind::gvk("", "v1", kind);
    kube::discovery::ApiResource::from_gvk(&gvk).plural
}

/// `group/version/plural` (or `v1/plural`): the key URL paths map to. Istio serves every
/// version from one storage, so its kinds are all filed under v1.
fn collection_key(api_version: &str, plural: &str) -> String {
    match api_version.rsplit_once('/') {
        Some((g, _)) if g.ends_with("istio.io") => format!("{g}/v1/{plural}"),
        _ => format!("{api_version}/{plural}"),
    }
}

fn collection_of(obj: &Value) -> String {
    collection_key(
        obj["apiVersion"].as_str().unwrap_or_default(),
        &plural_of(obj["kind"].as_str().unwrap_or_default()),
    )
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
            tokens: Mutex::default(),
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
                            Ok(handle(&inner, req).await)
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
    pub fn apply(&self, obj: Value) {
        self.inner.store(obj);
    }

    pub fn delete(&self, obj: &Value) {
        self.inner.remove(&collection_of(obj), key_of(obj));
    }

    /// An object as stored, by `apiVersion`, kind, namespace and name.
    pub fn get(&self, api_version: &str, kind: &str, ns: &str, name: &str) -> Option<Value> {
        let coll = collection_key(api_version, &plural_of(kind));
        self.inner.lookup(&coll, ns, name)
    }

    /// Every stored object of a kind, in all namespaces.
    pub fn list(&self, api_version: &str, kind: &str) -> Vec<Value> {
        let coll = collection_key(api_version, &plural_of(kind));
        let s = self.inner.state.lock().unwrap();
        s.collections
            .get(&coll)
            .map(|c| c.objects.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Makes TokenReview authenticate `token` as `user` (`{"username": …, "extra": …}`);
    /// any other token is answered as a real server answers a forged or expired one.
    pub fn add_token(&self, token: &str, user: Value) {
        let mut tokens = self.inner.tokens.lock().unwrap();
        tokens.insert(token.to_string(), user);
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

// === impl Inner ===

impl Inner {
    /// Creates or replaces; returns the stored object and whether it is new.
    fn store(&self, mut obj: Value) -> (Value, bool) {
        let mut s = self.state.lock().unwrap();
        s.rv += 1;
        let rv = s.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        if obj["metadata"]["uid"].is_null() {
            obj["metadata"]["uid"] = json!(format!("uid-{rv}"));
        }
        let coll = collection_of(&obj);
        let key = key_of(&obj);
        let c = s.collections.entry(coll.clone()).or_default();
        let created = c.objects.insert(key.clone(), obj.clone()).is_none();
        let kind = if created { "ADDED" } else { "MODIFIED" };
        self.record(c, coll, rv, kind, obj.clone(), key.0);
        (obj, created)
    }

    fn remove(&self, coll: &str, key: (String, String)) -> Option<Value> {
        let mut s = self.state.lock().unwrap();
        s.rv += 1;
        let rv = s.rv;
        let c = s.collections.entry(coll.to_string()).or_default();
        let mut gone = c.objects.remove(&key)?;
        gone["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.record(c, coll.to_string(), rv, "DELETED", gone.clone(), key.0);
        Some(gone)
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
        let _ = self.tx.send(Msg::Event {
            collection: coll,
            event,
            namespace: ns,
        });
    }

    fn lookup(&self, coll: &str, ns: &str, name: &str) -> Option<Value> {
        let s = self.state.lock().unwrap();
        let key = (ns.to_string(), name.to_string());
        s.collections.get(coll)?.objects.get(&key).cloned()
    }

    fn token_review(&self, review: &Value) -> Value {
        let token = review["spec"]["token"].as_str().unwrap_or_default();
        let status = match self.tokens.lock().unwrap().get(token) {
            Some(user) => json!({"authenticated": true, "user": user,
                                 "audiences": review["spec"]["audiences"]}),
            None => json!({"authenticated": false, "error": "invalid bearer token"}),
        };
        let mut review = review.clone();
        review["status"] = status;
        review
    }
}

/// RFC 7386 merge: what a merge patch does, and near enough to what a server-side apply by
/// one field manager does.
fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
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

struct Target {
    collection: String,
    namespace: Option<String>,
    name: Option<String>,
}

/// `/api/v1[/namespaces/NS]/PLURAL[/NAME]` or `/apis/G/V[/namespaces/NS]/PLURAL[/NAME]`.
fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (api_version, rest) = match parts.as_slice() {
        ["api", v, rest @ ..] => (v.to_string(), rest.to_vec()),
        ["apis", g, v, rest @ ..] => (format!("{g}/{v}"), rest.to_vec()),
        _ => return None,
    };
    let (namespace, plural, name) = match rest.as_slice() {
        [plural] => (None, *plural, None),
        ["namespaces", name] => (None, "namespaces", Some(*name)),
        [plural, name] => (None, *plural, Some(*name)),
        ["namespaces", ns, plural] => (Some(*ns), *plural, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
        _ => return None,
    };
    Some(Target {
        collection: collection_key(&api_version, plural),
        namespace: namespace.map(str::to_string),
        name: name.map(str::to_string),
    })
}

/// Create, read, replace, patch and delete of single objects, and TokenReview.
fn handle_object(inner: &Inner, method: &Method, t: &Target, body: Value) -> Response<Body> {
    let ns = t.namespace.clone().unwrap_or_default();
    let not_found = || {
        let msg = format!("{} not found", t.collection);
        full(StatusCode::NOT_FOUND, status_body(404, "NotFound", &msg))
    };
    let placed = |mut obj: Value, name: Option<&str>| {
        if let Some(ns) = &t.namespace {
            obj["metadata"]["namespace"] = json!(ns);
        }
        if let Some(name) = name {
            obj["metadata"]["name"] = json!(name);
        }
        obj
    };
    match (method, t.name.as_deref()) {
        (&Method::POST, None) if t.collection.ends_with("/tokenreviews") => {
            full(StatusCode::CREATED, inner.token_review(&body))
        }
        (&Method::POST, None) => {
            let obj = placed(body, None);
            let name = obj["metadata"]["name"].as_str().unwrap_or_default();
            if inner.lookup(&t.collection, &ns, name).is_some() {
                let msg = format!("{name} already exists");
                return full(
                    StatusCode::CONFLICT,
                    status_body(409, "AlreadyExists", &msg),
                );
            }
            full(StatusCode::CREATED, inner.store(obj).0)
        }
        (&Method::GET, Some(name)) => match inner.lookup(&t.collection, &ns, name) {
            Some(obj) => full(StatusCode::OK, obj),
            None => not_found(),
        },
        (&Method::PUT, Some(name)) => match inner.lookup(&t.collection, &ns, name) {
            Some(_) => full(StatusCode::OK, inner.store(placed(body, Some(name))).0),
            None => not_found(),
        },
        (&Method::PATCH, Some(name)) => {
            let mut obj = inner
                .lookup(&t.collection, &ns, name)
                .unwrap_or_else(|| json!({}));
            merge(&mut obj, &body);
            let (obj, created) = inner.store(placed(obj, Some(name)));
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            full(status, obj)
        }
        (&Method::DELETE, Some(name)) => {
            match inner.remove(&t.collection, (ns, name.to_string())) {
                Some(obj) => full(StatusCode::OK, obj),
                None => not_found(),
            }
        }
        _ => full(
            StatusCode::METHOD_NOT_ALLOWED,
            status_body(405, "MethodNotAllowed", "not served by the fake API server"),
        ),
    }
}

async fn handle(inner: &Arc<Inner>, req: Request<Incoming>) -> Response<Body> {
    let Some(target) = parse_path(req.uri().path()) else {
        return full(
            StatusCode::NOT_FOUND,
            status_body(404, "NotFound", "no such path"),
        );
    };
    if req.method() != Method::GET || target.name.is_some() {
        let method = req.method().clone();
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => Bytes::new(),
        };
        let body = match body.is_empty() {
            true => Value::Null,
            false => match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => {
                    let msg = format!("body is not JSON: {e}");
                    return full(
                        StatusCode::BAD_REQUEST,
                        status_body(400, "BadRequest", &msg),
                    );
                }
            },
        };
        return handle_object(inner, &method, &target, body);
    }
    let (coll, ns) = (target.collection, target.namespace);

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
