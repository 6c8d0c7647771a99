//! Watches every kind (`kinds::ALL`) with kube-rs watchers (list then watch, bookmarks,
//! relist on `410 Gone`, backoff on errors), keeps the pruned objects, and publishes a new
//! `MeshState` built by the same `Store` the file source uses.
//!
//! Nothing is published until every watch has listed once: a state built before the
//! AuthorizationPolicies arrive would allow what they deny. While the API server is
//! unreachable the last state keeps serving and `SourceStatus` says which watches fail.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, DynamicObject, ListParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use lanyard_core::config::{Rejection, Store};
use lanyard_core::state::{MeshState, Settings};
use serde_json::Value;
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use crate::events::RejectionEvents;
use crate::kinds::{self, Kind};
use crate::prune::prune;

/// Which objects to watch.
#[derive(Clone, Debug, Default)]
pub enum Scope {
    /// Everything, cluster-wide (a node agent).
    #[default]
    Cluster,
    /// Istio config only in these namespaces (a waypoint: its own and the root namespace);
    /// namespaces, pods and services cluster-wide, since routes may lead anywhere.
    IstioIn(Vec<String>),
}

/// How the watches are doing, for readiness and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceStatus {
    /// Every watch has listed once: the published state is complete.
    pub synced: bool,
    /// Watches failing now (`Kind namespace`), with their last error.
    pub failing: BTreeMap<String, String>,
}

impl SourceStatus {
    pub fn connected(&self) -> bool {
        self.failing.is_empty()
    }

    /// The body of a ready answer: still ready while the API server is away, since the last
    /// good config keeps serving, but saying so.
    pub fn readiness(&self) -> String {
        if self.connected() {
            "ready\n".into()
        } else {
            format!("ready; config source: {}\n", self.detail())
        }
    }

    /// One line for a readiness endpoint or a log.
    pub fn detail(&self) -> String {
        match (self.synced, self.failing.iter().next()) {
            (false, None) => "waiting for the first list of every kind".into(),
            (_, Some((w, e))) => format!(
                "API server unreachable ({} watch(es) failing, e.g. {w}: {e}); {}",
                self.failing.len(),
                if self.synced {
                    "serving the last good config"
                } else {
                    "no config yet"
                }
            ),
            (true, None) => "synced".into(),
        }
    }
}

/// One watch: a kind, cluster-wide or in one namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct WatchId {
    kind: &'static str,
    namespace: Option<String>,
}

impl std::fmt::Display for WatchId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} in {ns}", self.kind),
            None => f.write_str(self.kind),
        }
    }
}

/// The objects every watch holds, by (namespace, name).
#[derive(Default)]
struct Objects {
    by_watch: HashMap<WatchId, BTreeMap<(String, String), Value>>,
}

pub struct KubeSource {
    client: Client,
    settings: Arc<Settings>,
    scope: Scope,
    /// Changes closer together than this are published as one state.
    debounce: Duration,
    /// Set on the one component that posts rejections as Events.
    events: Option<RejectionEvents>,
}

// === impl KubeSource ===

impl KubeSource {
    pub fn new(client: Client, settings: Arc<Settings>, scope: Scope) -> Self {
        KubeSource {
            client,
            settings,
            scope,
            debounce: Duration::from_millis(100),
            events: None,
        }
    }

    /// Also posts each new rejection as a Kubernetes Event on the rejected object.
    pub fn report_rejections(mut self, events: RejectionEvents) -> Self {
        self.events = Some(events);
        self
    }

    fn watches(&self) -> Vec<(Kind, Option<String>)> {
        kinds::ALL
            .iter()
            .flat_map(|k| match (&self.scope, k.istio) {
                (Scope::IstioIn(nss), true) => {
                    nss.iter().map(|ns| (*k, Some(ns.clone()))).collect()
                }
                _ => vec![(*k, None)],
            })
            .collect()
    }

    /// Runs until `states` has no receiver left.
    pub async fn run(
        self,
        states: watch::Sender<Arc<MeshState>>,
        status: watch::Sender<SourceStatus>,
    ) {
        let objects = Arc::new(Mutex::new(Objects::default()));
        let changed = Arc::new(Notify::new());
        let status = Arc::new(status);
        let watches = self.watches();
        let mut tasks = Vec::new();
        let mut apis = Vec::new();
        for (kind, ns) in &watches {
            let api: Api<DynamicObject> = match ns {
                Some(ns) => Api::namespaced_with(self.client.clone(), ns, &kind.api_resource()),
                None => Api::all_with(self.client.clone(), &kind.api_resource()),
            };
            let id = WatchId {
                kind: kind.kind,
                namespace: ns.clone(),
            };
            apis.push((id.to_string(), api.clone()));
            tasks.push(tokio::spawn(watch_kind(
                *kind,
                id,
                api,
                objects.clone(),
                changed.clone(),
                status.clone(),
            )));
        }
        tasks.push(tokio::spawn(probe_failing(apis, status.clone())));
        let ids: Vec<WatchId> = watches
            .iter()
            .map(|(k, ns)| WatchId {
                kind: k.kind,
                namespace: ns.clone(),
            })
            .collect();
        let mut store = Store::new(&self.settings.cluster_domain);
        let mut reported: Vec<Rejection> = Vec::new();
        loop {
            tokio::select! {
                _ = changed.notified() => {}
                _ = states.closed() => break,
            }
            tokio::time::sleep(self.debounce).await;
            // Copied out under the lock; validated and built without it.
            let docs: Option<Vec<Value>> = {
                let objects = objects.lock().unwrap_or_else(|p| p.into_inner());
                ids.iter()
                    .all(|id| objects.by_watch.contains_key(id))
                    .then(|| {
                        objects
                            .by_watch
                            .values()
                            .flat_map(|m| m.values().cloned())
                            .collect()
                    })
            };
            let Some(docs) = docs else { continue };
            // Events name the object's apiVersion and uid: keep the objects only for them.
            let kept = self.events.as_ref().map(|_| docs.clone());
            let snapshot = store.update(docs);
            for r in snapshot.rejections.iter().filter(|r| !reported.contains(r)) {
                warn!(target: "config", object = %r.object, field = %r.field, "rejected: {}", r.message);
                if let (Some(events), Some(docs)) = (&self.events, &kept) {
                    events.report(r, docs);
                }
            }
            reported = snapshot.rejections.clone();
            let state = MeshState::build(snapshot, &self.settings);
            info!(target: "config", workloads = state.workload_count(), services = state.service_count(),
                  rejected = state.rejections().len(), "config loaded from the Kubernetes API");
            if states.send(Arc::new(state)).is_err() {
                break;
            }
            status.send_if_modified(|s| !std::mem::replace(&mut s.synced, true));
        }
        for t in tasks {
            t.abort();
        }
    }
}

/// One watcher: keeps `objects[id]` equal to what the API server holds, relisting after a
/// `410 Gone` (kube-rs restarts with `Init` … `InitDone`, replacing the set whole).
async fn watch_kind(
    kind: Kind,
    id: WatchId,
    api: Api<DynamicObject>,
    objects: Arc<Mutex<Objects>>,
    changed: Arc<Notify>,
    status: Arc<watch::Sender<SourceStatus>>,
) {
    let key = |o: &DynamicObject| {
        (
            o.metadata.namespace.clone().unwrap_or_default(),
            o.metadata.name.clone().unwrap_or_default(),
        )
    };
    let to_value = |o: DynamicObject| prune(&kind, serde_json::to_value(o).unwrap_or_default());
    let mut relist: BTreeMap<(String, String), Value> = BTreeMap::new();
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                let msg = e.to_string();
                status.send_if_modified(|s| {
                    s.failing.insert(id.to_string(), msg.clone()).as_ref() != Some(&msg)
                });
                continue;
            }
        };
        status.send_if_modified(|s| s.failing.remove(&id.to_string()).is_some());
        let mut objs = objects.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            Event::Init => {
                relist.clear();
                continue;
            }
            Event::InitApply(o) => {
                relist.insert(key(&o), to_value(o));
                continue;
            }
            Event::InitDone => {
                objs.by_watch
                    .insert(id.clone(), std::mem::take(&mut relist));
            }
            Event::Apply(o) => {
                objs.by_watch
                    .entry(id.clone())
                    .or_default()
                    .insert(key(&o), to_value(o));
            }
            Event::Delete(o) => {
                objs.by_watch
                    .entry(id.clone())
                    .or_default()
                    .remove(&key(&o));
            }
        }
        drop(objs);
        changed.notify_one();
    }
}

/// A watch that resumes without news yields no event to say it is healthy again: while some
/// watches are failing, list one object of each every few seconds, and clear those that
/// answer. Errors are left for the watchers to report.
async fn probe_failing(
    apis: Vec<(String, Api<DynamicObject>)>,
    status: Arc<watch::Sender<SourceStatus>>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let failing: Vec<String> = status.borrow().failing.keys().cloned().collect();
        let one = ListParams::default().limit(1);
        for (id, api) in apis.iter().filter(|(id, _)| failing.contains(id)) {
            let probe = api.list(&one);
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(5), probe).await {
                status.send_if_modified(|s| s.failing.remove(id).is_some());
            }
        }
    }
}
