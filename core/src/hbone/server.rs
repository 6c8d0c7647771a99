//! The HBONE server side: HTTP/2 over an established TLS session, one `CONNECT` per stream.

use std::future::poll_fn;
use std::net::SocketAddr;

use bytes::Bytes;
use h2::server::SendResponse;
use http::{HeaderMap, Method, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use super::cork::{cork, drained};
use super::{Error, H2Stream, Settings};

/// A `CONNECT` the server has received, not yet answered.
pub struct InboundRequest {
    pub authority: SocketAddr,
    pub headers: HeaderMap,
    respond: SendResponse<Bytes>,
    recv: h2::RecvStream,
}

impl InboundRequest {
    /// Answers 200 and hands back the stream to copy.
    pub fn accept(mut self) -> Result<H2Stream, Error> {
        let send = self.respond.send_response(Response::new(()), false)?;
        Ok(H2Stream {
            send,
            recv: self.recv,
        })
    }

    /// Answers with an error status and ends the stream.
    pub fn refuse(mut self, status: StatusCode) {
        let mut resp = Response::new(());
        *resp.status_mut() = status;
        let _ = self.respond.send_response(resp, true);
    }
}

/// Serves one HBONE connection: every valid `CONNECT` goes to `handler`, which starts the
/// tunnel's own task; anything else is answered 400 here.
pub async fn serve<IO, H>(io: IO, settings: Settings, handler: H) -> Result<(), Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(InboundRequest),
{
    let (io, drain) = cork(io);
    let handshake = h2::server::Builder::new()
        .initial_window_size(settings.stream_window)
        .initial_connection_window_size(settings.connection_window)
        .max_frame_size(settings.max_frame_size)
        .max_concurrent_streams(settings.max_streams)
        .max_send_buffer_size(settings.max_send_buffer)
        .handshake::<_, Bytes>(io);
    let mut conn = drained(&drain, handshake).await?;
    while let Some(next) = drained(&drain, poll_fn(|cx| conn.poll_accept(cx))).await {
        let (req, mut respond) = next?;
        let (parts, recv) = req.into_parts();
        let authority = parts
            .uri
            .authority()
            .and_then(|a| a.as_str().parse::<SocketAddr>().ok());
        match (parts.method == Method::CONNECT, authority) {
            (true, Some(authority)) => {
                handler(InboundRequest {
                    authority,
                    headers: parts.headers,
                    respond,
                    recv,
                });
            }
            _ => {
                debug!(method = %parts.method, uri = %parts.uri, "HBONE request is not CONNECT to ip:port");
                let mut resp = Response::new(());
                *resp.status_mut() = StatusCode::BAD_REQUEST;
                let _ = respond.send_response(resp, true);
            }
        }
    }
    Ok(())
}
