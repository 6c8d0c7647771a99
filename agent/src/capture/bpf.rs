//! Loads `ebpf/capture.bpf.c` with aya, attaches it, and keeps its maps.
//!
//! Everything lives under one bpffs directory per agent (`/sys/fs/bpf/lanyard/<node>`):
//! maps are pinned and reused across restarts; the cgroup links are pinned so that capture
//! stays in place while the agent restarts (connections fail rather than bypass the mesh).

use std::collections::HashMap;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aya::maps::{HashMap as BpfHashMap, MapData, SockHash};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, SkLookup, SockOps};
use aya::{Ebpf, EbpfLoader};
use tracing::{debug, info};

use super::maps::{ip_to_be, Conn4, ConnKey, NetnsValue, OrigDst, OUTBOUND_PORT};
use super::netns::Netns;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/capture.bpf.o"));

const MAPS: [&str; 7] = [
    "enrolled",
    "orig_dst_by_cookie",
    "orig_dst_by_tuple",
    "enrolled_pods",
    "inbound_listeners",
    "agent_conns",
    "node_sources",
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading BPF programs: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("BPF program {0}: {1}")]
    Program(&'static str, aya::programs::ProgramError),
    #[error("BPF map {0}: {1}")]
    Map(&'static str, aya::maps::MapError),
    #[error("pinning under {path}: {detail}")]
    Pin { path: PathBuf, detail: String },
    #[error("opening cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("BPF object has no {0}")]
    Missing(&'static str),
}

pub struct Capture {
    pin_dir: PathBuf,
    /// Holds the loaded programs; sk_lookup is attached per enrolled netns.
    ebpf: Mutex<Ebpf>,
    enrolled: Mutex<BpfHashMap<MapData, u64, NetnsValue>>,
    enrolled_pods: Mutex<BpfHashMap<MapData, u32, u32>>,
    listeners: Mutex<SockHash<MapData, u32>>,
    /// Read on every outbound connection; `get` needs no exclusive access.
    orig_dst: BpfHashMap<MapData, ConnKey, OrigDst>,
    sk_lookup_links: Mutex<HashMap<u64, PinnedLink>>,
    agent_conns: Mutex<BpfHashMap<MapData, Conn4, u8>>,
    node_sources: Mutex<BpfHashMap<MapData, u32, u8>>,
}

/// While held, sk_lookup leaves the agent's connection with this 4-tuple alone.
pub struct Exempt<'a> {
    capture: &'a Capture,
    key: Conn4,
}

impl Drop for Exempt<'_> {
    fn drop(&mut self) {
        let _ = lock(&self.capture.agent_conns).remove(&self.key);
    }
}

fn pin_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Pin {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

// === impl Capture ===

impl Capture {
    /// Loads the programs and attaches connect4 and sockops to `cgroup` (the parent of every
    /// pod cgroup on this node).
    pub fn load(pin_dir: &Path, cgroup: &Path) -> Result<Self, Error> {
        std::fs::create_dir_all(pin_dir).map_err(|e| pin_err(pin_dir, e))?;
        let mut loader = EbpfLoader::new();
        for name in MAPS {
            loader.map_pin_path(name, pin_dir.join(name));
        }
        let mut ebpf = loader.load(OBJECT)?;

        let cg = File::open(cgroup).map_err(|source| Error::Cgroup {
            path: cgroup.to_path_buf(),
            source,
        })?;
        {
            let prog: &mut CgroupSockAddr = program(&mut ebpf, "lanyard_connect4")?;
            let e = |e| Error::Program("connect4", e);
            prog.load().map_err(e)?;
            let id = prog.attach(&cg, CgroupAttachMode::Single).map_err(e)?;
            let link = prog.take_link(id).map_err(e)?;
            replace_pin(FdLink::try_from(link), &pin_dir.join("connect4_link"))?;
        }
        {
            let prog: &mut SockOps = program(&mut ebpf, "lanyard_sockops")?;
            let e = |e| Error::Program("sockops", e);
            prog.load().map_err(e)?;
            let id = prog.attach(&cg, CgroupAttachMode::Single).map_err(e)?;
            let link = prog.take_link(id).map_err(e)?;
            replace_pin(FdLink::try_from(link), &pin_dir.join("sockops_link"))?;
        }
        {
            let prog: &mut SkLookup = program(&mut ebpf, "lanyard_sk_lookup")?;
            prog.load().map_err(|e| Error::Program("sk_lookup", e))?;
        }

        let enrolled = take_map(&mut ebpf, "enrolled")?;
        let enrolled_pods = take_map(&mut ebpf, "enrolled_pods")?;
        let orig_dst = take_map(&mut ebpf, "orig_dst_by_tuple")?;
        let agent_conns = take_map(&mut ebpf, "agent_conns")?;
        let node_sources = take_map(&mut ebpf, "node_sources")?;
        let listeners = SockHash::try_from(
            ebpf.take_map("inbound_listeners")
                .ok_or(Error::Missing("inbound_listeners"))?,
        )
        .map_err(|e| Error::Map("inbound_listeners", e))?;
        info!(target: "capture", pin_dir = %pin_dir.display(), cgroup = %cgroup.display(), "BPF capture attached");
        Ok(Self {
            pin_dir: pin_dir.to_path_buf(),
            ebpf: Mutex::new(ebpf),
            enrolled: Mutex::new(enrolled),
            enrolled_pods: Mutex::new(enrolled_pods),
            listeners: Mutex::new(listeners),
            orig_dst,
            sk_lookup_links: Mutex::new(HashMap::new()),
            agent_conns: Mutex::new(agent_conns),
            node_sources: Mutex::new(node_sources),
        })
    }

    /// Makes `addrs` the node's own addresses, whose connections into pods are not captured
    /// (kubelet probes). Addresses no longer present are removed.
    pub fn set_node_sources(&self, addrs: &[Ipv4Addr]) -> Result<(), Error> {
        let mut map = lock(&self.node_sources);
        let want: Vec<u32> = addrs.iter().map(|a| ip_to_be(*a)).collect();
        let stale: Vec<u32> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !want.contains(k))
            .collect();
        for key in stale {
            let _ = map.remove(&key);
        }
        for key in want {
            map.insert(key, 1, 0)
                .map_err(|e| Error::Map("node_sources", e))?;
        }
        Ok(())
    }

    /// Starts capturing a pod: its outbound connects go to the agent's listener in `netns`,
    /// and inbound connections to `pod_ip` go to `plaintext_listener`.
    pub fn enroll(
        &self,
        netns: &Netns,
        pod_ip: Ipv4Addr,
        plaintext_listener: &impl AsRawFd,
    ) -> Result<(), Error> {
        let key = ip_to_be(pod_ip);
        lock(&self.listeners)
            .insert(key, plaintext_listener.as_raw_fd(), 0)
            .map_err(|e| Error::Map("inbound_listeners", e))?;
        lock(&self.enrolled_pods)
            .insert(key, 1, 0)
            .map_err(|e| Error::Map("enrolled_pods", e))?;
        {
            let mut ebpf = lock(&self.ebpf);
            let prog: &mut SkLookup = program(&mut ebpf, "lanyard_sk_lookup")?;
            let id = prog
                .attach(netns.fd())
                .map_err(|e| Error::Program("sk_lookup", e))?;
            let link: FdLink = prog
                .take_link(id)
                .map_err(|e| Error::Program("sk_lookup", e))?
                .into();
            // Pinned, so that while the agent restarts the namespace keeps failing closed.
            let pinned = replace_pin(
                Ok(link),
                &self.pin_dir.join(format!("sk_lookup_{}", netns.cookie())),
            )?;
            lock(&self.sk_lookup_links).insert(netns.cookie(), pinned);
        }
        let value = NetnsValue {
            redirect_ip4: ip_to_be(Ipv4Addr::LOCALHOST),
            redirect_port: OUTBOUND_PORT,
            _pad: 0,
        };
        lock(&self.enrolled)
            .insert(netns.cookie(), value, 0)
            .map_err(|e| Error::Map("enrolled", e))?;
        debug!(target: "capture", %pod_ip, cookie = netns.cookie(), "enrolled");
        Ok(())
    }

    /// Stops capturing a pod. Connections already proxied are not touched.
    pub fn unenroll(&self, netns_cookie: u64, pod_ip: Ipv4Addr) {
        let key = ip_to_be(pod_ip);
        let _ = lock(&self.enrolled).remove(&netns_cookie);
        let _ = lock(&self.enrolled_pods).remove(&key);
        let _ = lock(&self.listeners).remove(&key);
        if let Some(link) = lock(&self.sk_lookup_links).remove(&netns_cookie) {
            // Unpinning and dropping the last reference detaches sk_lookup from the namespace.
            let _ = link.unpin();
        }
        debug!(target: "capture", %pod_ip, cookie = netns_cookie, "unenrolled");
    }

    /// Where a captured outbound connection, seen from the agent's listener in the pod netns
    /// as coming from `peer`, was going.
    pub fn original_destination(
        &self,
        netns_cookie: u64,
        peer: SocketAddrV4,
    ) -> Option<SocketAddrV4> {
        self.orig_dst
            .get(&ConnKey::new(netns_cookie, peer), 0)
            .ok()
            .map(|o| o.addr())
    }

    /// Registers a connection the agent opens from `local` (a spoofed client address) to the
    /// app at `remote`, so that sk_lookup does not steer it back to the agent.
    pub fn exempt(&self, local: SocketAddrV4, remote: SocketAddrV4) -> Result<Exempt<'_>, Error> {
        // From the app's side the agent's address is the remote one.
        let key = Conn4::new(local, remote);
        lock(&self.agent_conns)
            .insert(key, 1, 0)
            .map_err(|e| Error::Map("agent_conns", e))?;
        Ok(Exempt { capture: self, key })
    }

    /// Removes everything this agent pinned: capture stops for every pod on the node.
    pub fn remove_pins(&self) {
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, Error>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(Error::Missing(name))?
        .try_into()
        .map_err(|e| Error::Program(name, e))
}

fn take_map<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<BpfHashMap<MapData, K, V>, Error> {
    let map = ebpf.take_map(name).ok_or(Error::Missing(name))?;
    BpfHashMap::try_from(map).map_err(|e| Error::Map(name, e))
}

/// Pins `link` at `path`, first removing an older agent's link there (which detaches it).
fn replace_pin(
    link: Result<FdLink, aya::programs::links::LinkError>,
    path: &Path,
) -> Result<PinnedLink, Error> {
    let link = link.map_err(|e| pin_err(path, e))?;
    if path.exists() {
        if let Ok(old) = PinnedLink::from_pin(path) {
            let _ = old.unpin();
        } else {
            let _ = std::fs::remove_file(path);
        }
    }
    link.pin(path).map_err(|e| pin_err(path, e))
}
