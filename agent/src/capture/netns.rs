//! Pod network namespaces: finding them on a node, and creating sockets inside them.
//!
//! Discovery follows what a kubelet leaves behind: each pod's processes live in a cgroup whose
//! path names the pod UID (`.../pod<uid>/...` with the cgroupfs driver,
//! `...-pod<uid_with_underscores>.slice/...` with systemd); any of those processes' `ns/net` is
//! the pod's network namespace.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sched::{setns, CloneFlags};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no cgroup for pod {uid} under {root}")]
    NoCgroup { uid: String, root: PathBuf },
    #[error("pod {uid} has no running process in its cgroup {cgroup}")]
    NoProcess { uid: String, cgroup: PathBuf },
    #[error("pod {uid} shares the node's network namespace (hostNetwork)")]
    HostNetwork { uid: String },
    #[error("opening network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("entering network namespace: {0}")]
    Setns(nix::Error),
    #[error("socket in pod network namespace: {0}")]
    Socket(#[from] std::io::Error),
}

/// Deepest cgroup level searched: kubepods/<qos>/pod<uid>/<container> and systemd's slices.
const MAX_DEPTH: usize = 6;

/// The cgroup directory of pod `uid` under `root`, if any.
pub fn find_pod_cgroup(root: &Path, uid: &str) -> Option<PathBuf> {
    let dashed = format!("pod{uid}");
    let underscored = format!("pod{}", uid.replace('-', "_"));
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(&dashed)
                || name.contains(&format!("-{underscored}.slice"))
                || *name == *dashed
            {
                return Some(entry.path());
            }
            if depth + 1 < MAX_DEPTH {
                stack.push((entry.path(), depth + 1));
            }
        }
    }
    None
}

/// First process found in `cgroup` or its children.
fn first_pid(cgroup: &Path) -> Option<u32> {
    let mut stack = vec![(cgroup.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            if let Some(pid) = procs.lines().find_map(|l| l.trim().parse().ok()) {
                return Some(pid);
            }
        }
        if depth >= 3 {
            continue;
        }
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push((entry.path(), depth + 1));
            }
        }
    }
    None
}

/// `/proc/<pid>/ns/net` of a process of pod `uid`.
pub fn find_pod_netns_path(
    cgroup_root: &Path,
    proc_root: &Path,
    uid: &str,
) -> Result<PathBuf, Error> {
    let cgroup = find_pod_cgroup(cgroup_root, uid).ok_or_else(|| Error::NoCgroup {
        uid: uid.to_string(),
        root: cgroup_root.to_path_buf(),
    })?;
    let pid = first_pid(&cgroup).ok_or_else(|| Error::NoProcess {
        uid: uid.to_string(),
        cgroup: cgroup.clone(),
    })?;
    Ok(proc_root.join(pid.to_string()).join("ns/net"))
}

/// A network namespace held open by fd, plus the node's own namespace to return to.
#[derive(Clone)]
pub struct Netns {
    fd: Arc<OwnedFd>,
    host: Arc<OwnedFd>,
    inode: u64,
    cookie: u64,
}

impl std::fmt::Debug for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Netns(inode={}, cookie={})", self.inode, self.cookie)
    }
}

fn inode_of(fd: &OwnedFd) -> Result<u64, std::io::Error> {
    let st = nix::sys::stat::fstat(fd.as_fd()).map_err(std::io::Error::from)?;
    Ok(st.st_ino)
}

// === impl Netns ===

impl Netns {
    /// The agent's own namespace (where it was started).
    pub fn host() -> Result<Arc<OwnedFd>, Error> {
        let path = PathBuf::from("/proc/self/ns/net");
        File::open(&path)
            .map(|f| Arc::new(OwnedFd::from(f)))
            .map_err(|source| Error::Open { path, source })
    }

    pub fn open(path: &Path, host: Arc<OwnedFd>, uid: &str) -> Result<Self, Error> {
        let fd = OwnedFd::from(File::open(path).map_err(|source| Error::Open {
            path: path.to_path_buf(),
            source,
        })?);
        let inode = inode_of(&fd)?;
        if inode == inode_of(&host)? {
            return Err(Error::HostNetwork {
                uid: uid.to_string(),
            });
        }
        let mut ns = Netns {
            fd: Arc::new(fd),
            host,
            inode,
            cookie: 0,
        };
        ns.cookie = ns.run(|| {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            netns_cookie(&s)
        })??;
        Ok(ns)
    }

    /// Whether `path` (a `/proc/<pid>/ns/net`) is still this namespace. A pod whose sandbox
    /// was recreated (same UID, often the same IP) has a new one.
    pub fn is_at(&self, path: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).is_ok_and(|m| m.ino() == self.inode)
    }

    /// The kernel's cookie for this namespace, as `bpf_get_netns_cookie` sees it.
    pub fn cookie(&self) -> u64 {
        self.cookie
    }

    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Runs `f` with the current thread inside this namespace, then returns to the node's.
    /// Sockets created by `f` stay in this namespace for their whole life. Keep `f` short
    /// and synchronous: it runs on a runtime worker thread.
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> Result<R, Error> {
        setns(self.fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(Error::Setns)?;
        let r = f();
        // Failing to return would leave a runtime thread in a pod's namespace; nothing sane
        // can continue from there.
        setns(self.host.as_fd(), CloneFlags::CLONE_NEWNET)
            .expect("returning to the node network namespace");
        Ok(r)
    }
}

/// SO_NETNS_COOKIE of a socket.
pub fn netns_cookie(s: &impl AsRawFd) -> Result<u64, std::io::Error> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            &mut cookie as *mut u64 as *mut libc::c_void,
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_pods_under_both_cgroup_drivers() {
        let root = tempfile::tempdir().unwrap();
        let uid = "0f1e2d3c-aaaa-bbbb-cccc-1234567890ab";
        let cgroupfs = root
            .path()
            .join("kubepods/burstable")
            .join(format!("pod{uid}"))
            .join("ctr1");
        std::fs::create_dir_all(&cgroupfs).unwrap();
        std::fs::write(cgroupfs.join("cgroup.procs"), "4242\n").unwrap();
        assert_eq!(
            find_pod_netns_path(root.path(), Path::new("/proc"), uid).unwrap(),
            PathBuf::from("/proc/4242/ns/net")
        );

        let uid2 = "11111111-2222-3333-4444-555555555555";
        let systemd = root
            .path()
            .join("kubepods.slice/kubepods-besteffort.slice")
            .join(format!(
                "kubepods-besteffort-pod{}.slice",
                uid2.replace('-', "_")
            ))
            .join("cri-containerd-abc.scope");
        std::fs::create_dir_all(&systemd).unwrap();
        std::fs::write(systemd.join("cgroup.procs"), "").unwrap();
        assert!(matches!(
            find_pod_netns_path(root.path(), Path::new("/proc"), uid2),
            Err(Error::NoProcess { .. })
        ));
        std::fs::write(systemd.join("cgroup.procs"), "77\n").unwrap();
        assert_eq!(
            find_pod_netns_path(root.path(), Path::new("/proc"), uid2).unwrap(),
            PathBuf::from("/proc/77/ns/net")
        );
        assert!(matches!(
            find_pod_netns_path(root.path(), Path::new("/proc"), "nope"),
            Err(Error::NoCgroup { .. })
        ));
    }
}
