//! Findings about the configuration, in the words and codes of Istio's analyzers where Istio
//! has one (`IST0101`…), and `LYD` codes for what only Lanyard reports (fields it ignores,
//! rules a node agent cannot enforce). Agents and waypoints log them; `lanyardctl analyze`
//! prints them. Computed once per state, never on the data path.

use std::collections::BTreeMap;
use std::fmt;

use super::MeshState;
use crate::config::{ObjectRef, Rejection};
use crate::policy::authz::{Action, Scope, TargetRef};
use crate::traffic::host::Host;
use crate::traffic::virtual_service::{Destination, HttpMatch, RouteAction};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Info,
    Warning,
    Error,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Info => "Info",
            Level::Warning => "Warning",
            Level::Error => "Error",
        })
    }
}

/// One message kind: its code, Istio-style name, and level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Code {
    pub code: &'static str,
    pub name: &'static str,
    pub level: Level,
}

macro_rules! codes {
    ($($id:ident = $code:literal, $name:literal, $level:ident;)*) => {
        $(pub const $id: Code = Code { code: $code, name: $name, level: Level::$level };)*
        /// Every code, for documentation and for tests that each one can be produced.
        pub const ALL_CODES: &[Code] = &[$($id),*];
    };
}

codes! {
    REFERENCED_RESOURCE_NOT_FOUND = "IST0101", "ReferencedResourceNotFound", Error;
    SCHEMA_VALIDATION_ERROR = "IST0106", "SchemaValidationError", Error;
    NO_MATCHING_WORKLOADS = "IST0127", "NoMatchingWorkloadsFound", Warning;
    INEFFECTIVE_MATCH = "IST0131", "VirtualServiceIneffectiveMatch", Info;
    HOST_NOT_FOUND = "LYD0001", "VirtualServiceHostNotFound", Warning;
    FAULT_INJECTION_ACTIVE = "LYD0002", "FaultInjectionActive", Warning;
    FIELD_IGNORED = "LYD0003", "FieldIgnored", Info;
    L7_RULE_AT_NODE = "LYD0004", "L7RuleAtNodeAgent", Warning;
    NOT_ENFORCED = "LYD0005", "PolicyNotEnforced", Warning;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub code: Code,
    pub object: ObjectRef,
    /// The field at fault, as a path under the object (`spec.http[0].route[1]`).
    pub field: Option<String>,
    pub message: String,
}

impl Finding {
    fn new(code: Code, object: ObjectRef, field: Option<String>, message: String) -> Self {
        Finding {
            code,
            object,
            field,
            message,
        }
    }

    /// The form of `istioctl analyze`: `Error [IST0101] (VirtualService ns/name field) msg`.
    pub fn analyzer_line(&self) -> String {
        let field = self
            .field
            .as_ref()
            .map(|f| format!(" {f}"))
            .unwrap_or_default();
        format!(
            "{} [{}] ({}{field}) {}",
            self.code.level, self.code.code, self.object, self.message
        )
    }
}

/// The log form, object first: `VirtualService ns/name: field: message (IST0101)`.
impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.object)?;
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        write!(f, "{} ({})", self.message, self.code.code)
    }
}

fn oref(kind: &str, namespace: &str, name: &str) -> ObjectRef {
    ObjectRef {
        kind: kind.into(),
        namespace: Some(namespace.into()),
        name: name.into(),
    }
}

/// `spec.x: message` as validation writes object-local notes → (field, message).
fn split_note(note: &str) -> (Option<String>, String) {
    match note.split_once(": ") {
        Some((f, m)) if f.starts_with("spec") => (Some(f.into()), m.into()),
        _ => (None, note.into()),
    }
}

fn rejection(r: &Rejection) -> Finding {
    Finding::new(
        SCHEMA_VALIDATION_ERROR,
        r.object.clone(),
        Some(r.field.clone()),
        r.message.clone(),
    )
}

fn labels(sel: &BTreeMap<String, String>) -> String {
    sel.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

// === impl MeshState (analysis) ===

impl MeshState {
    /// Everything the analyzers find in this state, rejections included, errors first.
    pub fn findings(&self) -> &[Finding] {
        &self.findings
    }

    /// Runs every analyzer; called once at the end of `build`.
    pub(super) fn analyze(&self) -> Vec<Finding> {
        let mut out: Vec<Finding> = self.rejections.iter().map(rejection).collect();
        self.analyze_virtual_services(&mut out);
        self.analyze_destination_rules(&mut out);
        self.analyze_service_entries(&mut out);
        self.analyze_policies(&mut out);
        self.analyze_waypoint_labels(&mut out);
        out.sort_by_key(|f| std::cmp::Reverse(f.code.level));
        out
    }

    fn analyze_virtual_services(&self, out: &mut Vec<Finding>) {
        for v in &self.virtual_services {
            let obj = || oref("VirtualService", &v.namespace, &v.name);
            for note in &v.warnings {
                let (field, msg) = split_note(note);
                out.push(Finding::new(FIELD_IGNORED, obj(), field, msg));
            }
            for (i, h) in v.hosts.iter().enumerate() {
                let known = match h {
                    Host::Any => true,
                    Host::Exact(fqdn) => self.by_host.contains_key(fqdn),
                    Host::Wildcard(_) => self.by_host.keys().any(|k| h.matches(k)),
                };
                if !known {
                    out.push(Finding::new(
                        HOST_NOT_FOUND,
                        obj(),
                        Some(format!("spec.hosts[{i}]")),
                        format!(
                            "host {h} matches no service in the mesh; these routes never apply"
                        ),
                    ));
                }
            }
            let catch_all = v.http.iter().position(|r| {
                r.matches.is_empty()
                    || r.matches.iter().any(|m| {
                        HttpMatch {
                            name: None,
                            ..m.clone()
                        } == HttpMatch::default()
                    })
            });
            if let Some(c) = catch_all {
                for i in c + 1..v.http.len() {
                    out.push(Finding::new(
                        INEFFECTIVE_MATCH,
                        obj(),
                        Some(format!("spec.http[{i}]")),
                        format!("this rule is never used: spec.http[{c}] before it matches every request"),
                    ));
                }
            }
            // (where the destination is written, the destination)
            let mut dests: Vec<(String, &Destination)> = Vec::new();
            for (i, r) in v.http.iter().enumerate() {
                if r.fault.is_some() {
                    out.push(Finding::new(
                        FAULT_INJECTION_ACTIVE,
                        obj(),
                        Some(format!("spec.http[{i}].fault")),
                        "fault injection is active; remove it when the test is over".into(),
                    ));
                }
                if let RouteAction::Forward(ds) = &r.action {
                    for (j, d) in ds.iter().enumerate() {
                        dests.push((
                            format!("spec.http[{i}].route[{j}].destination"),
                            &d.destination,
                        ));
                    }
                }
                for m in &r.mirrors {
                    dests.push((m.field.clone(), &m.destination));
                }
            }
            for (i, r) in v.tcp.iter().enumerate() {
                for (j, d) in r.route.iter().enumerate() {
                    dests.push((
                        format!("spec.tcp[{i}].route[{j}].destination"),
                        &d.destination,
                    ));
                }
            }
            for (field, d) in dests {
                if !self.by_host.contains_key(&d.host) {
                    out.push(Finding::new(
                        REFERENCED_RESOURCE_NOT_FOUND,
                        obj(),
                        Some(format!("{field}.host")),
                        format!("Referenced host not found: {:?}", d.host),
                    ));
                    continue;
                }
                let Some(subset) = &d.subset else { continue };
                let defined = self
                    .destination_rule_for(&d.host, &v.namespace)
                    .is_some_and(|dr| dr.subset(subset).is_some());
                if !defined {
                    out.push(Finding::new(
                        REFERENCED_RESOURCE_NOT_FOUND,
                        obj(),
                        Some(format!("{field}.subset")),
                        format!(
                            "Referenced host+subset in destinationrule not found: \"{}+{subset}\"; requests routed to it get 503 (NC)",
                            d.host
                        ),
                    ));
                }
            }
        }
    }

    fn analyze_destination_rules(&self, out: &mut Vec<Finding>) {
        for d in &self.destination_rules {
            let obj = || oref("DestinationRule", &d.namespace, &d.name);
            for note in &d.warnings {
                let (field, msg) = split_note(note);
                out.push(Finding::new(FIELD_IGNORED, obj(), field, msg));
            }
            if let Host::Exact(h) = &d.host {
                if !self.by_host.contains_key(h) {
                    out.push(Finding::new(
                        REFERENCED_RESOURCE_NOT_FOUND,
                        obj(),
                        Some("spec.host".into()),
                        format!("Referenced host not found: {h:?}"),
                    ));
                }
            }
        }
    }

    fn analyze_service_entries(&self, out: &mut Vec<Finding>) {
        for e in &self.service_entries {
            for note in &e.warnings {
                let (field, msg) = split_note(note);
                let obj = oref("ServiceEntry", &e.namespace, &e.name);
                out.push(Finding::new(FIELD_IGNORED, obj, field, msg));
            }
        }
    }

    fn analyze_policies(&self, out: &mut Vec<Finding>) {
        for p in self.authz.values().flatten() {
            let obj = || oref("AuthorizationPolicy", &p.namespace, &p.name);
            self.check_scope(&obj(), &p.namespace, &p.scope, out);
            if matches!(p.scope, Scope::TargetRefs(_)) {
                continue;
            }
            if let Some((_, note)) = p.for_l4() {
                let msg = note.split_once(": ").map_or(note.as_str(), |(_, m)| m);
                out.push(Finding::new(
                    L7_RULE_AT_NODE,
                    obj(),
                    Some("spec.rules".into()),
                    msg.into(),
                ));
            }
            if p.action == Action::Custom {
                out.push(Finding::new(
                    NOT_ENFORCED,
                    obj(),
                    Some("spec.action".into()),
                    "CUSTOM is not enforced by the node agent".into(),
                ));
            }
        }
        for p in &self.peer_auth {
            let obj = oref("PeerAuthentication", &p.namespace, &p.name);
            if let Some(sel) = &p.selector {
                self.check_scope(&obj, &p.namespace, &Scope::Selector(sel.clone()), out);
            }
            if let Some(note) = p.warning() {
                let msg = note.split_once(": ").map_or(note.as_str(), |(_, m)| m);
                out.push(Finding::new(
                    FIELD_IGNORED,
                    obj,
                    Some("spec.mtls.mode".into()),
                    msg.into(),
                ));
            }
        }
        for r in &self.request_authns {
            let obj = oref("RequestAuthentication", &r.namespace, &r.name);
            self.check_scope(&obj, &r.namespace, &r.scope, out);
            if !matches!(r.scope, Scope::TargetRefs(_)) {
                out.push(Finding::new(
                    NOT_ENFORCED,
                    obj,
                    Some("spec.selector".into()),
                    "only targetRefs policies are enforced (at waypoints); node agents do not see requests".into(),
                ));
            }
        }
    }

    /// A selector that selects nothing, or a targetRef to an object that does not exist.
    fn check_scope(&self, obj: &ObjectRef, ns: &str, scope: &Scope, out: &mut Vec<Finding>) {
        match scope {
            Scope::Namespace => {}
            Scope::Selector(sel) => {
                let any = self.workloads.values().any(|w| {
                    (ns == self.root_namespace || w.namespace == ns)
                        && sel.iter().all(|(k, v)| w.labels.get(k) == Some(v))
                });
                if !any {
                    out.push(Finding::new(
                        NO_MATCHING_WORKLOADS,
                        obj.clone(),
                        Some("spec.selector".into()),
                        format!(
                            "No matching workloads for this resource with the following labels: {}",
                            labels(sel)
                        ),
                    ));
                }
            }
            Scope::TargetRefs(refs) => {
                for (i, TargetRef { kind, name, .. }) in refs.iter().enumerate() {
                    // A waypoint's Gateway is known here by its Service of the same name.
                    let exists = match kind.as_str() {
                        "Service" | "Gateway" => {
                            self.services.contains_key(&(ns.to_string(), name.clone()))
                        }
                        _ => true,
                    };
                    if !exists {
                        out.push(Finding::new(
                            REFERENCED_RESOURCE_NOT_FOUND,
                            obj.clone(),
                            Some(format!("spec.targetRefs[{i}]")),
                            format!(
                                "Referenced {} not found: \"{ns}/{name}\"",
                                kind.to_lowercase()
                            ),
                        ));
                    }
                }
            }
        }
    }

    /// `istio.io/use-waypoint` naming a waypoint that does not exist: traffic would fail.
    /// Reported on the object that carries the label.
    fn analyze_waypoint_labels(&self, out: &mut Vec<Finding>) {
        let namespaces = self.namespaces.values().map(|n| {
            (
                ObjectRef {
                    kind: "Namespace".into(),
                    namespace: None,
                    name: n.name.clone(),
                },
                &n.labels,
                n.name.as_str(),
            )
        });
        let services = self.services.values().map(|s| {
            (
                oref("Service", &s.namespace, &s.name),
                &s.labels,
                s.namespace.as_str(),
            )
        });
        let pods = self.workloads.values().map(|w| {
            (
                oref("Pod", &w.namespace, &w.name),
                &w.labels,
                w.namespace.as_str(),
            )
        });
        for (obj, labels, ns) in namespaces.chain(services).chain(pods) {
            if !labels.contains_key(super::USE_WAYPOINT_LABEL) {
                continue;
            }
            let Some(wp) = self.waypoint_from_labels(labels, ns) else {
                continue;
            };
            if !self
                .services
                .contains_key(&(wp.namespace.clone(), wp.name.clone()))
            {
                out.push(Finding::new(
                    REFERENCED_RESOURCE_NOT_FOUND,
                    obj,
                    Some(format!("metadata.labels[{}]", super::USE_WAYPOINT_LABEL)),
                    format!(
                        "Referenced waypoint not found: \"{}/{}\"",
                        wp.namespace, wp.name
                    ),
                ));
            }
        }
    }
}
