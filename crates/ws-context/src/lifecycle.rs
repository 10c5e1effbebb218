//! A connection's life around its task: the connect hook before its first message, its entry
//! in the hub while it is open ([`Registration`]), and the close hook once it has ended.
//!
//! The hooks are set on the endpoint ([`Endpoint::on_connect`](crate::Endpoint::on_connect),
//! [`Endpoint::on_close`](crate::Endpoint::on_close)) and kept here as [`Hooks`]; the
//! endpoint's upgrade callback calls them in this order: [`Registration::new`],
//! [`Hooks::connect`], the connection task, [`Registration::end`], [`Hooks::closed`].

use std::{future::Future, panic::AssertUnwindSafe, pin::Pin, sync::Arc};

use futures_util::FutureExt as _;
use tracing::Instrument as _;
use ws_message::CloseFrame;

use crate::Connection;

type HookFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type ConnectHook = Arc<dyn Fn(Connection) -> HookFuture<Result<(), CloseFrame>> + Send + Sync>;
type CloseHook = Arc<dyn Fn(Connection, CloseFrame) -> HookFuture<()> + Send + Sync>;

/// An endpoint's lifecycle hooks; none by default.
#[derive(Clone, Default)]
pub(crate) struct Hooks {
    on_connect: Option<ConnectHook>,
    on_close: Option<CloseHook>,
}

impl Hooks {
    pub(crate) fn set_on_connect<F, Fut>(&mut self, hook: F)
    where
        F: Fn(Connection) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), CloseFrame>> + Send + 'static,
    {
        self.on_connect = Some(Arc::new(move |conn| Box::pin(hook(conn))));
    }

    pub(crate) fn set_on_close<F, Fut>(&mut self, hook: F)
    where
        F: Fn(Connection, CloseFrame) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.on_close = Some(Arc::new(move |conn, close| Box::pin(hook(conn, close))));
    }

    /// Which hooks are set, for `Debug`.
    pub(crate) fn are_set(&self) -> (bool, bool) {
        (self.on_connect.is_some(), self.on_close.is_some())
    }

    /// Runs the connect hook, if any: `Some(frame)` when it refuses the connection (or panics).
    pub(crate) async fn connect(&self, conn: &Connection) -> Option<CloseFrame> {
        let hook = self.on_connect.as_ref()?;
        let span = conn.span();
        match AssertUnwindSafe(hook(conn.clone()).instrument(span.clone()))
            .catch_unwind()
            .await
        {
            Ok(Ok(())) => None,
            Ok(Err(frame)) => {
                tracing::debug!(parent: span, code = frame.code(), reason = %frame.reason(), "connect hook refused the connection");
                Some(frame)
            }
            Err(panic) => {
                let what = panic_message(&panic);
                tracing::error!(parent: span, panic = %what, "connect hook panicked; closing the connection");
                Some(CloseFrame::internal("internal server error"))
            }
        }
    }

    /// Runs the close hook, if any, with how the connection ended; a panic is logged.
    pub(crate) async fn closed(&self, conn: Connection, close: CloseFrame) {
        let Some(hook) = &self.on_close else { return };
        let hook = AssertUnwindSafe(hook(conn.clone(), close).instrument(conn.span().clone()))
            .catch_unwind();
        if let Err(panic) = hook.await {
            tracing::error!(parent: conn.span(), panic = %panic_message(&panic), "close hook panicked");
        }
    }
}

/// A connection's entry in its hub, taken out when this is dropped: when the connection ends,
/// and also when its task is dropped unfinished (a runtime shutting down), since the entry
/// holds the connection, which holds the hub.
pub(crate) struct Registration(pub(crate) Connection);

impl Registration {
    pub(crate) fn new(conn: Connection) -> Self {
        conn.hub().insert(conn.clone());
        Registration(conn)
    }

    /// Takes the connection out of the hub; what the close hook is given.
    pub(crate) fn end(self) -> Connection {
        self.0.clone()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.0.hub().remove(self.0.id());
    }
}

/// The text of a caught panic, for the log.
pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
