//! Rejected objects reported as Kubernetes Events, so `kubectl describe` and `kubectl get
//! events` show them next to the object: one Warning per rejection, naming the field. One
//! component per cluster reports (the CA, with `--report-rejections`), not every agent.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use lanyard_core::config::Rejection;
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Rejections waiting to be posted; beyond this, new ones are logged only.
const QUEUE: usize = 64;

/// Hands rejections to a task that posts them, without ever blocking the config loop.
#[derive(Clone)]
pub struct RejectionEvents {
    tx: mpsc::Sender<(Rejection, ObjectReference)>,
}

// === impl RejectionEvents ===

impl RejectionEvents {
    /// Starts the posting task; `controller` names the reporter (e.g. `lanyard-ca`).
    pub fn start(client: kube::Client, controller: &str, instance: Option<String>) -> Self {
        let (tx, mut rx) = mpsc::channel::<(Rejection, ObjectReference)>(QUEUE);
        let reporter = Reporter {
            controller: controller.to_string(),
            instance,
        };
        let recorder = Recorder::new(client, reporter);
        tokio::spawn(async move {
            while let Some((rejection, reference)) = rx.recv().await {
                let event = Event {
                    type_: EventType::Warning,
                    reason: "Rejected".into(),
                    note: Some(format!("{}: {}", rejection.field, rejection.message)),
                    action: "Validate".into(),
                    secondary: None,
                };
                if let Err(e) = recorder.publish(&event, &reference).await {
                    warn!(target: "config", object = %rejection.object, "posting the rejection as an Event: {e}");
                }
            }
        });
        Self { tx }
    }

    /// Queues `rejection`; `docs` are the objects it came from (for apiVersion and uid).
    pub fn report(&self, rejection: &Rejection, docs: &[Value]) {
        let r = &rejection.object;
        let doc = docs.iter().find(|d| {
            d["kind"] == r.kind.as_str()
                && d["metadata"]["name"] == r.name.as_str()
                && d["metadata"]["namespace"].as_str() == r.namespace.as_deref()
        });
        let field = |k: &str| doc.and_then(|d| d[k].as_str()).map(str::to_string);
        let reference = ObjectReference {
            api_version: field("apiVersion"),
            kind: Some(r.kind.clone()),
            name: Some(r.name.clone()),
            namespace: r.namespace.clone(),
            uid: doc
                .and_then(|d| d["metadata"]["uid"].as_str())
                .map(str::to_string),
            ..Default::default()
        };
        if self.tx.try_send((rejection.clone(), reference)).is_err() {
            debug!(target: "config", object = %r, "rejection Event queue full; logged only");
        }
    }
}
