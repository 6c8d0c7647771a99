//! What an idle tunnel keeps allocated. A binary of its own: it counts the live heap bytes
//! of the whole process with a global allocator, so nothing else may run beside it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use lanyard_core::hbone::{self, ConnectRequest, Copied, Settings};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// A tunnel waiting for data holds no read buffer, also after carrying a request: with a
/// 64 KiB chunk held per direction, 10k keep-alive connections would pin 640 MiB.
#[tokio::test(flavor = "current_thread")]
async fn an_idle_tunnel_releases_its_read_buffer_after_traffic() {
    let settings = Settings::default();
    let (client_io, server_io) = tokio::io::duplex(1 << 20);
    // The far end: counts what arrives and keeps its stream open.
    let (got_tx, mut got) = mpsc::channel::<usize>(16);
    tokio::spawn(hbone::serve(server_io, settings, move |req| {
        let got = got_tx.clone();
        tokio::spawn(async move {
            let mut stream = req.accept().unwrap();
            while let Some(Ok(chunk)) = stream.recv.data().await {
                let _ = stream.recv.flow_control().release_capacity(chunk.len());
                let _ = got.send(chunk.len()).await;
            }
            drop(stream.send);
        });
    }));
    let conn = hbone::handshake(client_io, settings).await.unwrap();
    let authority: SocketAddr = "10.0.0.1:80".parse().unwrap();
    let (stream, _guard) = conn
        .connect(ConnectRequest {
            authority,
            headers: Default::default(),
        })
        .await
        .unwrap();

    // The near end: an app connection whose accepted side is copied into the tunnel.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut app = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (mut accepted, _) = l.accept().await.unwrap();
    let before = LIVE.load(Ordering::Relaxed);
    tokio::spawn(async move {
        let mut copied = Copied::default();
        let _ = hbone::copy_bidirectional(&mut accepted, stream, &mut copied).await;
    });
    settle().await;
    let held = LIVE.load(Ordering::Relaxed) - before;
    assert!(
        held < 8 * 1024,
        "a tunnel that never carried data holds {held} bytes"
    );

    app.write_all(&[7u8; 1024]).await.unwrap();
    let mut received = 0;
    while received < 1024 {
        let n = tokio::time::timeout(Duration::from_secs(5), got.recv())
            .await
            .expect("the far end receives the request")
            .unwrap();
        received += n;
    }
    settle().await;
    let held = LIVE.load(Ordering::Relaxed) - before;
    assert!(
        held < 8 * 1024,
        "an idle tunnel holds {held} bytes after its first request"
    );
}

/// Lets every task run until it waits on I/O again.
async fn settle() {
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
