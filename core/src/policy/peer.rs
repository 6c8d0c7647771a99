//! PeerAuthentication: whether a workload accepts plaintext, resolved mesh → namespace →
//! workload, and per port.

use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MtlsMode {
    /// Inherit from the level above.
    Unset,
    Permissive,
    Strict,
    /// Accepted for compatibility; the mesh always speaks mTLS, so it acts as PERMISSIVE.
    Disable,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAuthentication {
    pub namespace: String,
    pub name: String,
    pub selector: Option<BTreeMap<String, String>>,
    pub mode: MtlsMode,
    pub ports: BTreeMap<u16, MtlsMode>,
}

impl PeerAuthentication {
    fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector
            .as_ref()
            .is_some_and(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
    }

    pub fn warning(&self) -> Option<String> {
        let disable =
            self.mode == MtlsMode::Disable || self.ports.values().any(|m| *m == MtlsMode::Disable);
        disable.then(|| {
            format!(
                "PeerAuthentication {}/{}: DISABLE acts as PERMISSIVE (plaintext is accepted, mesh traffic stays mTLS)",
                self.namespace, self.name
            )
        })
    }
}

/// Whether plaintext to `port` of a workload is refused. `policies` are all PeerAuthentications
/// (sorted by namespace and name, the oldest-first stand-in); `default` is the mesh default
/// when no policy sets a mode.
pub fn is_strict(
    policies: &[PeerAuthentication],
    root_namespace: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    port: u16,
    default: MtlsMode,
) -> bool {
    let workload = policies
        .iter()
        .find(|p| p.namespace == namespace && p.selects(labels));
    let ns = policies
        .iter()
        .find(|p| p.namespace == namespace && p.selector.is_none());
    let mesh = policies
        .iter()
        .find(|p| p.namespace == root_namespace && p.selector.is_none());
    let levels = [
        workload.and_then(|p| p.ports.get(&port).copied()),
        workload.map(|p| p.mode),
        ns.map(|p| p.mode),
        mesh.map(|p| p.mode),
        Some(default),
    ];
    let mode = levels.into_iter().flatten().find(|m| *m != MtlsMode::Unset);
    mode == Some(MtlsMode::Strict)
}
