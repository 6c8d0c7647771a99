//! Kubelet health probes come from the node itself. Istio exempts them by having the CNI
//! rewrite their source to a link-local address; Lanyard needs no rewrite: the sk_lookup
//! program leaves alone connections whose source is one of the node's own addresses, which
//! the kernel never accepts from outside the node. This module keeps that address set
//! current (a CNI bridge address may appear after the agent starts).

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sched::{setns, CloneFlags};
use tracing::{info, warn};

use super::Capture;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("opening the node's network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("entering the node's network namespace {path}: {source}")]
    Setns { path: PathBuf, source: nix::Error },
    #[error("listing the node's addresses: {0}")]
    List(nix::Error),
}

/// The IPv4 addresses (loopback excepted) of the namespace at `path`, read from a thread of
/// its own so that no runtime thread changes namespace.
pub fn node_addresses(path: &Path) -> Result<Vec<Ipv4Addr>, ProbeError> {
    let path = path.to_path_buf();
    std::thread::scope(|s| {
        s.spawn(|| {
            let ns = File::open(&path).map_err(|source| ProbeError::Open {
                path: path.clone(),
                source,
            })?;
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| ProbeError::Setns {
                path: path.clone(),
                source,
            })?;
            let mut addrs: Vec<Ipv4Addr> = nix::ifaddrs::getifaddrs()
                .map_err(ProbeError::List)?
                .filter_map(|ifa| ifa.address?.as_sockaddr_in().map(|sin| sin.ip()))
                .filter(|ip| !ip.is_loopback())
                .collect();
            addrs.sort();
            addrs.dedup();
            Ok(addrs)
        })
        .join()
        .unwrap_or(Err(ProbeError::List(nix::Error::EINVAL)))
    })
}

/// The node's addresses as the capture's exempt sources, kept current.
pub struct NodeSources {
    capture: Arc<Capture>,
    host_netns: PathBuf,
    current: Vec<Ipv4Addr>,
}

impl NodeSources {
    pub fn new(capture: Arc<Capture>, host_netns: PathBuf) -> Self {
        NodeSources {
            capture,
            host_netns,
            current: Vec::new(),
        }
    }

    /// Reads the node's addresses and installs them if they changed. The agent awaits the
    /// first read before it enrolls pods: a probe arriving before it would be refused.
    pub async fn refresh(&mut self) {
        let path = self.host_netns.clone();
        match tokio::task::spawn_blocking(move || node_addresses(&path)).await {
            Ok(Ok(addrs)) if addrs != self.current => match self.capture.set_node_sources(&addrs) {
                Ok(()) => {
                    let list: Vec<IpAddr> = addrs.iter().map(|a| IpAddr::V4(*a)).collect();
                    info!(target: "capture", sources = ?list, "kubelet probes from these node addresses bypass capture");
                    self.current = addrs;
                }
                Err(e) => warn!(target: "capture", "updating probe sources: {e}"),
            },
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(target: "capture", "kubelet probes may be refused: {e}"),
            Err(e) => warn!(target: "capture", "probe source refresh failed: {e}"),
        }
    }

    /// Refreshes every `every`, for the agent's life.
    pub async fn keep(mut self, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            self.refresh().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_namespaces_addresses_without_loopback() {
        let addrs = node_addresses(Path::new("/proc/self/ns/net")).unwrap();
        assert!(addrs.iter().all(|a| !a.is_loopback()), "{addrs:?}");
        let err = node_addresses(Path::new("/nonexistent/ns")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ns"), "{err}");
    }
}
