//! The test client: [`WsClient`] and its [`ClientBuilder`].

use std::{fmt, future::Future, net::SocketAddr, panic::Location, time::Duration};

use bytes::Bytes;
use serde::{Serialize, de::DeserializeOwned};
use tokio::time::Instant;
use ws_message::{CloseFrame, Message};

use crate::{
    handshake::{self, ConnectError, ConnectErrorKind, Offer},
    socket::Socket,
    wait::{DEFAULT_TIMEOUT, fail},
};

/// Connects a [`WsClient`]: handshake headers (authentication), subprotocols, compression
/// and the client's wait bound.
///
/// Defaults: no extra header, no subprotocol, no compression, waits of
/// [`DEFAULT_TIMEOUT`](crate::DEFAULT_TIMEOUT).
///
/// ```
/// # async fn run(server: ws_test::TestServer) {
/// let client = server
///     .client("/ws")
///     .bearer("secret-token")
///     .subprotocol("chat")
///     .deflate(true)
///     .connect()
///     .await;
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `connect`"]
pub struct ClientBuilder {
    url: String,
    headers: Vec<(String, String)>,
    subprotocols: Vec<String>,
    deflate: bool,
    timeout: Duration,
}

impl ClientBuilder {
    /// A builder for `url` (`ws://host:port/path?query`; `wss://` is not supported).
    pub fn new(url: impl Into<String>) -> Self {
        ClientBuilder {
            url: url.into(),
            headers: Vec::new(),
            subprotocols: Vec::new(),
            deflate: false,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Adds a header to the upgrade request (repeat for more).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Adds `Authorization: Bearer <token>`.
    pub fn bearer(self, token: &str) -> Self {
        self.header("Authorization", format!("Bearer {token}"))
    }

    /// Offers a subprotocol (repeat for more, in the client's order of preference).
    pub fn subprotocol(mut self, protocol: impl Into<String>) -> Self {
        self.subprotocols.push(protocol.into());
        self
    }

    /// Offers subprotocols, in the client's order of preference (as
    /// [`subprotocol`](ClientBuilder::subprotocol) for each).
    pub fn subprotocols<I>(self, protocols: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        protocols.into_iter().fold(self, Self::subprotocol)
    }

    /// Offers permessage-deflate (RFC 7692) when `true`; off by default. When the server
    /// accepts, every text and binary message the client sends is compressed (each on its
    /// own, the client's window 15 bits) and compressed messages from the server are
    /// inflated, whether the server keeps its context between messages or not.
    pub fn deflate(mut self, on: bool) -> Self {
        self.deflate = on;
        self
    }

    /// The bound of every wait of this client: the handshake, `recv`, `expect_close`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Connects, or says why not: a refusal keeps the server's status, headers and body,
    /// which is how a test checks that authentication rejects before the upgrade.
    pub async fn try_connect(self) -> Result<WsClient, ConnectError> {
        let offer = Offer {
            url: &self.url,
            headers: &self.headers,
            subprotocols: &self.subprotocols,
            deflate: self.deflate,
        };
        let opened = match tokio::time::timeout(self.timeout, handshake::open(&offer)).await {
            Ok(Ok(opened)) => opened,
            Ok(Err(kind)) => return Err(ConnectError::new(&self.url, kind)),
            Err(_) => return Err(ConnectError::new(&self.url, ConnectErrorKind::Timeout)),
        };
        let local_addr = opened
            .stream
            .local_addr()
            .map_err(|e| ConnectError::new(&self.url, ConnectErrorKind::Io(e.to_string())))?;
        let (protocol, extensions, headers) = (
            opened.protocol.clone(),
            opened.extensions.clone(),
            opened.headers.clone(),
        );
        Ok(WsClient {
            url: self.url,
            socket: Socket::new(opened).await,
            local_addr,
            protocol,
            extensions,
            headers,
            timeout: self.timeout,
            ended: None,
        })
    }

    /// Expects the upgrade to be refused with `status` (401 from an authentication layer, 403
    /// from the origin check, 503 over a limit) and returns the refusal, whose
    /// [`kind`](ConnectError::kind) holds the answer's headers and body.
    ///
    /// # Panics
    ///
    /// When the upgrade succeeds, or fails otherwise (another status, no connection, a
    /// timeout); the message says what came.
    #[track_caller]
    pub fn expect_refused(self, status: u16) -> impl Future<Output = ConnectError> {
        let caller = Location::caller();
        async move {
            let url = self.url.clone();
            match self.try_connect().await {
                Err(error) if error.status() == Some(status) => error,
                Err(error) => fail(
                    caller,
                    &format!("awaited a refusal with {status}, got: {error}"),
                ),
                Ok(_) => fail(
                    caller,
                    &format!("awaited a refusal with {status} from {url}, but it upgraded"),
                ),
            }
        }
    }

    /// Connects.
    ///
    /// # Panics
    ///
    /// When the connection or the handshake fails, with the reason (for a refusal, the
    /// status and body). Use [`try_connect`](ClientBuilder::try_connect) to test refusals.
    #[track_caller]
    pub fn connect(self) -> impl Future<Output = WsClient> {
        let caller = Location::caller();
        async move {
            match self.try_connect().await {
                Ok(client) => client,
                Err(error) => fail(caller, &format!("cannot connect: {error}")),
            }
        }
    }
}

/// Why a wait failed when the connection ended without a close frame.
const NO_CLOSE_FRAME: &str = "the connection ended without a close frame";

/// How a connection ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ended {
    /// A close frame came (its code, or 1005 for none).
    Closed(u16),
    /// The connection ended without one, or failed.
    Lost(String),
}

/// A WebSocket client for tests: each method waits at most the client's timeout and fails
/// the test with a message naming what it awaited and what came instead.
///
/// Pings from the server are answered and, like pongs, never returned by the `recv` methods.
/// Methods that fail the test do so by panicking; the message starts with the test's line.
pub struct WsClient {
    url: String,
    socket: Socket,
    local_addr: SocketAddr,
    protocol: Option<String>,
    extensions: Option<String>,
    headers: Vec<(String, String)>,
    timeout: Duration,
    ended: Option<Ended>,
}

impl fmt::Debug for WsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsClient")
            .field("url", &self.url)
            .field("local_addr", &self.local_addr)
            .field("protocol", &self.protocol)
            .field("extensions", &self.extensions)
            .finish_non_exhaustive()
    }
}

impl WsClient {
    /// Connects to `url` with the defaults of [`ClientBuilder`].
    ///
    /// # Panics
    ///
    /// As [`ClientBuilder::connect`].
    #[track_caller]
    pub fn connect(url: impl Into<String>) -> impl Future<Output = WsClient> {
        ClientBuilder::new(url).connect()
    }

    /// A builder for `url`.
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(url)
    }

    /// The URL it connected to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The client's own address: the peer address the server sees (and the hub lists).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The subprotocol the server chose, if any.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// The server's `Sec-WebSocket-Extensions` answer, if any.
    pub fn extensions(&self) -> Option<&str> {
        self.extensions.as_deref()
    }

    /// Whether permessage-deflate was agreed.
    pub fn deflate(&self) -> bool {
        self.extensions
            .as_deref()
            .is_some_and(|e| e.starts_with("permessage-deflate"))
    }

    /// A header of the server's 101 answer, by lower-case name.
    pub fn response_header(&self, name: &str) -> Option<&str> {
        handshake::header(&self.headers, &name.to_ascii_lowercase())
    }

    /// Sends a text message.
    ///
    /// # Panics
    ///
    /// When the connection has ended or the write fails.
    #[track_caller]
    pub fn send_text(&mut self, text: impl Into<String>) -> impl Future<Output = ()> + '_ {
        self.send_at(Location::caller(), Message::text(text.into()))
    }

    /// Sends `value` as a JSON text message.
    ///
    /// # Panics
    ///
    /// When `value` does not serialize, the connection has ended or the write fails.
    #[track_caller]
    pub fn send_json<T: Serialize + ?Sized>(&mut self, value: &T) -> impl Future<Output = ()> + '_ {
        let caller = Location::caller();
        let json = serde_json::to_string(value)
            .unwrap_or_else(|e| fail(caller, &format!("send_json: cannot serialize: {e}")));
        self.send_at(caller, Message::text(json))
    }

    /// Sends a binary message.
    ///
    /// # Panics
    ///
    /// When the connection has ended or the write fails.
    #[track_caller]
    pub fn send_binary(&mut self, data: impl Into<Bytes>) -> impl Future<Output = ()> + '_ {
        self.send_at(Location::caller(), Message::binary(data.into()))
    }

    /// Sends any message: a ping, or a close frame without waiting for the answer (see
    /// [`close`](WsClient::close) for the whole handshake).
    ///
    /// # Panics
    ///
    /// When the connection has ended or the write fails.
    #[track_caller]
    pub fn send(&mut self, message: Message) -> impl Future<Output = ()> + '_ {
        self.send_at(Location::caller(), message)
    }

    async fn send_at(&mut self, caller: &'static Location<'static>, message: Message) {
        if let Some(ended) = &self.ended {
            fail(
                caller,
                &format!("cannot send on {}: {}", self.url, describe_end(ended)),
            );
        }
        let kind = kind_of(&message);
        if let Err(error) = self.socket.send(message).await {
            fail(
                caller,
                &format!("cannot send {kind} on {}: {error}", self.url),
            );
        }
    }

    /// The next text, binary or close message, waiting at most the client's timeout.
    ///
    /// # Panics
    ///
    /// When nothing comes in time, or the connection ends without a close frame or breaks
    /// the protocol; the message says so.
    #[track_caller]
    pub fn recv(&mut self) -> impl Future<Output = Message> + '_ {
        let caller = Location::caller();
        async move { self.recv_what(caller, "a message").await }
    }

    /// The next message, which must be text.
    ///
    /// # Panics
    ///
    /// As [`recv`](WsClient::recv), and when another kind of message comes (shown).
    #[track_caller]
    pub fn recv_text(&mut self) -> impl Future<Output = String> + '_ {
        let caller = Location::caller();
        async move {
            match self.recv_what(caller, "a text message").await {
                Message::Text(text) => text.as_str().to_owned(),
                other => fail(
                    caller,
                    &format!(
                        "awaited a text message on {}, got {}",
                        self.url,
                        show(&other)
                    ),
                ),
            }
        }
    }

    /// The next message, which must be binary.
    ///
    /// # Panics
    ///
    /// As [`recv`](WsClient::recv), and when another kind of message comes (shown).
    #[track_caller]
    pub fn recv_binary(&mut self) -> impl Future<Output = Bytes> + '_ {
        let caller = Location::caller();
        async move {
            match self.recv_what(caller, "a binary message").await {
                Message::Binary(data) => data,
                other => fail(
                    caller,
                    &format!(
                        "awaited a binary message on {}, got {}",
                        self.url,
                        show(&other)
                    ),
                ),
            }
        }
    }

    /// The next message, a text message decoded from JSON as `T` (use
    /// `serde_json::Value` to look at any JSON).
    ///
    /// # Panics
    ///
    /// As [`recv_text`](WsClient::recv_text), and when the text is not JSON of that type
    /// (the text and the decode error are shown).
    #[track_caller]
    pub fn recv_json<T: DeserializeOwned>(&mut self) -> impl Future<Output = T> + '_ {
        let caller = Location::caller();
        async move {
            let what = format!("a JSON {}", std::any::type_name::<T>());
            match self.recv_what(caller, &what).await {
                Message::Text(text) => {
                    serde_json::from_str(text.as_str()).unwrap_or_else(|error| {
                        fail(
                            caller,
                            &format!("awaited {what} on {}, got {text:?}: {error}", self.url),
                        )
                    })
                }
                other => fail(
                    caller,
                    &format!("awaited {what} on {}, got {}", self.url, show(&other)),
                ),
            }
        }
    }

    /// Waits for a close frame with `code` and returns its reason; the client answers it,
    /// completing the closing handshake.
    ///
    /// # Panics
    ///
    /// When a data message comes first, the code differs, or nothing comes in time.
    #[track_caller]
    pub fn expect_close(&mut self, code: u16) -> impl Future<Output = String> + '_ {
        let caller = Location::caller();
        async move {
            let what = format!("a close frame with code {code}");
            match self.recv_what(caller, &what).await {
                Message::Close(Some(frame)) if frame.code() == code => frame.reason().to_owned(),
                other => fail(
                    caller,
                    &format!("awaited {what} on {}, got {}", self.url, show(&other)),
                ),
            }
        }
    }

    /// Reads and drops messages until a close frame, which it returns (`None` inside for a
    /// close without a code); the client answers it. For a server that closes after data
    /// that may or may not reach the client first (a slow reader's queue, a kicked member).
    ///
    /// # Panics
    ///
    /// When no close frame comes within the client's timeout, counted from the call, or the
    /// connection ends without one.
    #[track_caller]
    pub fn recv_until_close(&mut self) -> impl Future<Output = Option<CloseFrame>> + '_ {
        let caller = Location::caller();
        async move {
            let what = "a close frame";
            let deadline = Instant::now() + self.timeout;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.next_within(caller, left, what).await {
                    Some(Message::Close(frame)) => return frame,
                    Some(_) => {}
                    None => fail(
                        caller,
                        &format!(
                            "awaited {what} on {} for {:?}: none came",
                            self.url, self.timeout
                        ),
                    ),
                }
            }
        }
    }

    /// Waits `duration` and fails if a text, binary or close message comes meanwhile (pings
    /// are answered). Use it to check that something did *not* reach this client, after
    /// a message that did reach another one.
    ///
    /// # Panics
    ///
    /// When a message comes within `duration`, or the connection ends without a close frame.
    #[track_caller]
    pub fn expect_nothing_for(&mut self, duration: Duration) -> impl Future<Output = ()> + '_ {
        let caller = Location::caller();
        async move {
            if let Some(message) = self.next_within(caller, duration, "nothing").await {
                fail(
                    caller,
                    &format!(
                        "awaited nothing for {duration:?} on {}, got {}",
                        self.url,
                        show(&message)
                    ),
                );
            }
        }
    }

    /// The next text, binary or close message if one comes within `duration`; `None` if not.
    /// For loops of a test's own; the other methods fail the test instead.
    ///
    /// # Panics
    ///
    /// When the connection ends without a close frame or breaks the protocol.
    #[track_caller]
    pub fn recv_within(
        &mut self,
        duration: Duration,
    ) -> impl Future<Output = Option<Message>> + '_ {
        let caller = Location::caller();
        async move { self.next_within(caller, duration, "a message").await }
    }

    /// Sends a ping with `payload` and waits for its pong: a round trip showing that the
    /// server sent nothing before it (say, that a handler wrote nothing), without waiting a
    /// fixed time as [`expect_nothing_for`](WsClient::expect_nothing_for) does.
    ///
    /// # Panics
    ///
    /// When a text, binary or close message comes before the pong (shown), the pong does not
    /// come within the client's timeout, or the connection has ended.
    #[track_caller]
    pub fn ping(&mut self, payload: &[u8]) -> impl Future<Output = ()> + '_ {
        let caller = Location::caller();
        let payload = Bytes::copy_from_slice(payload);
        async move {
            const WHAT: &str = "the pong to our ping";
            self.send_at(caller, Message::Ping(payload.clone())).await;
            let deadline = Instant::now() + self.timeout;
            loop {
                match tokio::time::timeout_at(deadline, self.socket.next()).await {
                    Ok(Some(Ok(Message::Pong(got)))) if got == payload => return,
                    Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                    Ok(Some(Ok(other))) => fail(
                        caller,
                        &format!("awaited {WHAT} on {}, got {}", self.url, show(&other)),
                    ),
                    Ok(Some(Err(error))) => self.lost(caller, WHAT, error),
                    Ok(None) => self.lost(caller, WHAT, NO_CLOSE_FRAME.to_owned()),
                    Err(_) => fail(
                        caller,
                        &format!(
                            "awaited {WHAT} on {} for {:?}: nothing came",
                            self.url, self.timeout
                        ),
                    ),
                }
            }
        }
    }

    /// Closes the connection: sends a close frame with `code` and `reason`, then waits for
    /// the server's answer (skipping any data still in flight).
    ///
    /// # Panics
    ///
    /// When the code may not be sent (see [`CloseFrame::new`]), the write fails, or no
    /// close frame comes back in time.
    #[track_caller]
    pub fn close(&mut self, code: u16, reason: &str) -> impl Future<Output = ()> + '_ {
        let caller = Location::caller();
        let frame = CloseFrame::new(code, reason)
            .unwrap_or_else(|e| fail(caller, &format!("close({code}): {e}")));
        async move {
            self.send_at(caller, Message::Close(Some(frame))).await;
            let deadline = Instant::now() + self.timeout;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match self
                    .next_within(caller, left, "the server's close frame")
                    .await
                {
                    Some(Message::Close(_)) => return,
                    Some(_) => continue,
                    None => fail(
                        caller,
                        &format!(
                            "awaited the server's close frame on {} for {:?}: nothing came",
                            self.url, self.timeout
                        ),
                    ),
                }
            }
        }
    }

    async fn recv_what(&mut self, caller: &'static Location<'static>, what: &str) -> Message {
        let timeout = self.timeout;
        match self.next_within(caller, timeout, what).await {
            Some(message) => message,
            None => fail(
                caller,
                &format!(
                    "awaited {what} on {} for {timeout:?}: nothing came",
                    self.url
                ),
            ),
        }
    }

    /// The next data or close message within `bound`; pings and pongs skipped.
    async fn next_within(
        &mut self,
        caller: &'static Location<'static>,
        bound: Duration,
        what: &str,
    ) -> Option<Message> {
        if let Some(ended) = &self.ended {
            fail(
                caller,
                &format!(
                    "awaited {what} on {}, but {}",
                    self.url,
                    describe_end(ended)
                ),
            );
        }
        let deadline = Instant::now() + bound;
        loop {
            let next = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .ok()?;
            match next {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(message)) => {
                    if let Message::Close(frame) = &message {
                        self.ended =
                            Some(Ended::Closed(frame.as_ref().map_or(1005, CloseFrame::code)));
                    }
                    return Some(message);
                }
                Some(Err(error)) => self.lost(caller, what, error),
                None => self.lost(caller, what, NO_CLOSE_FRAME.to_owned()),
            }
        }
    }

    /// Records that the connection was lost, and fails the wait for `what`.
    fn lost(&mut self, caller: &'static Location<'static>, what: &str, why: String) -> ! {
        let ended = Ended::Lost(why);
        let message = format!(
            "awaited {what} on {}, but {}",
            self.url,
            describe_end(&ended)
        );
        self.ended = Some(ended);
        fail(caller, &message)
    }

    /// Drops the connection with a TCP reset, as a network failure would: no close frame,
    /// nothing flushed. For testing what a server does about a peer that vanished (its
    /// room left, a reconnection that recovers what was missed).
    pub fn reset(self) {
        self.socket.reset();
    }
}

fn describe_end(ended: &Ended) -> String {
    match ended {
        Ended::Closed(code) => format!("the connection was closed (code {code})"),
        Ended::Lost(why) => format!("the connection failed: {why}"),
    }
}

fn kind_of(message: &Message) -> &'static str {
    match message {
        Message::Text(_) => "a text message",
        Message::Binary(_) => "a binary message",
        Message::Ping(_) => "a ping",
        Message::Pong(_) => "a pong",
        Message::Close(_) => "a close frame",
    }
}

/// A message for a failure report: its kind and (the start of) its content.
fn show(message: &Message) -> String {
    const SHOWN: usize = 200;
    match message {
        Message::Text(text) => {
            let text = text.as_str();
            match text.char_indices().nth(SHOWN) {
                Some((cut, _)) => format!("text {:?}... ({} bytes)", &text[..cut], text.len()),
                None => format!("text {text:?}"),
            }
        }
        Message::Binary(data) if data.len() > SHOWN => {
            format!("binary {:?}... ({} bytes)", &data[..SHOWN], data.len())
        }
        Message::Binary(data) => format!("binary {:?}", &data[..]),
        Message::Close(Some(frame)) => {
            format!("close frame {} {:?}", frame.code(), frame.reason())
        }
        Message::Close(None) => "close frame without a code".to_owned(),
        other => kind_of(other).to_owned(),
    }
}
