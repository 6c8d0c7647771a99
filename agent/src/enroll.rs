//! Keeps capture in step with the mesh state: every local pod that the mesh captures gets a
//! running `PodProxy`; every other pod gets none. Pods whose network namespace cannot be found
//! yet (not started) are retried, and a pod whose sandbox is recreated (a new network
//! namespace under the same UID) is enrolled again in the new one.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lanyard_core::identity::Identity;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::capture::netns::{self, Netns};
use crate::proxy::{PodProxy, ProxyInputs};

pub struct Enroller {
    inputs: Arc<ProxyInputs>,
    host: Arc<OwnedFd>,
    pods: HashMap<String, PodProxy>,
    /// Last error per pod, so that a pod failing every retry is reported once per change.
    last_error: HashMap<String, String>,
    enrolled_tx: watch::Sender<BTreeMap<String, Ipv4Addr>>,
    /// When enrolled pods' namespaces were last compared with their current sandboxes.
    sandboxes_checked: Instant,
}

/// How often enrolled pods are checked for a recreated sandbox: a cgroup walk per pod, so
/// not on every reconcile.
const SANDBOX_CHECK: Duration = Duration::from_secs(3);

// === impl Enroller ===

impl Enroller {
    pub fn new(
        inputs: Arc<ProxyInputs>,
        host: Arc<OwnedFd>,
    ) -> (Self, watch::Receiver<BTreeMap<String, Ipv4Addr>>) {
        let (enrolled_tx, rx) = watch::channel(BTreeMap::new());
        let me = Self {
            inputs,
            host,
            pods: HashMap::new(),
            last_error: HashMap::new(),
            enrolled_tx,
            sandboxes_checked: Instant::now(),
        };
        (me, rx)
    }

    pub async fn run(mut self) {
        let mut state = self.inputs.state.clone();
        let retry = self.inputs.config.enroll_retry;
        let mut checked: Option<Arc<lanyard_core::state::MeshState>> = None;
        loop {
            self.reconcile();
            // Policies may have changed: re-check live connections (once per new state).
            let current = self.inputs.state.borrow().clone();
            if !checked.as_ref().is_some_and(|c| Arc::ptr_eq(c, &current)) {
                for p in self.pods.values() {
                    p.ctx.revalidate(&current);
                }
                checked = Some(current);
            }
            tokio::select! {
                changed = state.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(retry) => {}
            }
        }
    }

    fn reconcile(&mut self) {
        let state = self.inputs.state.borrow().clone();
        let node = self.inputs.config.node.clone();
        let desired: HashMap<&str, _> = state
            .workloads_on_node(&node)
            .filter(|w| state.is_captured(w))
            .filter_map(|w| Some((w.uid.as_str(), (w.clone(), w.ip?))))
            .collect();

        let stale: Vec<String> = self
            .pods
            .iter()
            .filter(|(uid, p)| {
                desired
                    .get(uid.as_str())
                    .is_none_or(|(_, ip)| *ip != p.ctx.ip)
            })
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in stale {
            if let Some(p) = self.pods.remove(&uid) {
                info!(target: "enroll", pod = %p.ctx.workload.name, namespace = %p.ctx.workload.namespace, "pod unenrolled");
            }
        }
        if self.sandboxes_checked.elapsed() >= SANDBOX_CHECK {
            self.sandboxes_checked = Instant::now();
            let config = &self.inputs.config;
            // No process right now (mid-restart) proves nothing: checked again next time.
            let recreated: Vec<String> = self
                .pods
                .iter()
                .filter(|(uid, p)| {
                    netns::find_pod_netns_path(&config.cgroup_root, &config.proc_root, uid)
                        .is_ok_and(|path| !p.ctx.netns.is_at(&path))
                })
                .map(|(uid, _)| uid.clone())
                .collect();
            for uid in recreated {
                if let Some(p) = self.pods.remove(&uid) {
                    info!(target: "enroll", pod = %p.ctx.workload.name, namespace = %p.ctx.workload.namespace, "pod sandbox recreated: enrolling it again");
                }
            }
        }

        for (uid, (workload, ip)) in &desired {
            if self.pods.contains_key(*uid) {
                continue;
            }
            let config = &self.inputs.config;
            let started = netns::find_pod_netns_path(&config.cgroup_root, &config.proc_root, uid)
                .and_then(|path| Netns::open(&path, self.host.clone(), uid))
                .map_err(|e| e.to_string())
                .and_then(|ns| {
                    PodProxy::start(self.inputs.clone(), workload.clone(), *ip, ns)
                        .map_err(|e| e.to_string())
                });
            match started {
                Ok(proxy) => {
                    info!(target: "enroll", pod = %workload.name, namespace = %workload.namespace, %ip, "pod enrolled");
                    self.last_error.remove(*uid);
                    self.pods.insert(uid.to_string(), proxy);
                }
                Err(e) => {
                    if self.last_error.get(*uid) != Some(&e) {
                        warn!(target: "enroll", pod = %workload.name, namespace = %workload.namespace, "cannot enroll yet: {e}");
                        self.last_error.insert(uid.to_string(), e);
                    }
                }
            }
        }
        self.last_error
            .retain(|uid, _| desired.contains_key(uid.as_str()));

        // Certificates are kept only for identities a local enrolled pod still has.
        let in_use: std::collections::HashSet<&Identity> =
            self.pods.values().map(|p| &p.ctx.identity).collect();
        for status in self.inputs.secrets.status() {
            if !in_use.contains(&status.identity) {
                self.inputs.secrets.forget(&status.identity);
            }
        }
        let enrolled = self
            .pods
            .values()
            .map(|p| {
                (
                    format!("{}/{}", p.ctx.workload.namespace, p.ctx.workload.name),
                    p.ctx.ip,
                )
            })
            .collect();
        self.enrolled_tx.send_if_modified(|old| {
            let changed = *old != enrolled;
            *old = enrolled;
            changed
        });
    }
}
