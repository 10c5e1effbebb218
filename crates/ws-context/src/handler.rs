//! The [`Handler`] trait: async functions of a [`Context`] returning
//! `Result<T, E>`, erased once per endpoint (`BoxHandler`), the place a connection's calls
//! run in ([`CallSlot`]), and the error frame an `E` becomes.

use std::{
    fmt::Display,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{self, Poll},
};

use serde::Serialize;
use ws_message::{Message, encode_owned};

use crate::Context;

/// What a handler call ended with, after its value was encoded.
pub(crate) type Reply = Result<Option<Message>, String>;
/// Makes an empty [`CallSlot`] for a connection.
pub(crate) type BoxHandler = Arc<dyn Fn() -> BoxCallSlot + Send + Sync>;
pub(crate) type BoxCallSlot = Pin<Box<dyn CallSlot>>;

/// Where a connection's handler calls run, one at a time: each call's future is written over
/// the last one's, in place, so a burst of messages costs one allocation rather than one per
/// message (S2 in bench/README.md). The connection drops its slot when it waits for its next
/// event with no call in progress.
pub(crate) trait CallSlot: Send {
    /// Calls the handler; the call runs when polled. A call still in the slot is dropped.
    fn start(self: Pin<&mut Self>, ctx: Context);
    /// Polls the call; pending while there is none. The slot is empty again once it is ready.
    fn poll_reply(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<Reply>;
    /// Drops the call in the slot, if any.
    fn clear(self: Pin<&mut Self>);
}

pin_project_lite::pin_project! {
    /// The [`CallSlot`] of a handler `F` whose calls are `Fut`s.
    struct Slot<F, Fut> {
        handler: Arc<F>,
        #[pin]
        call: Option<Fut>,
    }
}

impl<F, Fut, T, E> CallSlot for Slot<F, Fut>
where
    F: Fn(Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
    T: Serialize + Send + 'static,
    E: Display + Send + 'static,
{
    fn start(self: Pin<&mut Self>, ctx: Context) {
        let mut this = self.project();
        this.call.set(Some((this.handler)(ctx)));
    }

    fn poll_reply(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<Reply> {
        let mut call = self.project().call;
        let Some(future) = call.as_mut().as_pin_mut() else {
            return Poll::Pending;
        };
        let result = std::task::ready!(future.poll(cx));
        // A finished future must not be polled again.
        call.set(None);
        Poll::Ready(match result {
            Ok(value) => encode_owned(value).map_err(|error| error.to_string()),
            Err(error) => Err(error.to_string()),
        })
    }

    fn clear(self: Pin<&mut Self>) {
        self.project().call.set(None);
    }
}

/// An async function that handles one WebSocket message.
///
/// Implemented for every `Fn(Context) -> impl Future<Output = Result<T, E>>` where `T` is
/// `Serialize` (written back with [`ws_message::encode_owned`]'s rules: `()` and `None` write
/// nothing) and `E` is `Display` (logged and answered with one error frame
/// `{"error":{"message":"..."}}`; the connection stays open). The marker `M` only tells the
/// implementations apart, as in axum.
///
/// ```
/// use ws_context::Context;
///
/// async fn echo(ctx: Context) -> Result<String, ws_context::BindError> {
///     ctx.bind::<String>()
/// }
/// # fn check<H: ws_context::Handler<M>, M>(_: H) {}
/// # check(echo);
/// ```
pub trait Handler<M>: Send + Sync + 'static {
    /// Erases the handler's types.
    #[doc(hidden)]
    fn into_boxed(self) -> BoxHandlerFn;
}

/// A handler with its types erased. Not nameable outside this crate's API.
#[doc(hidden)]
#[derive(Clone)]
pub struct BoxHandlerFn(pub(crate) BoxHandler);

impl std::fmt::Debug for BoxHandlerFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Handler")
    }
}

impl<F, Fut, T, E> Handler<(T, E)> for F
where
    F: Fn(Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
    T: Serialize + Send + 'static,
    E: Display + Send + 'static,
{
    fn into_boxed(self) -> BoxHandlerFn {
        let handler = Arc::new(self);
        BoxHandlerFn(Arc::new(move || {
            Box::pin(Slot {
                handler: Arc::clone(&handler),
                call: None,
            }) as BoxCallSlot
        }))
    }
}

/// The frame answering a handler error, GoFr's error envelope.
pub(crate) fn error_frame(message: &str) -> Message {
    let body = serde_json::json!({ "error": { "message": message } });
    Message::text(body.to_string())
}

/// A boxed handler is a handler: frameworks can store handlers and build endpoints later.
impl Handler<()> for BoxHandlerFn {
    fn into_boxed(self) -> BoxHandlerFn {
        self
    }
}
