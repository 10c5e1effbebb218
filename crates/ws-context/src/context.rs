//! What a handler sees: [`Context`] (the message, `bind`, the socket writer, the upgrade
//! request) and [`Connection`], the shared handle of one connection (`ConnShared`: id, route,
//! request, writer, hub, span), also given to the lifecycle hooks.

use std::{
    fmt,
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::SystemTime,
};

use axum::extract::{OriginalUri, Query, rejection::QueryRejection};
use http::{Extensions, HeaderMap, HeaderName, HeaderValue, Uri};
use serde::de::DeserializeOwned;
use ws_message::{DecodeError, Encode, Message, decode};

use crate::{ConnectionHub, ConnectionId, SocketWriter, WriteError};

/// What a connection keeps of its upgrade request, shared by every message's [`Context`].
pub(crate) struct ConnShared {
    pub(crate) id: ConnectionId,
    pub(crate) route: Arc<str>,
    pub(crate) uri: RequestUri,
    pub(crate) headers: RequestHeaders,
    pub(crate) extensions: Extensions,
    pub(crate) path_params: Box<[(Arc<str>, String)]>,
    pub(crate) remote_addr: Option<SocketAddr>,
    pub(crate) protocol: Option<Box<str>>,
    /// When the connection was registered with the hub.
    pub(crate) connected_at: SystemTime,
    pub(crate) writer: SocketWriter,
    pub(crate) hub: ConnectionHub,
    pub(crate) span: tracing::Span,
}

/// The upgrade request's URI, kept as its text and parsed the first time it is asked for: a
/// `Uri` is 88 bytes, in every connection's shared state whether or not anything reads it
/// ([S5](bench/README.md#scenarios)). The text is the `Uri`'s own rendering, which parses back
/// to it.
pub(crate) struct RequestUri {
    text: Box<str>,
    parsed: OnceLock<Box<Uri>>,
}

impl RequestUri {
    /// An owned copy: never slices of hyper's read buffer, which would keep it allocated.
    pub(crate) fn new(uri: &Uri) -> Self {
        RequestUri {
            text: uri.to_string().into_boxed_str(),
            parsed: OnceLock::new(),
        }
    }

    pub(crate) fn get(&self) -> &Uri {
        self.parsed
            .get_or_init(|| Box::new(self.text.parse().unwrap_or_default()))
    }
}

/// The upgrade request's headers, kept as one buffer and made into a [`HeaderMap`] the first
/// time they are asked for. A `HeaderMap` costs about 100 bytes per header plus an allocation
/// per value, held for the connection's whole life whether or not anything reads it (with a
/// browser's dozen headers, more than a kilobyte per idle connection).
pub(crate) struct RequestHeaders {
    /// Each header as its sensitivity (`1` or `0`), then its name and its value, each after
    /// its length as a little-endian `u32`. Owned bytes, never slices of hyper's read buffer,
    /// which would keep that buffer allocated.
    packed: Box<[u8]>,
    /// Boxed: a `HeaderMap` is 96 bytes, in every connection's shared state whether or not
    /// anything asks for it.
    map: OnceLock<Box<HeaderMap>>,
}

impl RequestHeaders {
    pub(crate) fn new(headers: &HeaderMap) -> Self {
        let mut packed = Vec::new();
        for (name, value) in headers {
            let (Ok(name_len), Ok(value_len)) = (
                u32::try_from(name.as_str().len()),
                u32::try_from(value.as_bytes().len()),
            ) else {
                continue;
            };
            packed.push(u8::from(value.is_sensitive()));
            packed.extend_from_slice(&name_len.to_le_bytes());
            packed.extend_from_slice(name.as_str().as_bytes());
            packed.extend_from_slice(&value_len.to_le_bytes());
            packed.extend_from_slice(value.as_bytes());
        }
        RequestHeaders {
            packed: packed.into_boxed_slice(),
            map: OnceLock::new(),
        }
    }

    pub(crate) fn get(&self) -> &HeaderMap {
        self.map.get_or_init(|| Box::new(self.unpack()))
    }

    fn unpack(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        let mut rest = &self.packed[..];
        while let Some((&sensitive, after)) = rest.split_first() {
            let Some((name, after)) = take_field(after) else {
                break;
            };
            let Some((value, after)) = take_field(after) else {
                break;
            };
            rest = after;
            // Both were a valid name and value when packed.
            if let (Ok(name), Ok(mut value)) =
                (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
            {
                value.set_sensitive(sensitive == 1);
                map.append(name, value);
            }
        }
        map
    }
}

/// A length-prefixed field of [`RequestHeaders::packed`] and what follows it.
fn take_field(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = bytes.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// One open connection as lifecycle hooks see it: its id, the upgrade request that opened
/// it, its writer and the hub. A [`Context`] is this plus the message being handled.
///
/// ```no_run
/// use ws_context::{CloseFrame, Connection, Endpoint};
///
/// async fn join_room(conn: Connection) -> Result<(), CloseFrame> {
///     let Some(room) = conn.path_param("room") else {
///         return Err(CloseFrame::new(4000, "no room")?);
///     };
///     conn.hub().join(conn.id(), room).await;
///     Ok(())
/// }
/// # async fn chat(ctx: ws_context::Context) -> Result<(), ws_context::BindError> { Ok(()) }
/// let endpoint = Endpoint::new(chat).on_connect(join_room);
/// ```
#[derive(Clone)]
pub struct Connection(pub(crate) Arc<ConnShared>);

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.0.id)
            .field("route", &self.0.route)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// This connection's server-generated id.
    pub fn id(&self) -> &ConnectionId {
        &self.0.id
    }

    /// The route pattern the connection matched, such as `/ws/{room}`; the request's path when
    /// it matched none (an endpoint served as a fallback).
    pub fn route(&self) -> &str {
        &self.0.route
    }

    /// A path parameter of the upgrade request, by name.
    pub fn path_param(&self, name: &str) -> Option<&str> {
        self.0
            .path_params
            .iter()
            .find(|(key, _)| &**key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The upgrade request's URI. Under a router nested in another (axum's `nest`), without
    /// the prefix the outer router matched: [`original_uri`](Connection::original_uri) has it.
    pub fn uri(&self) -> &Uri {
        self.0.uri.get()
    }

    /// The upgrade request's URI as the client sent it, prefixes of nested routers included
    /// (axum's `OriginalUri`): the same as [`uri`](Connection::uri) unless the route is nested.
    pub fn original_uri(&self) -> &Uri {
        self.0
            .extensions
            .get::<OriginalUri>()
            .map_or_else(|| self.uri(), |OriginalUri(uri)| uri)
    }

    /// The value of a query parameter of the upgrade request (percent-decoded), by name.
    pub fn query_param(&self, name: &str) -> Option<String> {
        let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(self.uri()).ok()?;
        pairs
            .into_iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
    }

    /// The query string of the upgrade request decoded into `T`.
    pub fn query<T: DeserializeOwned>(&self) -> Result<T, QueryRejection> {
        Query::<T>::try_from_uri(self.uri()).map(|Query(query)| query)
    }

    /// The upgrade request's headers.
    pub fn headers(&self) -> &HeaderMap {
        self.0.headers.get()
    }

    /// The upgrade request's extensions: whatever middleware (authentication, for example)
    /// put there before the upgrade. axum's routing entries are not kept (`MatchedPath`, the
    /// path parameters, `ConnectInfo`, and `OriginalUri` unless the route is nested):
    /// [`route`](Connection::route), [`path_param`](Connection::path_param),
    /// [`remote_addr`](Connection::remote_addr) and
    /// [`original_uri`](Connection::original_uri) give them.
    pub fn extensions(&self) -> &Extensions {
        &self.0.extensions
    }

    /// The peer's address, when the server was started with connect info.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.0.remote_addr
    }

    /// The subprotocol selected during the handshake.
    pub fn protocol(&self) -> Option<&str> {
        self.0.protocol.as_deref()
    }

    /// A writer handle for this connection, to move into spawned tasks.
    pub fn socket(&self) -> SocketWriter {
        self.0.writer.clone()
    }

    /// Every connection of the app: to write to others, broadcast, join rooms or close.
    pub fn hub(&self) -> &ConnectionHub {
        &self.0.hub
    }

    /// The connection's span (fields `conn_id`, `route`, `peer`).
    pub fn span(&self) -> &tracing::Span {
        &self.0.span
    }
}

/// The context of one WebSocket message: the message, the connection it came on, and the
/// upgrade request that opened it.
///
/// A handler gets a `Context` for every message and is called once per message. Cloning is
/// cheap. The handler's `tracing` events carry the connection's span (id, route, peer), so
/// `tracing::info!` inside a handler is the connection's logger.
///
/// ```no_run
/// use ws_context::Context;
///
/// async fn greet(ctx: Context) -> Result<String, ws_context::BindError> {
///     let name: String = ctx.bind()?;
///     let room = ctx.path_param("room").unwrap_or("lobby");
///     tracing::info!(%name, room, "greeting");
///     Ok(format!("hello {name}, welcome to {room}"))
/// }
/// ```
#[derive(Clone)]
pub struct Context {
    conn: Connection,
    message: Message,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("id", self.conn.id())
            .field("route", &self.conn.route())
            .field("message", &self.message)
            .finish_non_exhaustive()
    }
}

/// Why [`Context::bind`] failed: the same type as [`ws_message::decode`]'s error.
pub type BindError = DecodeError;

impl Context {
    pub(crate) fn new(conn: Connection, message: Message) -> Self {
        Context { conn, message }
    }

    /// Decodes this message into `T` (GoFr's `ctx.Bind`): `String` gets the raw text,
    /// `Bytes`/`Vec<u8>` the raw payload of a text or binary frame, any other
    /// `DeserializeOwned` type is read from JSON. Calling it twice gives the same value.
    pub fn bind<T: DeserializeOwned + 'static>(&self) -> Result<T, BindError> {
        decode(&self.message)
    }

    /// The message this handler call is for.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// Writes a value to this connection (GoFr's `ctx.WriteMessageToSocket`) by
    /// [`encode`](ws_message::encode)'s rules: strings as text, bytes as binary, other
    /// `Serialize` values as JSON text, `()`/`None` as nothing. The value is borrowed and
    /// encoded at the call, so the future does not hold it. Safe from any task at the same
    /// time; it goes out before the handler's own return value.
    ///
    /// ```no_run
    /// use ws_context::{Context, WriteError};
    ///
    /// #[derive(serde::Serialize)]
    /// struct Ack { id: u64 }
    ///
    /// async fn ack(ctx: Context) -> Result<Ack, WriteError> {
    ///     let value = Ack { id: 7 };
    ///     ctx.write_message_to_socket(&value).await?; // `{"id":7}` now...
    ///     Ok(value) // ...and again as the reply
    /// }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// As [`SocketWriter::write`].
    pub fn write_message_to_socket<T: Encode + ?Sized>(
        &self,
        data: &T,
    ) -> impl Future<Output = Result<(), WriteError>> + Send + '_ {
        self.conn.0.writer.write(data)
    }

    /// The connection this message came on, as lifecycle hooks see it.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// A writer handle for this connection, to move into spawned tasks.
    pub fn socket(&self) -> SocketWriter {
        self.conn.socket()
    }

    /// This connection's server-generated id.
    pub fn id(&self) -> &ConnectionId {
        self.conn.id()
    }

    /// The route pattern the connection matched, such as `/ws/{room}`.
    pub fn route(&self) -> &str {
        self.conn.route()
    }

    /// A path parameter of the upgrade request, by name.
    pub fn path_param(&self, name: &str) -> Option<&str> {
        self.conn.path_param(name)
    }

    /// The upgrade request's URI (see [`Connection::uri`]).
    pub fn uri(&self) -> &Uri {
        self.conn.uri()
    }

    /// The upgrade request's URI as the client sent it (see [`Connection::original_uri`]).
    pub fn original_uri(&self) -> &Uri {
        self.conn.original_uri()
    }

    /// The value of a query parameter of the upgrade request (percent-decoded), by name.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.conn.query_param(name)
    }

    /// The query string of the upgrade request decoded into `T`.
    pub fn query<T: DeserializeOwned>(&self) -> Result<T, QueryRejection> {
        self.conn.query()
    }

    /// The upgrade request's headers.
    pub fn headers(&self) -> &HeaderMap {
        self.conn.headers()
    }

    /// The upgrade request's extensions: whatever middleware (authentication, for example)
    /// put there before the upgrade (see [`Connection::extensions`]).
    pub fn extensions(&self) -> &Extensions {
        self.conn.extensions()
    }

    /// The peer's address, when the server was started with connect info.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.conn.remote_addr()
    }

    /// The subprotocol selected during the handshake.
    pub fn protocol(&self) -> Option<&str> {
        self.conn.protocol()
    }

    /// Every connection of the app: to write to others, broadcast, join rooms or close.
    pub fn hub(&self) -> &ConnectionHub {
        self.conn.hub()
    }

    /// The connection's span (fields `conn_id`, `route`, `peer`).
    pub fn span(&self) -> &tracing::Span {
        self.conn.span()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_come_back_as_they_were() {
        for text in [
            "/ws",
            "/ws/room%201?name=a%20b&x=1",
            "http://example.com:8080/a?b=c",
            "ws://[::1]:9000/ws?token=x",
            "https://user@example.com/",
        ] {
            let uri: Uri = text.parse().unwrap();
            assert_eq!(RequestUri::new(&uri).get(), &uri, "{text}");
        }
    }

    #[test]
    fn headers_come_back_as_they_were_packed() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("127.0.0.1:8000"));
        headers.append("x-tag", HeaderValue::from_static("a"));
        headers.append("x-tag", HeaderValue::from_static("b: c"));
        let mut token = HeaderValue::from_static("Bearer secret");
        token.set_sensitive(true);
        headers.insert("authorization", token);
        headers.insert("x-empty", HeaderValue::from_static(""));

        let packed = RequestHeaders::new(&headers);
        let unpacked = packed.get();
        assert_eq!(unpacked, &headers);
        assert!(unpacked["authorization"].is_sensitive());
        assert!(!unpacked["host"].is_sensitive());
        let tags: Vec<_> = unpacked.get_all("x-tag").iter().collect();
        assert_eq!(tags, ["a", "b: c"]);
        assert!(RequestHeaders::new(&HeaderMap::new()).get().is_empty());
    }
}
