use std::sync::atomic::{AtomicUsize, Ordering};

use http_body_util::BodyExt;
use hyper::service::service_fn;
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::local;

/// An HTTP/1 server on loopback that counts the connections it accepted. `/close` answers
/// with `Connection: close`; `/big` answers 1 MiB.
async fn server() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let mut resp = Response::new(match req.uri().path() {
                        "/big" => local::full(Bytes::from(vec![7u8; 1 << 20])),
                        _ => local::full(Bytes::from_static(b"ok")),
                    });
                    if req.uri().path() == "/close" {
                        resp.headers_mut()
                            .insert(http::header::CONNECTION, "close".parse().unwrap());
                    }
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, accepted)
}

/// A server that answers one request per connection, keeps it open a little (as a
/// keep-alive timeout would), then closes it without having said so.
async fn closing_server() -> (SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            });
        }
    });
    (addr, accepted)
}

async fn dial(addr: SocketAddr) -> Result<Stream, crate::upstream::Error> {
    TcpStream::connect(addr)
        .await
        .map(Stream::Plain)
        .map_err(|e| crate::upstream::Error::Connect(addr, e))
}

fn get(path: &str) -> Request<Body> {
    Request::builder()
        .uri(path)
        .header(http::header::HOST, "server")
        .body(local::empty())
        .unwrap()
}

async fn send(pool: &Arc<Http1Pool>, addr: SocketAddr, path: &str) -> PooledBody {
    let (resp, lease) = pool.send(addr, get(path), || dial(addr)).await.unwrap();
    assert_eq!(resp.status(), 200);
    PooledBody::new(resp.into_body(), Some(lease))
}

/// Reads the body to its end, as the server side of the waypoint does.
async fn read(body: PooledBody) -> usize {
    body.collect().await.unwrap().to_bytes().len()
}

#[tokio::test]
async fn a_connection_read_to_the_end_carries_the_next_request() {
    let (addr, accepted) = server().await;
    let pool = Arc::new(Http1Pool::default());
    for _ in 0..5 {
        assert_eq!(read(send(&pool, addr, "/").await).await, 2);
        assert_eq!(pool.idle_count(addr), 1);
    }
    assert_eq!(read(send(&pool, addr, "/big").await).await, 1 << 20);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn concurrent_requests_each_get_a_connection_and_all_return() {
    let (addr, accepted) = server().await;
    let pool = Arc::new(Http1Pool::default());
    let (a, b) = tokio::join!(send(&pool, addr, "/"), send(&pool, addr, "/"));
    assert_eq!(pool.idle_count(addr), 0, "both in use");
    read(a).await;
    read(b).await;
    assert_eq!(pool.idle_count(addr), 2);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_body_dropped_before_its_end_takes_its_connection_along() {
    let (addr, accepted) = server().await;
    let pool = Arc::new(Http1Pool::default());
    let mut body = send(&pool, addr, "/big").await;
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    drop(body);
    assert_eq!(pool.idle_count(addr), 0);
    assert_eq!(read(send(&pool, addr, "/").await).await, 2);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_connection_the_endpoint_closed_is_not_reused() {
    let (addr, accepted) = server().await;
    let pool = Arc::new(Http1Pool::default());
    read(send(&pool, addr, "/close").await).await;
    // The next request must not fail on the closed one, wherever hyper noticed the close.
    for _ in 0..3 {
        assert_eq!(read(send(&pool, addr, "/").await).await, 2);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_idle_connection_the_endpoint_closed_is_not_reused() {
    let (addr, accepted) = closing_server().await;
    let pool = Arc::new(Http1Pool::default());
    read(send(&pool, addr, "/").await).await;
    assert_eq!(pool.idle_count(addr), 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(read(send(&pool, addr, "/").await).await, 2);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_lease_of_none_closes_the_connection_after_its_response() {
    let (addr, accepted) = server().await;
    let pool = Arc::new(Http1Pool::default());
    let (resp, _lease) = pool.send(addr, get("/"), || dial(addr)).await.unwrap();
    read(PooledBody::new(resp.into_body(), None)).await;
    assert_eq!(pool.idle_count(addr), 0);
    read(send(&pool, addr, "/").await).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn idle_connections_are_swept_after_the_idle_timeout() {
    let (addr, _) = server().await;
    let pool = Arc::new(Http1Pool::default());
    read(send(&pool, addr, "/").await).await;
    pool.sweep(Duration::from_secs(60));
    assert_eq!(pool.idle_count(addr), 1, "young: kept");
    pool.sweep(Duration::ZERO);
    assert_eq!(pool.idle_count(addr), 0, "idle past the timeout: closed");
}

#[tokio::test]
async fn an_endpoint_that_refuses_is_a_connect_error() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let pool = Arc::new(Http1Pool::default());
    let e = pool
        .send(addr, get("/"), || dial(addr))
        .await
        .err()
        .unwrap();
    assert!(e.is_connect(), "{e}");
    assert!(e.to_string().contains(&addr.to_string()), "{e}");
}
