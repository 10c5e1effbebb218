//! The client's opening handshake, written here rather than left to tokio-tungstenite so
//! that the client can offer permessage-deflate (which tungstenite does not know) and read
//! every header of the answer, refused or not.

use std::fmt;

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite::handshake::{client::generate_key, derive_accept_key};

/// The answer head is at most this long; more is not an HTTP answer a test expects.
const MAX_HEAD: usize = 64 * 1024;

/// Why a client could not connect. [`kind`](ConnectError::kind) says which step failed;
/// a refusal keeps the server's status and body.
#[derive(Debug, Clone)]
pub struct ConnectError {
    url: String,
    kind: ConnectErrorKind,
}

/// What went wrong while connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectErrorKind {
    /// The URL is not `ws://host:port/path` (`wss://` is not supported by the kit).
    BadUrl(String),
    /// No TCP connection: nothing listens there, or the connection failed.
    Io(String),
    /// The server answered the upgrade with another status than 101 (401 from an
    /// authentication layer, 403 from the origin check, 503 over a limit, ...).
    Refused {
        /// The HTTP status.
        status: u16,
        /// The answer's headers, names in lower case.
        headers: Vec<(String, String)>,
        /// The answer's body, as text.
        body: String,
    },
    /// The server answered 101 but broke the handshake's rules (wrong accept key, an
    /// extension or subprotocol that was not offered, ...).
    Protocol(String),
    /// The handshake did not complete within the client's timeout.
    Timeout,
}

impl ConnectError {
    pub(crate) fn new(url: &str, kind: ConnectErrorKind) -> Self {
        ConnectError {
            url: url.to_owned(),
            kind,
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> &ConnectErrorKind {
        &self.kind
    }

    /// The HTTP status when the server refused the upgrade.
    pub fn status(&self) -> Option<u16> {
        match &self.kind {
            ConnectErrorKind::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = &self.url;
        match &self.kind {
            ConnectErrorKind::BadUrl(why) => write!(f, "{url}: bad URL: {why}"),
            ConnectErrorKind::Io(why) => write!(f, "{url}: cannot connect: {why}"),
            ConnectErrorKind::Refused { status, body, .. } => {
                write!(f, "{url}: upgrade refused with {status}: {body:?}")
            }
            ConnectErrorKind::Protocol(why) => write!(f, "{url}: bad handshake: {why}"),
            ConnectErrorKind::Timeout => write!(f, "{url}: no handshake answer in time"),
        }
    }
}

impl std::error::Error for ConnectError {}

/// What the client asks for.
pub(crate) struct Offer<'a> {
    pub(crate) url: &'a str,
    pub(crate) headers: &'a [(String, String)],
    pub(crate) subprotocols: &'a [String],
    pub(crate) deflate: bool,
}

/// A completed handshake: the socket, what the server read ahead of the head, and what
/// was agreed.
pub(crate) struct Opened {
    pub(crate) stream: TcpStream,
    pub(crate) leftover: Vec<u8>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) protocol: Option<String>,
    pub(crate) extensions: Option<String>,
}

impl Opened {
    /// Whether permessage-deflate was agreed.
    pub(crate) fn deflate(&self) -> bool {
        self.extensions
            .as_deref()
            .is_some_and(|e| e.trim_start().starts_with("permessage-deflate"))
    }
}

pub(crate) async fn open(offer: &Offer<'_>) -> Result<Opened, ConnectErrorKind> {
    let uri: http::Uri = offer
        .url
        .parse()
        .map_err(|e: http::uri::InvalidUri| ConnectErrorKind::BadUrl(e.to_string()))?;
    if uri.scheme_str() != Some("ws") {
        return Err(ConnectErrorKind::BadUrl(
            "only ws:// URLs are supported".to_owned(),
        ));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| ConnectErrorKind::BadUrl("no host".to_owned()))?
        .as_str();
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut stream = TcpStream::connect(authority)
        .await
        .map_err(|e| ConnectErrorKind::Io(e.to_string()))?;

    let key = generate_key();
    let mut head = format!(
        "GET {target} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    if !offer.subprotocols.is_empty() {
        head.push_str(&format!(
            "Sec-WebSocket-Protocol: {}\r\n",
            offer.subprotocols.join(", ")
        ));
    }
    if offer.deflate {
        // No window-bits parameters: the server may then not limit ours, and we compress
        // each message on its own (allowed without asking).
        head.push_str("Sec-WebSocket-Extensions: permessage-deflate\r\n");
    }
    for (name, value) in offer.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|e| ConnectErrorKind::Io(e.to_string()))?;

    let (status, headers, mut rest) = read_head(&mut stream).await?;
    if status != 101 {
        let length = header(&headers, "content-length").and_then(|l| l.parse().ok());
        read_body(&mut stream, &mut rest, length).await;
        return Err(ConnectErrorKind::Refused {
            status,
            headers,
            body: String::from_utf8_lossy(&rest).into_owned(),
        });
    }
    check_answer(offer, &key, &headers)?;
    Ok(Opened {
        stream,
        leftover: rest,
        protocol: header(&headers, "sec-websocket-protocol").map(str::to_owned),
        extensions: header(&headers, "sec-websocket-extensions").map(str::to_owned),
        headers,
    })
}

fn check_answer(
    offer: &Offer<'_>,
    key: &str,
    headers: &[(String, String)],
) -> Result<(), ConnectErrorKind> {
    let protocol_error = |why: String| Err(ConnectErrorKind::Protocol(why));
    let accept = derive_accept_key(key.as_bytes());
    if header(headers, "sec-websocket-accept") != Some(accept.as_str()) {
        return protocol_error("missing or wrong Sec-WebSocket-Accept".to_owned());
    }
    if !header(headers, "upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
        return protocol_error("no `Upgrade: websocket`".to_owned());
    }
    if let Some(chosen) = header(headers, "sec-websocket-protocol")
        && !offer.subprotocols.iter().any(|p| p == chosen)
    {
        return protocol_error(format!("subprotocol {chosen:?} was not offered"));
    }
    if let Some(extensions) = header(headers, "sec-websocket-extensions") {
        let mut params = extensions.split(';').map(str::trim);
        if !offer.deflate || params.next() != Some("permessage-deflate") || extensions.contains(',')
        {
            return protocol_error(format!("extensions {extensions:?} were not offered"));
        }
        // Only what applies to the server's side may come back unasked.
        if let Some(other) = params.find(|p| {
            !(p.is_empty()
                || *p == "server_no_context_takeover"
                || *p == "client_no_context_takeover"
                || p.starts_with("server_max_window_bits"))
        }) {
            return protocol_error(format!(
                "permessage-deflate parameter {other:?} not offered"
            ));
        }
    }
    Ok(())
}

/// Reads the answer's head; returns status, headers and the bytes read after it.
async fn read_head(
    stream: &mut TcpStream,
) -> Result<(u16, Vec<(String, String)>, Vec<u8>), ConnectErrorKind> {
    let mut buf = Vec::with_capacity(1024);
    let end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        if buf.len() > MAX_HEAD {
            return Err(ConnectErrorKind::Protocol(
                "answer head too long".to_owned(),
            ));
        }
        let read = stream
            .read_buf(&mut buf)
            .await
            .map_err(|e| ConnectErrorKind::Io(e.to_string()))?;
        if read == 0 {
            return Err(ConnectErrorKind::Io(
                "the server closed the connection before answering".to_owned(),
            ));
        }
    };
    let rest = buf.split_off(end + 4);
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ConnectErrorKind::Protocol(format!("bad status line {status_line:?}")))?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok((status, headers, rest))
}

/// Reads a refusal's body: `length` bytes, or to the end of the connection.
async fn read_body(stream: &mut TcpStream, body: &mut Vec<u8>, length: Option<usize>) {
    while length.is_none_or(|l| body.len() < l) {
        match stream.read_buf(body).await {
            Ok(1..) => {}
            _ => break,
        }
    }
}

pub(crate) fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}
