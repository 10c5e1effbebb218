//! The read path: what the task may read now ([`Reading`], derived from the state), bursts of
//! messages read without waiting, and what each thing the peer sent does.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use futures_util::Stream as _;
use ws_message::{CloseFrame, Message};
use ws_upgrader::WsError;

use super::{ConnectionTask, MAX_BATCH, Step, Stop, closing::Closing};

/// What the task reads this turn.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Reading {
    /// Nothing: a close was requested (the task waits for the call in progress, then writes
    /// its close frame), or the connection failed.
    Nothing,
    /// Messages, in bursts.
    Messages,
    /// A message is read ahead while the call runs: control frames only. The socket still
    /// answers pings, pings the peer and watches its deadlines, reading no further data.
    ControlOnly,
}

impl ConnectionTask {
    /// What may be read now.
    pub(super) fn reading(&self) -> Reading {
        match self.closing {
            Closing::Open if self.handling.has_read_ahead() => Reading::ControlOnly,
            Closing::Open => Reading::Messages,
            // Read until the peer's close frame or the end of the stream.
            Closing::Sent { .. } => Reading::Messages,
            Closing::Requested { .. } | Closing::Ended(_) => Reading::Nothing,
        }
    }

    /// Handles what the socket gave, then each further message the socket has ready without
    /// waiting (already parsed or already readable), up to `MAX_BATCH`: a burst costs one turn.
    /// It ends early when the socket is full (the turn's flush then waits for the peer) or
    /// drained.
    pub(super) fn on_burst(
        &mut self,
        first: Option<Result<Message, WsError>>,
        cx: &mut Context<'_>,
    ) -> Step {
        let mut incoming = first;
        for _ in 1..MAX_BATCH {
            self.on_incoming(incoming, cx)?;
            // A drained socket ends the burst without one more poll, which would find nothing:
            // the next turn waits on the socket anyway (S1 in bench/README.md).
            if self.reading() != Reading::Messages || self.out.full() || self.out.socket.drained() {
                return Step::Continue(());
            }
            match Pin::new(&mut self.out.socket).poll_next(cx) {
                Poll::Ready(more) => incoming = more,
                Poll::Pending => return Step::Continue(()),
            }
        }
        self.on_incoming(incoming, cx)
    }

    pub(super) fn on_incoming(
        &mut self,
        incoming: Option<Result<Message, WsError>>,
        cx: &mut Context<'_>,
    ) -> Step {
        match incoming {
            None => Step::Break(Stop::Ended),
            Some(Err(error)) => {
                // The socket has stopped reading; tell the peer why (1002, 1007, 1009, 1013, ...).
                tracing::debug!(parent: self.conn().span(), %error, "connection failed");
                // Only reported (1006 for a broken transport), so a code that may not be sent
                // is kept as "abnormal".
                self.failed(
                    CloseFrame::new(error.close_code(), error.to_string())
                        .unwrap_or_else(|_| CloseFrame::abnormal(error.to_string())),
                );
                Step::Break(Stop::Failed(error))
            }
            Some(Ok(Message::Close(frame))) => {
                // The socket answers the close; keep reading until it reports the end.
                self.peer_closed(frame.unwrap_or_else(CloseFrame::no_status));
                Step::Continue(())
            }
            Some(Ok(message)) if message.is_data() => {
                self.received.add(&message);
                match self.closing {
                    Closing::Open if self.handling.is_running() => {
                        self.handling.read_ahead(message.detach());
                        Step::Continue(())
                    }
                    Closing::Open => self.start(message, cx),
                    // After a close frame, data is not handled (RFC 6455 §1.4).
                    _ => Step::Continue(()),
                }
            }
            // Pings are answered by the socket; any frame feeds its liveness timer.
            Some(Ok(_)) => Step::Continue(()),
        }
    }
}
