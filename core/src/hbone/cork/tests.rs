use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::task::Waker;

use tokio::io::AsyncWriteExt;

use super::*;

/// A socket that records each write call, and can refuse writes (full) or fail them.
#[derive(Clone, Default)]
struct Socket(Arc<Mutex<Log>>);

#[derive(Default)]
struct Log {
    writes: Vec<Vec<u8>>,
    full: bool,
    broken: bool,
    shut: bool,
}

impl Socket {
    fn writes(&self) -> Vec<usize> {
        self.0.lock().unwrap().writes.iter().map(Vec::len).collect()
    }
    fn set(&self, f: impl FnOnce(&mut Log)) {
        f(&mut self.0.lock().unwrap())
    }
}

impl AsyncWrite for Socket {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        let mut log = self.0.lock().unwrap();
        if log.broken {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        }
        if log.full {
            return Poll::Pending;
        }
        log.writes.push(b.to_vec());
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.lock().unwrap().shut = true;
        Poll::Ready(Ok(()))
    }
}

fn drain(d: &Drain<Socket>) {
    d.poll(&mut Context::from_waker(Waker::noop()));
}

#[tokio::test]
async fn a_turns_frames_reach_the_socket_in_one_write_after_the_poll() {
    let socket = Socket::default();
    let (mut h2, d) = cork(socket.clone());
    for _ in 0..5 {
        h2.write_all(&[7; 1100]).await.unwrap();
        h2.flush().await.unwrap();
    }
    assert!(
        socket.writes().is_empty(),
        "h2's flushes wrote: {:?}",
        socket.writes()
    );
    drain(&d);
    assert_eq!(socket.writes(), vec![5 * 1100]);
    drain(&d);
    assert_eq!(
        socket.writes(),
        vec![5 * 1100],
        "a drain rewrote sent bytes"
    );
}

#[tokio::test]
async fn bulk_frames_skip_the_buffer_when_it_is_empty() {
    let socket = Socket::default();
    let (mut h2, d) = cork(socket.clone());
    h2.write_all(&[1; PASS_THROUGH]).await.unwrap();
    assert_eq!(socket.writes(), vec![PASS_THROUGH]);
    // Behind buffered bytes, a bulk frame queues, so the order on the wire holds.
    h2.write_all(&[2; 10]).await.unwrap();
    h2.write_all(&[3; PASS_THROUGH]).await.unwrap();
    assert_eq!(socket.writes(), vec![PASS_THROUGH]);
    drain(&d);
    let log = socket.0.lock().unwrap();
    assert_eq!(log.writes[1].len(), 10 + PASS_THROUGH);
    assert_eq!(&log.writes[1][..11], &[2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3]);
}

#[tokio::test]
async fn a_full_socket_stops_h2_at_the_limit() {
    let socket = Socket::default();
    socket.set(|l| l.full = true);
    let (mut h2, d) = cork(socket.clone());
    let mut taken = 0;
    let chunk = [0u8; 1000];
    for _ in 0..1000 {
        let cx = &mut Context::from_waker(Waker::noop());
        match Pin::new(&mut h2).poll_write(cx, &chunk) {
            Poll::Ready(Ok(n)) => taken += n,
            Poll::Ready(Err(e)) => panic!("{e}"),
            Poll::Pending => break,
        }
    }
    assert!(
        taken <= LIMIT && taken > LIMIT - chunk.len(),
        "the cork took {taken} bytes from h2 toward a full socket"
    );
    socket.set(|l| l.full = false);
    drain(&d);
    assert_eq!(socket.writes(), vec![taken]);
    h2.write_all(&chunk).await.unwrap();
}

#[tokio::test]
async fn a_failed_drain_fails_h2s_next_write() {
    let socket = Socket::default();
    let (mut h2, d) = cork(socket.clone());
    h2.write_all(b"frame").await.unwrap();
    socket.set(|l| l.broken = true);
    drain(&d);
    let e = h2.write_all(b"next").await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn shutdown_writes_what_is_buffered_first() {
    let socket = Socket::default();
    let (mut h2, _d) = cork(socket.clone());
    h2.write_all(b"goaway").await.unwrap();
    poll_fn(|cx| Pin::new(&mut h2).poll_shutdown(cx))
        .await
        .unwrap();
    assert_eq!(socket.writes(), vec![6]);
    assert!(socket.0.lock().unwrap().shut);
}
