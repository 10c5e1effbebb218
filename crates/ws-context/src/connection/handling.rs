//! The handler side of the task: the call in progress and the message read ahead
//! ([`Handling`]), making a call, polling it, and what its outcome means.

use std::{
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    task::{Context, Poll},
};

use futures_util::FutureExt as _;
use ws_message::{CloseFrame, Message};

use crate::{
    Connection,
    handler::{BoxHandler, ReplyFuture, error_frame},
    lifecycle::panic_message,
    metrics::ConnMetrics,
};

pub(super) use crate::handler::Reply;

/// The handler side: at most one call at a time, and at most one message read ahead while it
/// runs, so reads stay bounded.
pub(super) enum Handling {
    /// No call in progress.
    Idle,
    /// A call in progress; reading goes on.
    Running(Running),
    /// A call in progress and the next message already read: the socket is then asked for
    /// control frames only until the call ends.
    ReadAhead(Running, Message),
}

/// A handler call in progress: its (already boxed) future, guarded against panics, and the
/// per-message span when debug logging is on.
pub(super) struct Running {
    future: futures_util::future::CatchUnwind<AssertUnwindSafe<ReplyFuture>>,
    /// Boxed: a span is 40 bytes, in every connection's task while it waits, and exists only
    /// while debug logging is on.
    span: Option<Box<tracing::Span>>,
}

impl Handling {
    pub(super) fn is_running(&self) -> bool {
        !matches!(self, Handling::Idle)
    }

    pub(super) fn has_read_ahead(&self) -> bool {
        matches!(self, Handling::ReadAhead(..))
    }

    /// Keeps `message` for when the call ends: `Running` → `ReadAhead`.
    pub(super) fn read_ahead(&mut self, message: Message) {
        *self = match std::mem::replace(self, Handling::Idle) {
            Handling::Running(call) | Handling::ReadAhead(call, _) => {
                Handling::ReadAhead(call, message)
            }
            // The read path starts a call instead when none runs.
            Handling::Idle => Handling::Idle,
        };
    }

    /// Forgets the message read ahead, if any; the call goes on.
    pub(super) fn drop_read_ahead(&mut self) {
        if let Handling::ReadAhead(..) = self
            && let Handling::ReadAhead(call, _) = std::mem::replace(self, Handling::Idle)
        {
            *self = Handling::Running(call);
        }
    }

    /// Polls the call in progress, inside its message span when there is one; pending while
    /// there is none.
    pub(super) fn poll_call(&mut self, cx: &mut Context<'_>) -> Poll<std::thread::Result<Reply>> {
        match self {
            Handling::Running(Running { future, span })
            | Handling::ReadAhead(Running { future, span }, _) => {
                let _message = span.as_deref().map(tracing::Span::enter);
                Pin::new(future).poll(cx)
            }
            Handling::Idle => Poll::Pending,
        }
    }

    /// The call ended: `Idle`, and the message read ahead, if any.
    pub(super) fn end(&mut self) -> Option<Message> {
        match std::mem::replace(self, Handling::Idle) {
            Handling::ReadAhead(_, message) => Some(message),
            Handling::Running(_) | Handling::Idle => None,
        }
    }
}

/// Calls the handler for `message`; the call runs when polled ([`Handling::poll_call`]).
pub(super) fn call(handler: &BoxHandler, conn: &Connection, message: Message) -> Running {
    // Checked first: making a disabled span and dropping it is a cost on every message.
    let span = tracing::level_enabled!(tracing::Level::DEBUG)
        .then(|| {
            tracing::debug_span!(
                parent: conn.span(),
                "message",
                kind = message_kind(&message),
                bytes = super::payload_len(&message),
            )
        })
        .filter(|span| !span.is_disabled())
        .map(Box::new);
    let ctx = crate::Context::new(conn.clone(), message);
    // A panic in the handler's synchronous part (before its future exists) is caught too,
    // and resumed when the future is polled: the same catch then logs it, counts it and
    // closes with 1011, as for a panic in the future. No cost unless it panics.
    let future = std::panic::catch_unwind(AssertUnwindSafe(|| handler(ctx)))
        .unwrap_or_else(|panic| Box::pin(async move { std::panic::resume_unwind(panic) }));
    Running {
        future: AssertUnwindSafe(future).catch_unwind(),
        // `poll_call` enters it inside the connection's span, which the turn is in.
        span,
    }
}

/// What a call's outcome asks to write: its reply (a handler error becomes an error frame),
/// and a close (a panic closes with 1011). Errors and panics are logged and counted here.
pub(super) fn outcome(
    reply: std::thread::Result<Reply>,
    conn: &Connection,
    metrics: &ConnMetrics,
) -> (Option<Message>, Option<CloseFrame>) {
    match reply {
        Ok(Ok(message)) => (message, None),
        Ok(Err(error)) => {
            tracing::warn!(parent: conn.span(), %error, "handler error");
            metrics.handler_failed("error");
            (Some(error_frame(&error)), None)
        }
        Err(panic) => {
            let what = panic_message(&panic);
            tracing::error!(parent: conn.span(), panic = %what, "handler panicked; closing the connection");
            metrics.handler_failed("panic");
            (None, Some(CloseFrame::internal("internal server error")))
        }
    }
}

fn message_kind(message: &Message) -> &'static str {
    match message {
        Message::Text(_) => "text",
        Message::Binary(_) => "binary",
        _ => "control",
    }
}
