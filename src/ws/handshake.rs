//! The WebSocket opening handshake (RFC 6455 §4.2), done by us rather than by
//! a WebSocket library so the connection keeps the raw `TcpStream`: the
//! fan-out writes prepared frames straight into it.

use axum::body::Body;
use axum::extract::Query;
use axum::http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use sha1::{Digest, Sha1};
use switchboard_proto::ErrorCode;
use tokio::net::TcpStream;

use crate::auth::bearer;
use crate::http::ApiError;

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID.as_bytes());
    STANDARD.encode(sha.finalize())
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Checks that `req` asks for a WebSocket upgrade we can do; returns the
/// client's key.
pub fn check_upgrade<B>(req: &Request<B>) -> Result<HeaderValue, ApiError> {
    let h = req.headers();
    if req.method() != Method::GET
        || !header_has_token(h, header::CONNECTION, "upgrade")
        || !header_has_token(h, header::UPGRADE, "websocket")
    {
        return Err(ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            ErrorCode::ValidationError,
            "this endpoint is a WebSocket: send GET with Connection: Upgrade and Upgrade: websocket",
        ));
    }
    if h.get(header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
        return Err(ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            ErrorCode::ValidationError,
            "only WebSocket version 13 is supported",
        ));
    }
    let key = h.get(header::SEC_WEBSOCKET_KEY).cloned();
    match key {
        Some(key) if STANDARD.decode(key.as_bytes()).is_ok_and(|k| k.len() == 16) => Ok(key),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::ValidationError,
            "Sec-WebSocket-Key must be 16 bytes in base64",
        )),
    }
}

/// How a client authenticates its upgrade.
#[derive(Debug, PartialEq, Eq)]
pub enum Credential {
    /// A JWT, from `?token=` or `Authorization: Bearer`.
    Token(String),
    /// A short-lived ticket, from `?ticket=`.
    Ticket(String),
}

#[derive(serde::Deserialize)]
struct WsQuery {
    token: Option<String>,
    ticket: Option<String>,
}

/// The credential `req` carries: a token or a ticket, not both. A request
/// with neither carries an empty token, refused as missing by the verifier.
pub fn credential<B>(req: &Request<B>) -> Result<Credential, ApiError> {
    let Query(query) = Query::<WsQuery>::try_from_uri(req.uri())
        .map_err(|e| ApiError::of(ErrorCode::ValidationError, e.body_text()))?;
    let token = query.token.or_else(|| bearer(req.headers()).map(str::to_owned));
    match (token, query.ticket) {
        (Some(_), Some(_)) => Err(ApiError::of(
            ErrorCode::ValidationError,
            "connect with a token or a ticket, not both",
        )),
        (None, Some(ticket)) => Ok(Credential::Ticket(ticket)),
        (token, None) => Ok(Credential::Token(token.unwrap_or_default())),
    }
}

/// The `101 Switching Protocols` answer.
pub fn switching_protocols(key: &HeaderValue) -> Response<Body> {
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&accept_key(key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    res
}

/// Waits for hyper to hand the connection over and unwraps the raw socket,
/// with any bytes the client sent after its handshake.
pub async fn take_socket(on_upgrade: OnUpgrade) -> Option<(TcpStream, Bytes)> {
    let upgraded = on_upgrade.await.ok()?;
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => Some((parts.io.into_inner(), parts.read_buf)),
        Err(_) => {
            tracing::error!("upgraded connection is not a plain TCP stream");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_6455_example_key() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    fn req(headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method("GET").uri("/v1/ws");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn upgrade_requests() {
        let good = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        assert!(check_upgrade(&req(&good)).is_ok());
        assert!(check_upgrade(&req(&good[1..])).is_err());
        let mut v12 = good;
        v12[2].1 = "12";
        assert!(check_upgrade(&req(&v12)).is_err());
        let mut short = good;
        short[3].1 = "c2hvcnQ=";
        assert!(check_upgrade(&req(&short)).is_err());
    }

    #[test]
    fn credentials() {
        let at = |uri: &str, headers: &[(&str, &str)]| {
            let mut b = Request::builder().uri(uri);
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            credential(&b.body(()).unwrap())
        };
        assert_eq!(at("/v1/ws?token=a", &[]).unwrap(), Credential::Token("a".into()));
        assert_eq!(
            at("/v1/ws", &[("authorization", "Bearer b")]).unwrap(),
            Credential::Token("b".into())
        );
        assert_eq!(
            at("/v1/ws?ticket=t", &[]).unwrap(),
            Credential::Ticket("t".into())
        );
        assert_eq!(at("/v1/ws", &[]).unwrap(), Credential::Token(String::new()));
        assert!(at("/v1/ws?token=a&ticket=t", &[]).is_err());
        assert!(at("/v1/ws?ticket=t", &[("authorization", "Bearer b")]).is_err());
        assert!(
            at("/v1/ws?token=a&token=b", &[]).is_err(),
            "a duplicate is refused"
        );
    }
}
