//! The HTTP side of the opening handshake: [`WsUpgrader::upgrade`](crate::WsUpgrader::upgrade)
//! checks a request and gives a [`PendingUpgrade`] or an [`UpgradeRejection`] (a 4xx, its
//! [`RejectionKind`] kept in the response's extensions for metrics).

use std::{fmt, future::Future};

use axum::{body::Body, response::Response};
use base64::Engine as _;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header, request::Parts};
use hyper::upgrade::OnUpgrade;
use sha1::{Digest, Sha1};
use ws_protocol::deflate::{DeflateParams, DeflatePolicy};

use crate::{WebSocket, WsUpgrader, options::Options};

/// RFC 6455 §1.3: appended to the client's key before hashing.
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why an upgrade was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectionKind {
    /// The method is not GET (405).
    MethodNotGet,
    /// The request is not a WebSocket upgrade at all: no `Upgrade: websocket` or no
    /// `Connection: upgrade` (426).
    NotUpgrade,
    /// `Sec-WebSocket-Version` is missing or not 13 (426, with `Sec-WebSocket-Version: 13`).
    UnsupportedVersion,
    /// `Sec-WebSocket-Key` is missing or not 16 base64-encoded bytes (400).
    BadKey,
    /// The origin check refused the request's `Origin` (403).
    OriginRefused,
    /// The connection cannot be upgraded (HTTP/2 without extended CONNECT, or a server
    /// without upgrade support) (500).
    NotUpgradable,
    /// A limit such as the maximum number of connections was reached (503).
    Overloaded,
    /// The server is shutting down and takes no new connections (503).
    ShuttingDown,
}

impl RejectionKind {
    /// A short name for logs and metric labels: `method_not_get`, `not_upgrade`,
    /// `unsupported_version`, `bad_key`, `origin_refused`, `not_upgradable`, `overloaded`,
    /// `shutting_down`.
    ///
    /// ```
    /// use ws_upgrader::RejectionKind;
    ///
    /// assert_eq!(RejectionKind::OriginRefused.as_str(), "origin_refused");
    /// ```
    pub fn as_str(&self) -> &'static str {
        match self {
            RejectionKind::MethodNotGet => "method_not_get",
            RejectionKind::NotUpgrade => "not_upgrade",
            RejectionKind::UnsupportedVersion => "unsupported_version",
            RejectionKind::BadKey => "bad_key",
            RejectionKind::OriginRefused => "origin_refused",
            RejectionKind::NotUpgradable => "not_upgradable",
            RejectionKind::Overloaded => "overloaded",
            RejectionKind::ShuttingDown => "shutting_down",
        }
    }
}

/// A refused upgrade: the status and the reason, given to the error handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRejection {
    kind: RejectionKind,
    reason: String,
}

impl UpgradeRejection {
    /// A rejection of the given kind with a reason for the client.
    pub fn new(kind: RejectionKind, reason: impl Into<String>) -> Self {
        UpgradeRejection {
            kind,
            reason: reason.into(),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> RejectionKind {
        self.kind
    }

    /// The HTTP status for it.
    pub fn status(&self) -> StatusCode {
        match self.kind {
            RejectionKind::MethodNotGet => StatusCode::METHOD_NOT_ALLOWED,
            RejectionKind::NotUpgrade | RejectionKind::UnsupportedVersion => {
                StatusCode::UPGRADE_REQUIRED
            }
            RejectionKind::BadKey => StatusCode::BAD_REQUEST,
            RejectionKind::OriginRefused => StatusCode::FORBIDDEN,
            RejectionKind::NotUpgradable => StatusCode::INTERNAL_SERVER_ERROR,
            RejectionKind::Overloaded | RejectionKind::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// A sentence for the client saying what to fix.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for UpgradeRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status().as_u16(), self.reason)
    }
}

impl std::error::Error for UpgradeRejection {}

/// The default error response: the status and the reason as plain text. Upgrade-required
/// answers also say which version and protocol to use, as RFC 6455 §4.2.2 asks.
pub(crate) fn default_error_response(rejection: &UpgradeRejection) -> Response {
    let mut response = Response::new(Body::from(format!("{}\n", rejection.reason())));
    *response.status_mut() = rejection.status();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    match rejection.kind() {
        RejectionKind::UnsupportedVersion | RejectionKind::NotUpgrade => {
            headers.insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        RejectionKind::MethodNotGet => {
            headers.insert(header::ALLOW, HeaderValue::from_static("GET"));
        }
        _ => {}
    }
    response
}

/// A request that passed every check; turn it into the 101 response with
/// [`on_upgrade`](PendingUpgrade::on_upgrade).
#[must_use = "the upgrade happens only when the response from on_upgrade is returned"]
pub struct PendingUpgrade {
    on_upgrade: OnUpgrade,
    pub(crate) accept: HeaderValue,
    protocol: Option<HeaderValue>,
    pub(crate) deflate: Option<(String, DeflateParams)>,
    upgrader: WsUpgrader,
}

impl fmt::Debug for PendingUpgrade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingUpgrade")
            .field("protocol", &self.protocol)
            .field("compression", &self.deflate.is_some())
            .finish_non_exhaustive()
    }
}

impl PendingUpgrade {
    /// The subprotocol selected for this connection, if any.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_ref().and_then(|p| p.to_str().ok())
    }

    /// Whether permessage-deflate was negotiated.
    pub fn compression(&self) -> bool {
        self.deflate.is_some()
    }

    /// Gives the `101 Switching Protocols` response and, once the client has it, runs
    /// `callback` with the socket on a new task.
    ///
    pub fn on_upgrade<F, Fut>(self, callback: F) -> Response
    where
        F: FnOnce(WebSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, self.accept);
        if let Some(protocol) = &self.protocol {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol.clone());
        }
        let deflate = match self.deflate {
            Some((extension, config)) => {
                if let Ok(value) = HeaderValue::from_str(&extension) {
                    headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, value);
                }
                Some(config)
            }
            None => None,
        };
        let protocol = self
            .protocol
            .and_then(|p| p.to_str().ok().map(str::to_owned));
        let options = self.upgrader.options;
        let on_upgrade = self.on_upgrade;
        // Only the refusal below logs in the caller's span: the callback's task is not wrapped
        // in it, so the callback decides what its polls cost in tracing.
        let span = tracing::Span::current();
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let socket = WebSocket::new(upgraded, options, deflate, protocol);
                    // On a task of its own: awaited here, it would carry this task's state
                    // (the callback's captures, the options, the upgrade's result) for the
                    // connection's whole life, 256 bytes per connection with ws-context's
                    // callback (`cargo xtask bench`, [S5](bench/README.md#scenarios)).
                    tokio::spawn(callback(socket));
                }
                Err(error) => {
                    tracing::debug!(parent: &span, %error, "client left before the upgrade completed");
                }
            }
        });
        response
    }
}

impl WsUpgrader {
    /// Checks an upgrade request and, when it is acceptable, gives the pending upgrade.
    ///
    /// On refusal the `Err` holds the HTTP response to send, written by the error handler:
    /// 405 for a method other than GET, 426 for a request without upgrade headers or with a
    /// version other than 13, 400 for a bad key, 403 for a refused origin.
    ///
    /// ```
    /// use axum::{Router, routing::get, extract::Request, response::Response};
    /// use ws_upgrader::WsUpgrader;
    ///
    /// async fn echo(request: Request) -> Response {
    ///     let (mut parts, _body) = request.into_parts();
    ///     match WsUpgrader::new().upgrade(&mut parts) {
    ///         Ok(pending) => pending.on_upgrade(|mut socket| async move {
    ///             while let Some(Ok(message)) = socket.recv().await {
    ///                 if message.is_data() && socket.send(message).await.is_err() {
    ///                     break;
    ///                 }
    ///             }
    ///         }),
    ///         Err(response) => response,
    ///     }
    /// }
    ///
    /// let app: Router = Router::new().route("/ws", get(echo));
    /// ```
    #[allow(clippy::result_large_err)] // the error is the response itself, returned at once
    pub fn upgrade(&self, parts: &mut Parts) -> Result<PendingUpgrade, Response> {
        self.check(parts)
            .map_err(|rejection| self.reject(&rejection))
    }

    /// Writes the response for a rejection through this upgrader's error handler. For checks
    /// made outside the upgrader (a connection limit, for example). The response carries the
    /// [`RejectionKind`] in its extensions, for metrics and logs.
    pub fn reject(&self, rejection: &UpgradeRejection) -> Response {
        tracing::debug!(
            status = rejection.status().as_u16(),
            reason = rejection.reason(),
            "upgrade refused"
        );
        let mut response = self.options.rejection_response(rejection);
        response.extensions_mut().insert(rejection.kind());
        response
    }

    pub(crate) fn check(&self, parts: &mut Parts) -> Result<PendingUpgrade, UpgradeRejection> {
        let options = &self.options;
        if parts.method != Method::GET {
            return Err(UpgradeRejection::new(
                RejectionKind::MethodNotGet,
                format!("WebSocket upgrades use GET, not {}", parts.method),
            ));
        }
        let headers = &parts.headers;
        if !header_has_token(headers, header::UPGRADE, "websocket")
            || !header_has_token(headers, header::CONNECTION, "upgrade")
        {
            return Err(UpgradeRejection::new(
                RejectionKind::NotUpgrade,
                "this route serves WebSocket connections only: send `Connection: Upgrade` and \
                 `Upgrade: websocket` (RFC 6455 §4.1)",
            ));
        }
        if headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes() != b"13")
        {
            return Err(UpgradeRejection::new(
                RejectionKind::UnsupportedVersion,
                "Sec-WebSocket-Version must be 13",
            ));
        }
        let key = headers
            .get(header::SEC_WEBSOCKET_KEY)
            .filter(|key| is_valid_key(key.as_bytes()))
            .ok_or_else(|| {
                UpgradeRejection::new(
                    RejectionKind::BadKey,
                    "Sec-WebSocket-Key must be 16 random bytes in base64",
                )
            })?;
        let origin_ok = match &options.check_origin {
            Some(check) => check(parts),
            None => same_origin(headers),
        };
        if !origin_ok {
            let origin = headers
                .get(header::ORIGIN)
                .and_then(|o| o.to_str().ok())
                .unwrap_or("");
            return Err(UpgradeRejection::new(
                RejectionKind::OriginRefused,
                format!("origin {origin:?} is not allowed"),
            ));
        }
        let accept = accept_key(key.as_bytes());
        let protocol = select_protocol(headers, &options.subprotocols);
        let deflate = negotiate_deflate(headers, options);
        let on_upgrade = parts.extensions.remove::<OnUpgrade>().ok_or_else(|| {
            UpgradeRejection::new(
                RejectionKind::NotUpgradable,
                "this connection cannot be upgraded (the server was started without upgrade support)",
            )
        })?;
        Ok(PendingUpgrade {
            on_upgrade,
            accept,
            protocol,
            deflate,
            upgrader: self.clone(),
        })
    }
}

/// Whether a comma-separated header contains `token`, ignoring ASCII case.
fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

fn is_valid_key(key: &[u8]) -> bool {
    key.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode(key)
            .is_ok_and(|raw| raw.len() == 16)
}

/// `Sec-WebSocket-Accept` for a client key (RFC 6455 §4.2.2).
fn accept_key(key: &[u8]) -> HeaderValue {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(WS_GUID.as_bytes());
    let encoded = base64::engine::general_purpose::STANDARD.encode(sha1.finalize());
    // Base64 is always a valid header value.
    HeaderValue::from_str(&encoded).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// gorilla's default: allow a missing `Origin`, else its host must equal `Host`.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let (Ok(origin), Some(Ok(host))) = (
        origin.to_str(),
        headers.get(header::HOST).map(|h| h.to_str()),
    ) else {
        return false;
    };
    let origin_host = origin
        .split_once("://")
        .map_or(origin, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or("");
    origin_host.eq_ignore_ascii_case(host)
}

/// The server's first preference that the client also offered.
fn select_protocol(headers: &HeaderMap, ours: &[String]) -> Option<HeaderValue> {
    if ours.is_empty() {
        return None;
    }
    let offered: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    ours.iter()
        .find(|p| offered.contains(&p.as_str()))
        .and_then(|p| HeaderValue::from_str(p).ok())
}

fn negotiate_deflate(headers: &HeaderMap, options: &Options) -> Option<(String, DeflateParams)> {
    let compression = options.compression?;
    let policy = DeflatePolicy {
        level: compression.level,
        threshold: compression.threshold,
        context_takeover: compression.context_takeover,
        max_window_bits: compression.max_window_bits,
    };
    let offers = headers
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| v.to_str().ok());
    ws_protocol::deflate::negotiate(offers, &policy).map(|(params, answer)| (answer, params))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn same_origin_rules() {
        let mut h = HeaderMap::new();
        assert!(same_origin(&h), "no Origin is allowed");
        h.insert(header::HOST, HeaderValue::from_static("Example.com:8000"));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://example.COM:8000"),
        );
        assert!(same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("http://evil.test"));
        assert!(!same_origin(&h));
    }
}
