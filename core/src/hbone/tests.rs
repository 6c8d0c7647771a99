use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::ca::{csr_for, Authority};
use crate::identity::Identity;
use crate::tls::{self, WorkloadCert};

fn cert(ca: &Authority, id: &str) -> Arc<WorkloadCert> {
    let id: Identity = id.parse().unwrap();
    let (csr, key) = csr_for(&id).unwrap();
    let chain = ca.sign(&csr, &id, Duration::from_secs(3600)).unwrap();
    let der = |p: &String| {
        CertificateDer::from_pem_slice(p.as_bytes())
            .unwrap()
            .into_owned()
    };
    let root = der(&chain[1]);
    Arc::new(WorkloadCert::new(chain.iter().map(der).collect(), vec![root], key).unwrap())
}

/// An HBONE server that tunnels every CONNECT to its authority.
async fn hbone_server(server_cert: Arc<WorkloadCert>) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            let cert = server_cert.clone();
            tokio::spawn(async move {
                let Ok((tls, peer)) = tls::accept(tcp, &cert, "cluster.local").await else {
                    return;
                };
                assert_eq!(peer.to_string(), "spiffe://cluster.local/ns/a/sa/client");
                let _ = serve(tls, Settings::default(), |req: InboundRequest| {
                    tokio::spawn(async move {
                        let mut upstream = TcpStream::connect(req.authority).await.unwrap();
                        let stream = req.accept().unwrap();
                        let mut copied = Copied::default();
                        let _ = copy_bidirectional(&mut upstream, stream, &mut copied).await;
                    });
                })
                .await;
            });
        }
    });
    addr
}

/// A server that reads everything, then answers with the byte count and closes.
async fn counting_server() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut n = 0u64;
                let mut sum = 0u64;
                loop {
                    let r = s.read(&mut buf).await.unwrap();
                    if r == 0 {
                        break;
                    }
                    sum = buf[..r]
                        .iter()
                        .fold(sum, |a, b| a.wrapping_mul(31).wrapping_add(*b as u64));
                    n += r as u64;
                }
                s.write_all(format!("{n} {sum}").as_bytes()).await.unwrap();
            });
        }
    });
    addr
}

/// A tunnel, through a new HBONE server and client connection, to a new counting server.
async fn tunnel_to_counting_server(settings: Settings) -> (H2Stream, StreamGuard) {
    let ca = Authority::generate("cluster.local").unwrap();
    let client_cert = cert(&ca, "spiffe://cluster.local/ns/a/sa/client");
    let server_cert = cert(&ca, "spiffe://cluster.local/ns/b/sa/server");
    let hbone = hbone_server(server_cert.clone()).await;
    let target = counting_server().await;
    let tls = tls::connect(
        TcpStream::connect(hbone).await.unwrap(),
        &client_cert,
        &server_cert.identity,
    )
    .await
    .unwrap();
    let conn = handshake(tls, settings).await.unwrap();
    conn.connect(ConnectRequest {
        authority: target,
        headers: Default::default(),
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn tunnels_bytes_exactly_with_half_close() {
    // The "app" side: a local TCP pair whose accepted end we copy into the tunnel.
    let local = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut app = TcpStream::connect(local.local_addr().unwrap())
        .await
        .unwrap();
    let (mut accepted, _) = local.accept().await.unwrap();

    let (stream, _guard) = tunnel_to_counting_server(Settings::default()).await;
    let proxy = tokio::spawn(async move {
        let mut copied = Copied::default();
        copy_bidirectional(&mut accepted, stream, &mut copied)
            .await
            .unwrap();
        copied
    });

    let payload: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let expect_sum = payload
        .iter()
        .fold(0u64, |a, b| a.wrapping_mul(31).wrapping_add(*b as u64));
    app.write_all(&payload).await.unwrap();
    app.shutdown().await.unwrap(); // half-close: the answer must still come back
    let mut answer = String::new();
    app.read_to_string(&mut answer).await.unwrap();
    assert_eq!(answer, format!("{} {expect_sum}", payload.len()));
    let copied = proxy.await.unwrap();
    assert_eq!(copied.tcp_to_tunnel, payload.len() as u64);
    assert_eq!(copied.tunnel_to_tcp, answer.len() as u64);
}

#[tokio::test]
async fn refuses_a_server_with_another_identity() {
    let ca = Authority::generate("cluster.local").unwrap();
    let client_cert = cert(&ca, "spiffe://cluster.local/ns/a/sa/client");
    let server_cert = cert(&ca, "spiffe://cluster.local/ns/b/sa/server");
    let hbone = hbone_server(server_cert).await;
    let expected: Identity = "spiffe://cluster.local/ns/b/sa/someone-else"
        .parse()
        .unwrap();
    let r = tls::connect(
        TcpStream::connect(hbone).await.unwrap(),
        &client_cert,
        &expected,
    )
    .await;
    assert!(r.is_err());
}

#[tokio::test]
async fn refuses_a_client_from_another_root() {
    let ca = Authority::generate("cluster.local").unwrap();
    let rogue = Authority::generate("cluster.local").unwrap();
    let server_cert = cert(&ca, "spiffe://cluster.local/ns/b/sa/server");
    let rogue_cert = cert(&rogue, "spiffe://cluster.local/ns/a/sa/client");
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        tls::accept(tcp, &server_cert, "cluster.local")
            .await
            .map(|_| ())
    });
    // The client's own check of the server fails too; what matters is that the server refuses.
    let _ = tls::connect(
        TcpStream::connect(addr).await.unwrap(),
        &rogue_cert,
        &"spiffe://cluster.local/ns/b/sa/server".parse().unwrap(),
    )
    .await;
    assert!(server.await.unwrap().is_err());
}

/// Opens beyond `max_opening` wait for an answer to an earlier one before they reach the
/// peer, so neither side ever queues more than that many `CONNECT`s at once.
#[tokio::test]
async fn opens_wait_while_max_opening_are_unanswered() {
    let settings = Settings {
        max_opening: 2,
        ..Settings::default()
    };
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(serve(server_io, settings, move |req: InboundRequest| {
        assert!(tx.try_send(req).is_ok(), "test channel has room");
    }));
    let conn = handshake(client_io, settings).await.unwrap();
    for port in 1..=3 {
        let conn = conn.clone();
        tokio::spawn(async move {
            let req = ConnectRequest {
                authority: ([127, 0, 0, 1], port).into(),
                headers: Default::default(),
            };
            let _ = conn.connect(req).await;
        });
    }
    async fn next(rx: &mut tokio::sync::mpsc::Receiver<InboundRequest>) -> Option<InboundRequest> {
        let wait = tokio::time::timeout(Duration::from_millis(300), rx.recv());
        wait.await.ok().flatten()
    }
    let first = next(&mut rx).await.expect("first CONNECT arrives");
    let _second = next(&mut rx).await.expect("second CONNECT arrives");
    assert!(next(&mut rx).await.is_none(), "a third went out unanswered");
    first.refuse(http::StatusCode::SERVICE_UNAVAILABLE);
    assert!(next(&mut rx).await.is_some(), "the third follows an answer");
}

/// Writes through `H2Io` of mixed sizes, many queued in h2 at once (and cut into the
/// connection's corked turns), arrive intact and in order.
#[tokio::test]
async fn h2io_writes_of_mixed_sizes_arrive_intact_and_in_order() {
    use tokio::io::AsyncWriteExt;
    let (stream, _guard) = tunnel_to_counting_server(Settings::default()).await;
    let mut io = H2Io::new(stream);
    let mut sent = Vec::new();
    // Around the cork's pass-through size and past it, written without waiting for the peer.
    for i in 0..2000u32 {
        let len = [1, 700, 1200, 3000, 16383, 16384, 40000][i as usize % 7];
        let chunk: Vec<u8> = (0..len).map(|j| ((i * 7 + j) % 253) as u8).collect();
        io.write_all(&chunk).await.unwrap();
        sent.extend_from_slice(&chunk);
    }
    shut_down_and_check(io, &sent).await;
}

/// Vectored writes (hyper's head and body, as slices) through `H2Io`: a write takes what
/// the stream's window allows, possibly ending inside a slice, and the rest follows intact.
#[tokio::test]
async fn h2io_vectored_writes_arrive_intact_when_cut_by_the_window() {
    use std::io::IoSlice;
    use tokio::io::{AsyncWrite, AsyncWriteExt};
    // A small send buffer: h2 grants a stream capacity only up to it.
    let settings = Settings {
        max_send_buffer: 32 * 1024,
        ..Settings::default()
    };
    let (stream, _guard) = tunnel_to_counting_server(settings).await;
    let mut io = H2Io::new(stream);
    assert!(io.is_write_vectored());
    let mut sent = Vec::new();
    let mut cut = 0;
    for i in 0..300u32 {
        // Past the 64-KiB window now and then, so that some writes end mid-slice.
        let lens = [[0, 120, 1024], [37, 70_000, 5], [16_384, 1, 40_000]][i as usize % 3];
        let slices: Vec<Vec<u8>> = lens
            .iter()
            .enumerate()
            .map(|(k, len)| {
                (0..*len)
                    .map(|j| ((i * 11 + k as u32 + j) % 251) as u8)
                    .collect()
            })
            .collect();
        let all: Vec<u8> = slices.concat();
        let mut off = 0;
        for _ in 0..10_000 {
            if off == all.len() {
                break;
            }
            // The slices from `off` on, the first one cut at `off`.
            let mut start = off;
            let mut bufs = Vec::new();
            for s in &slices {
                if start >= s.len() {
                    start -= s.len();
                    continue;
                }
                bufs.push(IoSlice::new(&s[start..]));
                start = 0;
            }
            let n = io.write_vectored(&bufs).await.unwrap();
            assert!(n > 0, "a vectored write made progress");
            if n < all.len() - off {
                cut += 1;
            }
            off += n;
        }
        assert_eq!(off, all.len(), "all of write {i} was taken");
        sent.extend_from_slice(&all);
    }
    assert!(cut > 0, "some writes were cut by the window");
    shut_down_and_check(io, &sent).await;
}

/// Half-closes `io` and checks that the counting server got exactly `sent`.
async fn shut_down_and_check(mut io: H2Io, sent: &[u8]) {
    use tokio::io::AsyncWriteExt;
    io.shutdown().await.unwrap();
    let expect_sum = sent
        .iter()
        .fold(0u64, |a, b| a.wrapping_mul(31).wrapping_add(*b as u64));
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(20), io.read_to_string(&mut answer))
        .await
        .expect("the counting server answered")
        .unwrap();
    assert_eq!(answer, format!("{} {expect_sum}", sent.len()));
}
