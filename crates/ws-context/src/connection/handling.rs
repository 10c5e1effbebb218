//! The handler side of the task: the call in progress, the slot it runs in and the message
//! read ahead ([`Handling`]), making a call, polling it, and what its outcome means.

use std::{
    any::Any,
    panic::AssertUnwindSafe,
    task::{Context, Poll},
};

use ws_message::{CloseFrame, Message};

use crate::{
    Connection,
    handler::{BoxCallSlot, BoxHandler, error_frame},
    lifecycle::panic_message,
    metrics::ConnMetrics,
};

pub(super) use crate::handler::Reply;

/// The handler side: at most one call at a time, and at most one message read ahead while it
/// runs, so reads stay bounded.
pub(super) struct Handling {
    /// Where calls run. Kept after a call for the next message of a burst, and dropped when
    /// the task waits for its next event ([`Handling::release_slot`]): an idle connection
    /// holds none. Always `Some` while a call is in progress.
    slot: Option<BoxCallSlot>,
    call: Call,
    /// The call's message span, when debug logging is on. Boxed: a span is 40 bytes, in every
    /// connection's task while it waits, and exists only while debug logging is on.
    span: Option<Box<tracing::Span>>,
    /// The last call did not finish at its first poll. The next message is then copied out
    /// of the block it was read into ([`Message::detach`]) before its call, so that a slow
    /// call keeps only its own bytes alive, not a 4 KiB block shared with other messages.
    /// Calls that finish at once, the usual case, never pay the copy; nor does a message read
    /// ahead, copied when it was read.
    slow: bool,
}

/// Which call is in progress.
enum Call {
    /// None.
    Idle,
    /// A call in progress; reading goes on.
    Running,
    /// A call in progress and the next message already read: the socket is then asked for
    /// control frames only until the call ends.
    ReadAhead(Message),
}

impl Handling {
    pub(super) fn new() -> Self {
        Handling {
            slot: None,
            call: Call::Idle,
            span: None,
            slow: false,
        }
    }

    pub(super) fn is_running(&self) -> bool {
        !matches!(self.call, Call::Idle)
    }

    pub(super) fn has_read_ahead(&self) -> bool {
        matches!(self.call, Call::ReadAhead(_))
    }

    /// Calls the handler for `message`, in the slot kept from the last call or a new one:
    /// `Idle` → `Running`; the call runs when polled ([`Handling::poll_call`]). A panic in the
    /// handler's synchronous part (before its future exists) is returned, and the task stays
    /// `Idle`: the caller then treats it as the call's outcome, as a panic in the future.
    pub(super) fn call(
        &mut self,
        handler: &BoxHandler,
        conn: &Connection,
        message: Message,
    ) -> Result<(), Box<dyn Any + Send>> {
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
        let slot = self.slot.get_or_insert_with(|| handler());
        let message = if self.slow {
            detached(message)
        } else {
            message
        };
        let ctx = crate::Context::new(conn.clone(), message);
        // No cost unless it panics.
        std::panic::catch_unwind(AssertUnwindSafe(|| slot.as_mut().start(ctx)))?;
        // `poll_call` enters the span inside the connection's span, which the turn is in.
        self.span = span;
        self.call = Call::Running;
        Ok(())
    }

    /// Polls a call just made ([`Handling::call`]), and remembers whether it finished at once.
    #[inline]
    pub(super) fn poll_first(&mut self, cx: &mut Context<'_>) -> Poll<std::thread::Result<Reply>> {
        let polled = self.poll_call(cx);
        self.slow = polled.is_pending();
        polled
    }

    /// Keeps `message` for when the call ends: `Running` → `ReadAhead`.
    pub(super) fn read_ahead(&mut self, message: Message) {
        // The read path starts a call instead when none runs.
        if self.is_running() {
            self.call = Call::ReadAhead(message);
        }
    }

    /// Forgets the message read ahead, if any; the call goes on.
    pub(super) fn drop_read_ahead(&mut self) {
        if let Call::ReadAhead(_) = self.call {
            self.call = Call::Running;
        }
    }

    /// Polls the call in progress, inside its message span when there is one; pending while
    /// there is none. A panic is caught and returned as the outcome (then logged, counted and
    /// answered with 1011 by [`outcome`]).
    pub(super) fn poll_call(&mut self, cx: &mut Context<'_>) -> Poll<std::thread::Result<Reply>> {
        let (Call::Running | Call::ReadAhead(_), Some(slot)) = (&self.call, &mut self.slot) else {
            return Poll::Pending;
        };
        let _message = self.span.as_deref().map(tracing::Span::enter);
        match std::panic::catch_unwind(AssertUnwindSafe(|| slot.as_mut().poll_reply(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(reply)) => Poll::Ready(Ok(reply)),
            Err(panic) => {
                // A future that panicked must not be polled again.
                slot.as_mut().clear();
                Poll::Ready(Err(panic))
            }
        }
    }

    /// The call ended: `Idle` (the slot is kept for the next message), and the message read
    /// ahead, if any.
    #[inline]
    pub(super) fn end(&mut self) -> Option<Message> {
        self.span = None;
        match std::mem::replace(&mut self.call, Call::Idle) {
            Call::ReadAhead(message) => {
                // Copied out of its block when it was read ahead: not again for its call.
                self.slow = false;
                Some(message)
            }
            Call::Running | Call::Idle => None,
        }
    }

    /// Drops the call in progress, if any, and its slot: `Idle`.
    pub(super) fn drop_call(&mut self) {
        self.call = Call::Idle;
        self.span = None;
        self.slot = None;
    }

    /// Drops the slot kept from the last call, if no call runs: the task is about to wait for
    /// its next event.
    pub(super) fn release_slot(&mut self) {
        if let Call::Idle = self.call {
            self.slot = None;
        }
    }
}

/// What a call's outcome asks to write: its reply (a handler error becomes an error frame),
/// and a close (a panic closes with 1011). Errors and panics are logged and counted, out of
/// line ([`failure`]): a reply is every message's case.
#[inline]
pub(super) fn outcome(
    reply: std::thread::Result<Reply>,
    conn: &Connection,
    metrics: &ConnMetrics,
) -> (Option<Message>, Option<CloseFrame>) {
    match reply {
        Ok(Ok(message)) => (message, None),
        failed => failure(failed, conn, metrics),
    }
}

fn failure(
    reply: std::thread::Result<Reply>,
    conn: &Connection,
    metrics: &ConnMetrics,
) -> (Option<Message>, Option<CloseFrame>) {
    match reply {
        Ok(answer) => {
            let answer = answer.unwrap_or_else(|error| {
                tracing::warn!(parent: conn.span(), %error, "handler error");
                metrics.handler_failed("error");
                Some(error_frame(&error))
            });
            (answer, None)
        }
        Err(panic) => {
            let what = panic_message(&panic);
            tracing::error!(parent: conn.span(), panic = %what, "handler panicked; closing the connection");
            metrics.handler_failed("panic");
            (None, Some(CloseFrame::internal("internal server error")))
        }
    }
}

/// [`Message::detach`], kept out of line: calls after a slow one are the rare case.
#[cold]
fn detached(message: Message) -> Message {
    message.detach()
}

fn message_kind(message: &Message) -> &'static str {
    match message {
        Message::Text(_) => "text",
        Message::Binary(_) => "binary",
        _ => "control",
    }
}
