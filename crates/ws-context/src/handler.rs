//! The [`Handler`] trait: async functions of a [`Context`] returning
//! `Result<T, E>`, boxed once per endpoint (`BoxHandler`), and the error frame an `E` becomes.

use std::{fmt::Display, future::Future, pin::Pin, sync::Arc};

use serde::Serialize;
use ws_message::{Message, encode_owned};

use crate::Context;

/// What a handler call ended with, after its value was encoded.
pub(crate) type Reply = Result<Option<Message>, String>;
pub(crate) type ReplyFuture = Pin<Box<dyn Future<Output = Reply> + Send>>;
pub(crate) type BoxHandler = Arc<dyn Fn(Context) -> ReplyFuture + Send + Sync>;

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
        BoxHandlerFn(Arc::new(move |ctx| {
            let future = self(ctx);
            Box::pin(async move {
                match future.await {
                    Ok(value) => encode_owned(value).map_err(|error| error.to_string()),
                    Err(error) => Err(error.to_string()),
                }
            })
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
