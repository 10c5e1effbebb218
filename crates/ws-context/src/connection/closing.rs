//! Where the closing handshake stands ([`Closing`]), and every transition of it, in one place:
//! each is a method of the task named for its event, which logs itself at trace level. The
//! table of the legal states is in the [module doc of `connection`](super).

use tokio::time::Instant;
use ws_message::CloseFrame;

use super::{ConnectionTask, Step, Stop};

/// Where the closing handshake stands.
pub(super) enum Closing {
    Open,
    /// A local close was asked for; it is sent once the running call is done or the deadline
    /// passes. An urgent close has dropped the queue and writes nothing else first.
    Requested {
        frame: CloseFrame,
        deadline: Instant,
        urgent: bool,
    },
    /// Our close frame is out, or the peer's came in (the socket echoes it): reading until
    /// the peer's close or the end of the stream. `ended_by` is the last close frame seen,
    /// for the close hook and the log.
    Sent {
        ended_by: CloseFrame,
    },
    /// The connection failed with this frame; the task stops.
    Ended(CloseFrame),
}

impl Closing {
    pub(super) fn is_open(&self) -> bool {
        matches!(self, Closing::Open)
    }

    /// False once an urgent close is under way or our close frame is out.
    pub(super) fn may_write(&self) -> bool {
        matches!(
            self,
            Closing::Open | Closing::Requested { urgent: false, .. }
        )
    }

    /// When a requested close goes out even if the call still runs.
    pub(super) fn deadline(&self) -> Option<Instant> {
        match self {
            Closing::Requested { deadline, .. } => Some(*deadline),
            _ => None,
        }
    }

    /// How the connection ended, for the close hook and the log: 1006 unless a close frame
    /// was seen or the connection failed with one (made only then, not up front).
    pub(super) fn ended_by(self) -> CloseFrame {
        match self {
            Closing::Sent { ended_by } | Closing::Ended(ended_by) => ended_by,
            Closing::Open | Closing::Requested { .. } => CloseFrame::abnormal("connection dropped"),
        }
    }
}

impl ConnectionTask {
    /// A close was asked for (a queued close, a call's close, the connect hook's refusal):
    /// it goes out once the call in progress is done, or at `deadline`.
    pub(super) fn request_close(&mut self, frame: CloseFrame, deadline: Instant) {
        // Asked only while writes are allowed: `Open`, or `Requested` (not urgent), which the
        // later request replaces.
        debug_assert!(self.closing.may_write());
        tracing::trace!(code = frame.code(), "close requested");
        self.closing = Closing::Requested {
            frame,
            deadline,
            urgent: false,
        };
    }

    /// Takes the urgent close, if one is set: drops the queue (its memory goes with it) and
    /// closes without writing anything more, once the call in progress is done or the grace
    /// period passes. Once our close is out (or the connection failed) there is nothing left to
    /// write: only the queue is dropped.
    pub(super) fn take_urgent_close(&mut self) {
        let Some(frame) = self.conn().0.writer.urgent().take() else {
            return;
        };
        self.conn().0.writer.queue().close();
        if matches!(self.closing, Closing::Sent { .. } | Closing::Ended(_)) {
            return;
        }
        tracing::trace!(code = frame.code(), "urgent close");
        self.closing = Closing::Requested {
            frame,
            deadline: Instant::now() + self.close_grace,
            urgent: true,
        };
    }

    /// Writes a requested close once the call in progress is done, or drops the call when the
    /// deadline passed: `Requested` → `Sent`. `Break` if the frame could not be written.
    pub(super) async fn send_requested_close(&mut self) -> Step {
        let Closing::Requested { deadline, .. } = &self.closing else {
            return Step::Continue(());
        };
        if self.handling.is_running() && Instant::now() >= *deadline {
            tracing::warn!(parent: self.conn().span(), "handler still running after the close grace period; dropped");
            self.handling.drop_call();
        }
        if self.handling.is_running() {
            return Step::Continue(());
        }
        let frame = match std::mem::replace(&mut self.closing, Closing::Open) {
            Closing::Requested { frame, .. } => frame,
            other => {
                self.closing = other;
                return Step::Continue(());
            }
        };
        tracing::trace!(code = frame.code(), "close sent");
        self.closing = Closing::Sent {
            ended_by: frame.clone(),
        };
        if self.out.write_close(frame, self.close_grace).await {
            Step::Continue(())
        } else {
            Step::Break(Stop::Ended)
        }
    }

    /// The peer's close frame came in (the socket answers it): `Sent`, reading on until the
    /// end. A message read ahead is dropped; a call in progress goes on, its reply unwritten.
    pub(super) fn peer_closed(&mut self, frame: CloseFrame) {
        tracing::trace!(code = frame.code(), "peer closed");
        self.handling.drop_read_ahead();
        self.closing = Closing::Sent { ended_by: frame };
    }

    /// The connection failed (a protocol error, a timeout): `Ended`.
    pub(super) fn failed(&mut self, frame: CloseFrame) {
        tracing::trace!(code = frame.code(), "connection failed");
        self.closing = Closing::Ended(frame);
    }
}
