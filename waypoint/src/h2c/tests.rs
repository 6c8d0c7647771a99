use http_body_util::{Empty, Full};
use tokio::io::AsyncWriteExt;

use super::*;

fn offering(settings: &str) -> http::request::Builder {
    Request::builder()
        .uri("/todos?x=1")
        .header("host", "todo.demo:8080")
        .header("connection", "Upgrade, HTTP2-Settings")
        .header("upgrade", "h2c")
        .header("http2-settings", settings)
}

/// curl's offer: SETTINGS_MAX_CONCURRENT_STREAMS 100, INITIAL_WINDOW_SIZE 32 MiB, ENABLE_PUSH 0.
const CURL_SETTINGS: &str = "AAMAAABkAAQCAAAAAAIAAAAA";

#[test]
fn offers_are_taken_only_when_complete_and_bodiless() {
    let ok = offering(CURL_SETTINGS).body(Empty::<Bytes>::new()).unwrap();
    assert!(offer(&ok));
    let padded = offering("AAMAAABk==").body(Empty::<Bytes>::new()).unwrap();
    assert!(offer(&padded));

    let with_body = offering(CURL_SETTINGS)
        .body(Full::new(Bytes::from_static(b"data")))
        .unwrap();
    assert!(!offer(&with_body), "a body stays HTTP/1.1");
    for bad in ["!!", "AAMAAA"] {
        let r = offering(bad).body(Empty::<Bytes>::new()).unwrap();
        assert!(!offer(&r), "settings {bad:?}");
    }
    let no_settings = Request::builder()
        .header("connection", "Upgrade")
        .header("upgrade", "h2c")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert!(!offer(&no_settings));
    let http10 = offering(CURL_SETTINGS)
        .version(Version::HTTP_10)
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert!(!offer(&http10));
    let several = offering(CURL_SETTINGS)
        .header("upgrade", "websocket")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert!(offer(&several), "h2c among several offers");
}

#[test]
fn string_lengths_use_hpack_prefix_integers() {
    let mut out = BytesMut::new();
    string(&mut out, &[b'a'; 126]);
    assert_eq!(out[0], 126);
    let mut out = BytesMut::new();
    string(&mut out, &[b'a'; 1337]);
    // RFC 7541 §5.1 with a 7-bit prefix: 127, then 1210 in 7-bit groups.
    assert_eq!(&out[..3], &[127, 0xba, 0x09]);
    assert_eq!(out.len(), 3 + 1337);
}

#[test]
fn requests_too_large_for_one_frame_are_not_upgraded() {
    let r = offering(CURL_SETTINGS)
        .header("x-big", "v".repeat(MAX_FRAME))
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert!(header_block(&r).is_none());
}

/// A real HTTP/2 server (the h2 crate) reads the rewritten connection: the upgrading
/// request arrives as stream 1, with its headers decoded as sent.
#[tokio::test]
async fn the_upgrading_request_reaches_an_http2_server_as_stream_1() {
    let long = "x".repeat(300);
    let req = offering(CURL_SETTINGS)
        .method("DELETE")
        .header("x-user", "alice")
        .header("x-long", &long)
        .header("te", "trailers")
        .header("keep-alive", "timeout=5")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let block = header_block(&req).unwrap();
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let mut hello = PREFACE.to_vec();
    // SETTINGS, 6 bytes, stream 0: MAX_CONCURRENT_STREAMS = 100.
    hello.extend_from_slice(&[0, 0, 6, 0x4, 0, 0, 0, 0, 0, 0, 0x3, 0, 0, 0, 100]);
    client.write_all(&hello).await.unwrap();

    let io = start(server, block).await.unwrap();
    let mut conn = h2::server::handshake(io).await.unwrap();
    let (first, _respond) = conn.accept().await.unwrap().unwrap();
    assert_eq!(first.method(), "DELETE");
    assert_eq!(first.uri(), "http://todo.demo:8080/todos?x=1");
    let h = first.headers();
    assert_eq!(h["x-user"], "alice");
    assert_eq!(h["x-long"], long.as_str());
    assert_eq!(h["te"], "trailers");
    for gone in [
        "connection",
        "upgrade",
        "http2-settings",
        "keep-alive",
        "host",
    ] {
        assert!(h.get(gone).is_none(), "{gone}");
    }
    assert!(first.body().is_end_stream());
}

#[tokio::test]
async fn a_client_that_does_not_speak_http2_after_the_101_is_dropped() {
    let req = offering(CURL_SETTINGS).body(Empty::<Bytes>::new()).unwrap();
    let (mut client, server) = tokio::io::duplex(1024);
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let err = start(server, header_block(&req).unwrap())
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
}
