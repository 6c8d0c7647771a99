//! HBONE: TCP streams carried as HTTP/2 `CONNECT` requests inside mutual TLS on port 15008,
//! wire-compatible with Istio's ztunnel. `:authority` is the destination `ip:port`; the
//! response status says whether the tunnel is up (200) or why not (400/401/503).

mod client;
mod copy;
mod cork;
mod io;
mod server;

use std::time::Duration;

pub use client::{handshake, ConnectRequest, Connection, StreamGuard};
pub use copy::{copy_bidirectional, Copied, H2Stream, Tunnel};
pub use io::H2Io;
pub use server::{serve, InboundRequest};

pub const HBONE_DEFAULT_PORT: u16 = 15008;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("HTTP/2: {0}")]
    H2(#[from] h2::Error),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("tunnel refused by peer with HTTP {0}")]
    Refused(http::StatusCode),
    #[error("HTTP/2 stream closed before the data was sent")]
    StreamClosed,
    #[error("building CONNECT request: {0}")]
    Request(#[from] http::Error),
}

/// Flow control and framing for HBONE connections. Large windows matter: a single stream
/// cannot go faster than window / RTT.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub stream_window: u32,
    pub connection_window: u32,
    pub max_frame_size: u32,
    /// Streams one connection carries at most; the pool opens another connection past it.
    /// Each connection costs about 32 KiB of codec and TLS buffers whatever it carries, so
    /// more streams per connection is less memory per idle tunnel: 256 rather than 128 took
    /// 10k idle tunnels from 1.83–1.87 to 1.67–1.69 KiB each per agent (paired runs).
    /// A power of two: h2 keeps a connection's streams in a slab that grows by doubling
    /// and never shrinks, so 100 streams would pay for 128 slots.
    pub max_streams: u32,
    /// `CONNECT`s one connection has awaiting their answer at most; more wait their turn.
    /// It caps the frames either peer queues at once, which sizes h2's frame queues for the
    /// connection's whole life (see `Connection`). With 16 rather than no cap, 10k idle
    /// tunnels cost about 0.3 KiB less each per agent (paired runs). Opens past 16 wait for
    /// earlier answers, one round trip to the peer's agent each.
    pub max_opening: u32,
    /// Bound on what one stream may buffer toward a slow peer.
    pub max_send_buffer: usize,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            stream_window: 4 * 1024 * 1024,
            connection_window: 16 * 1024 * 1024,
            max_frame_size: 1024 * 1024,
            max_streams: 256,
            max_opening: 16,
            max_send_buffer: 1024 * 1024,
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(20),
        }
    }
}

#[cfg(test)]
mod tests;
