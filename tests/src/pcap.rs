//! A raw packet capture on one interface of a namespace (AF_PACKET), kept in memory.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{bail, Result};

/// Frames are accumulated up to this many bytes; past it the capture only counts.
const MAX_BYTES: usize = 256 * 1024 * 1024;

pub struct PacketCapture {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<Vec<u8>>>>,
}

impl PacketCapture {
    /// Starts capturing every frame on `ifname` inside namespace `netns`.
    pub fn start(netns: &str, ifname: &str) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (ns, name, flag) = (netns.to_string(), ifname.to_string(), stop.clone());
        let thread = std::thread::spawn(move || -> Result<Vec<u8>> {
            crate::netns::enter(&ns)?;
            let fd = open_socket(&name);
            let _ = ready_tx.send(fd.as_ref().map(|_| ()).map_err(|e| e.to_string()));
            let fd = fd?;
            let mut out = Vec::new();
            let mut buf = vec![0u8; 65536];
            while !flag.load(Ordering::Relaxed) {
                // SAFETY: reading into a buffer we own, of the length we pass.
                let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n > 0 && out.len() < MAX_BYTES {
                    out.extend_from_slice(&buf[..n as usize]);
                }
            }
            // SAFETY: fd is ours and closed once.
            unsafe { libc::close(fd) };
            Ok(out)
        });
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self {
                stop,
                thread: Some(thread),
            }),
            Ok(Err(e)) => bail!("packet capture on {ifname}: {e}"),
            Err(_) => bail!("packet capture thread died"),
        }
    }

    /// Stops and returns every captured frame, concatenated.
    pub fn finish(mut self) -> Result<Vec<u8>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("finished once")
            .join()
            .expect("capture thread")
    }
}

impl Drop for PacketCapture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn open_socket(ifname: &str) -> Result<i32> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket calls with checked results.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto as i32);
        if fd < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        let name = std::ffi::CString::new(ifname)?;
        let index = libc::if_nametoindex(name.as_ptr());
        if index == 0 {
            bail!("no interface {ifname}");
        }
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = index as i32;
        if libc::bind(
            fd,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        ) != 0
        {
            bail!("bind: {}", std::io::Error::last_os_error());
        }
        // Wake up regularly to notice the stop flag.
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
        Ok(fd)
    }
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
