//! A small HTTP/1.1 client for the admin and metrics endpoints of agents and waypoints.

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::Error;

/// Bounds a stuck endpoint: the CLI answers or says why, never hangs.
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// GETs `url` (`http://host:port/path?query`); a non-2xx status is an error with the body.
pub fn get(url: &str) -> Result<Bytes, Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| http_err(url, e))?;
    rt.block_on(async {
        tokio::time::timeout(TIMEOUT, fetch(url))
            .await
            .map_err(|_| http_err(url, "timed out after 10 s"))?
    })
}

/// GETs `url` and decodes its JSON body.
pub fn get_json(url: &str) -> Result<serde_json::Value, Error> {
    let body = get(url)?;
    serde_json::from_slice(&body).map_err(|e| http_err(url, format!("not JSON: {e}")))
}

/// `base` plus `path`, accepting `host:port` without a scheme.
pub fn join(base: &str, path: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.contains("://") {
        format!("{base}{path}")
    } else {
        format!("http://{base}{path}")
    }
}

fn http_err(url: &str, detail: impl ToString) -> Error {
    Error::Http {
        url: url.to_string(),
        detail: detail.to_string(),
    }
}

async fn fetch(url: &str) -> Result<Bytes, Error> {
    let uri: Uri = url.parse().map_err(|e| http_err(url, e))?;
    if uri.scheme_str() != Some("http") {
        return Err(http_err(url, "only http:// URLs are supported"));
    }
    let host = uri.host().ok_or_else(|| http_err(url, "no host"))?;
    let addr = format!("{host}:{}", uri.port_u16().unwrap_or(80));
    let tcp = TcpStream::connect(&addr)
        .await
        .map_err(|e| http_err(url, e))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| http_err(url, e))?;
    tokio::spawn(conn);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let req = Request::get(path)
        .header("host", addr.as_str())
        .body(Empty::<Bytes>::new())
        .map_err(|e| http_err(url, e))?;
    let resp = send.send_request(req).await.map_err(|e| http_err(url, e))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| http_err(url, e))?
        .to_bytes();
    if status != StatusCode::OK {
        let text = String::from_utf8_lossy(&body);
        return Err(http_err(url, format!("{status}: {}", text.trim())));
    }
    Ok(body)
}
