//! Sockets the agent opens inside pod network namespaces.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::Command;
use std::time::Duration;

use socket2::{Domain, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tracing::debug;

use crate::capture;
use crate::capture::maps::MARK_SPOOFED;
use crate::capture::netns::{self, Netns};

mod source_ports;
pub use source_ports::SourcePorts;

/// Routing table in each pod netns that delivers marked replies back over loopback.
const RETURN_TABLE: &str = "15539";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Netns(#[from] netns::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("connect to {0} timed out")]
    Timeout(SocketAddr),
    #[error("registering the connection with capture: {0}")]
    Capture(#[from] capture::Error),
    #[error("preparing pod network namespace: `{command}` failed: {detail}")]
    Prepare { command: String, detail: String },
    #[error(
        "no free source port on {client} towards {dst} after {SOURCE_PORT_ATTEMPTS} tries: \
         the pod's ephemeral port range is nearly used up for this client"
    )]
    NoSourcePort { client: Ipv4Addr, dst: SocketAddrV4 },
}

impl Error {
    fn is_os(&self, code: i32) -> bool {
        matches!(self, Error::Io(e) if e.raw_os_error() == Some(code))
    }
}

/// Random ports tried per connection: with nine tenths of the range busy for one
/// destination, all of them are taken about once in a thousand connections.
const SOURCE_PORT_ATTEMPTS: usize = 64;

const LISTEN_BACKLOG: i32 = 4096;

/// Congestion control of the hops between a pod's app and the agent: both ends sit in the
/// pod's network namespace and the bytes cross loopback, never a network. On nodes whose
/// default is BBR, every send on such a hop armed a pacing timer for nothing (paired runs,
/// docs/benchmarks.md session 19). CUBIC, the kernel's own default, does not pace. Sockets
/// toward other nodes (HBONE, passthrough) keep the node's choice.
const LOCAL_HOP_CONGESTION: &[u8] = b"cubic";

/// Best effort: a node without CUBIC keeps its default, which is correct, only slower.
fn local_hop(s: &Socket) {
    if let Err(e) = s.set_tcp_congestion(LOCAL_HOP_CONGESTION) {
        debug!("setting congestion control of a pod-local socket: {e}");
    }
}

/// A listener bound in `netns`.
pub fn listen(netns: &Netns, addr: SocketAddr) -> Result<TcpListener, Error> {
    let std = netns.run(|| -> std::io::Result<std::net::TcpListener> {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        s.set_reuse_address(true)?;
        s.set_nonblocking(true)?;
        if addr.ip().is_loopback() {
            // Accepted sockets inherit it.
            local_hop(&s);
        }
        s.bind(&addr.into())?;
        // One listener takes a pod's whole burst of connections while the accept loop shares
        // the runtime with every tunnel; past the queue, SYNs are dropped and clients wait a
        // one-second retransmit (seen with 1024 at 10k connections opened at once). The
        // kernel caps this at net.core.somaxconn.
        s.listen(LISTEN_BACKLOG)?;
        Ok(s.into())
    })??;
    Ok(TcpListener::from_std(std)?)
}

fn socket_in(netns: &Netns, mark: u32, bind: Option<SocketAddrV4>) -> Result<TcpSocket, Error> {
    let std = netns.run(|| -> std::io::Result<_> {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        s.set_mark(mark)?;
        s.set_tcp_nodelay(true)?;
        if let Some(local) = bind {
            // Only connections to the pod's own app take the client's address.
            local_hop(&s);
            s.set_ip_transparent_v4(true)?;
            // Shares the port with other connections (TIME_WAIT ones too) as long as the
            // 4-tuples differ; connect() checks that.
            s.set_reuse_address(true)?;
            s.bind(&SocketAddr::V4(local).into())?;
        }
        s.set_nonblocking(true)?;
        Ok(std::net::TcpStream::from(s))
    })??;
    Ok(TcpSocket::from_std_stream(std))
}

async fn finish(socket: TcpSocket, dst: SocketAddr, timeout: Duration) -> Result<TcpStream, Error> {
    tokio::time::timeout(timeout, socket.connect(dst))
        .await
        .map_err(|_| Error::Timeout(dst))?
        .map_err(Error::from)
}

/// Connects from inside `netns`, from the namespace's own address.
pub async fn connect(
    netns: &Netns,
    dst: SocketAddr,
    mark: u32,
    timeout: Duration,
) -> Result<TcpStream, Error> {
    let socket = socket_in(netns, mark, None)?;
    finish(socket, dst, timeout).await
}

/// Connects to the app at `dst` inside `netns` so that it appears to come from `client` (as
/// it would without a mesh), from a port of `ports`. `register` is told the source address
/// before the SYN is sent, and what it returns is held until the connection is established.
pub async fn connect_as<G>(
    netns: &Netns,
    ports: &SourcePorts,
    dst: SocketAddrV4,
    client: Ipv4Addr,
    timeout: Duration,
    register: impl Fn(SocketAddrV4) -> Result<G, capture::Error>,
) -> Result<TcpStream, Error> {
    for _ in 0..SOURCE_PORT_ATTEMPTS {
        let Some(port) = ports.pick() else { continue };
        let local = SocketAddrV4::new(client, port);
        // Taken by a listener on the port.
        let socket = match socket_in(netns, MARK_SPOOFED, Some(local)) {
            Err(e) if e.is_os(libc::EADDRINUSE) => continue,
            r => r?,
        };
        let _held = register(local)?;
        // Taken towards this very destination (TIME_WAIT included).
        match finish(socket, SocketAddr::V4(dst), timeout).await {
            Err(e) if e.is_os(libc::EADDRNOTAVAIL) => continue,
            r => return r,
        }
    }
    Err(Error::NoSourcePort { client, dst })
}

/// Closes with RST rather than FIN, so a refused or failed connection looks like one to
/// the app (as a real connection refusal would).
pub fn reset(stream: TcpStream) {
    let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Makes `netns` route the app's replies to spoofed sources back to the agent over loopback,
/// without iptables: accepted connections inherit the SYN's mark (`tcp_fwmark_accept`), and
/// marked packets use a table whose only route is "everything is local".
pub fn prepare_return_path(netns: &Netns) -> Result<(), Error> {
    netns.run(|| std::fs::write("/proc/sys/net/ipv4/tcp_fwmark_accept", "1"))??;
    let mark = format!("{MARK_SPOOFED:#x}/0xfff");
    // Delete first so that re-enrolling a pod does not stack duplicate rules.
    let _ = ip(
        netns,
        &["rule", "del", "fwmark", &mark, "lookup", RETURN_TABLE],
    );
    ip(
        netns,
        &[
            "rule",
            "add",
            "fwmark",
            &mark,
            "lookup",
            RETURN_TABLE,
            "pref",
            "32000",
        ],
    )?;
    ip(
        netns,
        &[
            "route",
            "replace",
            "local",
            "0.0.0.0/0",
            "dev",
            "lo",
            "table",
            RETURN_TABLE,
        ],
    )?;
    Ok(())
}

fn ip(netns: &Netns, args: &[&str]) -> Result<(), Error> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let fd = netns.fd().as_raw_fd();
    let mut cmd = Command::new("ip");
    cmd.args(args);
    // SAFETY: setns is async-signal-safe; it runs in the child between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().map_err(|e| Error::Prepare {
        command: format!("ip {}", args.join(" ")),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(Error::Prepare {
            command: format!("ip {}", args.join(" ")),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::fd::AsRawFd;
    use std::path::PathBuf;

    use super::*;

    /// A new network namespace whose default congestion control is Reno (one that a
    /// non-initial namespace may choose), alive for as long as the returned file is open.
    fn reno_namespace() -> File {
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare (root?)");
            // Opened by this thread, so the sysctl is the new namespace's.
            std::fs::write("/proc/sys/net/ipv4/tcp_congestion_control", "reno").unwrap();
            File::open("/proc/thread-self/ns/net").unwrap()
        })
        .join()
        .unwrap()
    }

    fn congestion(s: &impl std::os::fd::AsFd) -> String {
        let name = SockRef::from(s).tcp_congestion().unwrap();
        String::from_utf8_lossy(&name)
            .trim_end_matches('\0')
            .to_string()
    }

    #[tokio::test]
    async fn hops_to_the_pods_app_do_not_pace_and_others_keep_the_default() {
        let file = reno_namespace();
        let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        let ns = Netns::open(&path, Netns::host().unwrap(), "test-pod").unwrap();

        let local = listen(&ns, "127.0.0.1:0".parse().unwrap()).unwrap();
        assert_eq!(
            congestion(&local),
            "cubic",
            "the outbound listener (app to agent)"
        );
        let to_app = socket_in(&ns, 0, Some("127.0.0.1:0".parse().unwrap())).unwrap();
        assert_eq!(
            congestion(&to_app),
            "cubic",
            "the agent's connection to the app"
        );

        let hbone = listen(&ns, "0.0.0.0:0".parse().unwrap()).unwrap();
        assert_eq!(congestion(&hbone), "reno", "a listener other nodes reach");
        let to_node = socket_in(&ns, 0, None).unwrap();
        assert_eq!(congestion(&to_node), "reno", "a connection to another node");
    }
}
