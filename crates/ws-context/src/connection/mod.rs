//! One connection's task: the only owner of its socket. It reads messages and calls the
//! handler once for each, writes the handler's replies and everything other tasks queued
//! ([`SocketWriter`](crate::SocketWriter)), and runs the closing handshake.
//!
//! # Files
//!
//! - `mod.rs` (here): the task's state, its loop ([`ConnectionTask::run`], one event per
//!   turn) and what each event does.
//! - `handling.rs`: the handler side, [`Handling`]: which call runs, and the message read ahead.
//! - `closing.rs`: where the closing handshake stands, [`Closing`], and every transition of it.
//! - `inbound.rs`: the read path: what may be read now, bursts of messages, peer's frames.
//! - `outbound.rs`: the write path, [`WriteSide`]: the socket, the connection's queue, what is
//!   fed but not flushed, the traffic sent. Its methods take `&mut WriteSide`, never the task,
//!   so the borrow checker shows that writing never touches the handler's state.
//!
//! # State
//!
//! Two enums, no loose flags: [`Handling`]'s call (`Idle`, `Running`, `ReadAhead(message)`:
//! at most one message is read ahead while a handler runs, so reads stay bounded) and
//! [`Closing`] (`Open`, `Requested { frame, deadline, urgent }`, `Sent { ended_by }`,
//! `Ended(frame)`). Whether the task reads, what it reads and whether it writes are derived
//! from the pair ([`ConnectionTask::reading`], [`Closing::may_write`]). `Handling` also keeps
//! where calls run (the call slot, kept for a burst) and whether the last call was slow (its
//! next message is then copied out of its read block); neither changes a transition. Legal
//! pairs:
//!
//! | handling \ closing | `Open`                        | `Requested`                          | `Sent`                        |
//! |--------------------|-------------------------------|--------------------------------------|-------------------------------|
//! | `Idle`             | reads messages; writes queue  | transient: the next turn writes the close frame, then `Sent` | reads until the peer's close or the end |
//! | `Running`          | reads messages; writes queue  | reads nothing; writes queue unless urgent; waits for the call or the deadline | reads until the end; the call's reply is dropped |
//! | `ReadAhead`        | reads control frames only (`WebSocket::recv_control`: pings answered, pings sent, pong deadline kept); writes queue | as `Running`; the message read ahead is dropped when the call ends | never: entering `Sent` drops the message read ahead |
//!
//! `Ended(frame)` is terminal: the task stops at the end of that turn. What each event does:
//!
//! | event                                   | transition                                                    |
//! |-----------------------------------------|---------------------------------------------------------------|
//! | data message, `Idle` + `Open`           | `Running`: the handler is called and polled once at once       |
//! | data message, `Running` + `Open`        | `ReadAhead` (the read path then asks for control frames only)  |
//! | data message, `Sent`                    | dropped (counted): nothing is handled after a close            |
//! | the call ends                           | `Idle`; its reply written after what it queued (unless closing urgently or `Sent`); then the message read ahead, if any and `Open`, starts `Running` |
//! | the call returns or panics into a close | `Requested { deadline: now }` (a panic closes with 1011)        |
//! | a queued close                          | `Requested { deadline: now + close_grace }`                     |
//! | an urgent close (slow peer, full queue) | `Requested { urgent, deadline: now + close_grace }`, queue dropped; in `Sent`, only the queue is dropped |
//! | `Requested` and `Idle`, or its deadline passed (the call is then dropped) | our close frame written, `Sent { ended_by: ours }` |
//! | the peer's close frame                  | `Sent { ended_by: the peer's }`; the message read ahead dropped |
//! | a read error (protocol, timeout)        | `Ended(its close frame)`: the peer is told, the task stops     |
//! | end of stream, or a write fails         | the task stops; `ended_by` as it stands (1006 unless `Sent`)    |
//!
//! # Cost
//!
//! The task's future is part of every connection's memory (`cargo xtask bench`, [S5](bench/README.md#scenarios)) and runs
//! for every message (callgrind, [S1, S2](bench/README.md#scenarios)), so: a turn awaits only
//! its event and its flush; what the event does ([`on_event`](ConnectionTask::on_event) and
//! everything it calls: handler calls, bursts of reads, writes) is synchronous, polling the
//! handler and the socket with the task's context, so none of it takes room in the future; the
//! socket takes frames without waiting and a full one is waited for in the turn's flush
//! (`outbound.rs`); rare waits that need a timer are boxed; [`run`](ConnectionTask::run) is not
//! an `async fn`; the connection's span is entered once per poll of the task. The test at the
//! end of this file bounds the future's size.

mod closing;
mod handling;
mod inbound;
mod outbound;

use std::{
    future::{Future, poll_fn},
    ops::ControlFlow,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::{FutureExt as _, Stream as _, future::Either};
use tokio::time::Instant;
use ws_message::{CloseFrame, Message};
use ws_upgrader::{WebSocket, WsError};

use self::{
    closing::Closing,
    handling::Handling,
    inbound::Reading,
    outbound::{WriteFailed, WriteSide},
};
use crate::{
    Connection,
    handler::BoxHandler,
    metrics::ConnMetrics,
    writer::{Delivery, Outbound},
};

/// Messages handled (read, or written from the queue) before the task checks its other events
/// again, so a busy writer cannot starve reads nor a fast reader writes.
const MAX_BATCH: usize = 256;

/// One connection's task: the only owner of the socket.
pub(crate) struct ConnectionTask {
    /// The socket and the queue: everything writing needs, and nothing else.
    out: WriteSide,
    handler: BoxHandler,
    close_grace: Duration,
    metrics: Arc<ConnMetrics>,
    handling: Handling,
    closing: Closing,
    /// Traffic read and not yet added to the shared counters (see [`Traffic`]).
    received: Traffic,
}

/// Whether the connection task goes on after a step; `Break` ends it.
type Step = ControlFlow<Stop>;

/// Why the task stops.
enum Stop {
    /// The stream ended, a write failed or the queue was closed.
    Ended,
    /// A read failed: the peer is told why (`WriteSide::fail`), then the task stops.
    Failed(WsError),
}

/// What a turn waited for.
enum Event {
    /// The call in progress ended.
    Reply(std::thread::Result<handling::Reply>),
    /// The socket gave a message (or the end, or an error), read as `Reading` said.
    Incoming(Option<Result<Message, WsError>>, Reading),
    /// The queue gave a command or an urgent close.
    Delivery(Delivery),
    /// The requested close's deadline passed.
    Deadline,
}

impl ConnectionTask {
    pub(crate) fn new(
        socket: WebSocket,
        conn: Connection,
        handler: BoxHandler,
        close_grace: Duration,
        metrics: Arc<ConnMetrics>,
    ) -> Self {
        ConnectionTask {
            out: WriteSide::new(socket, conn),
            handler,
            close_grace,
            metrics,
            handling: Handling::new(),
            closing: Closing::Open,
            received: Traffic::default(),
        }
    }

    fn conn(&self) -> &Connection {
        &self.out.conn
    }

    /// The route's metrics, which the task counts its traffic in.
    pub(crate) fn metrics(&self) -> &Arc<ConnMetrics> {
        &self.metrics
    }

    /// Runs until the connection ends; returns how it was closed. `rejected` closes at once
    /// (the connect hook refused the connection).
    ///
    /// Each turn waits for one event, handles it with everything else already ready of the
    /// same kind (a burst of parsed messages, a run of queued frames), then flushes once: one
    /// write per turn, and no extra turn of the scheduler before it.
    ///
    /// It borrows the task: the connection's future (`endpoint.rs`) owns the task once and
    /// awaits this. Taken by value, the task would sit in that future twice, as the value moved
    /// into this one and as what the outer future captured (552 bytes of socket alone, [S5](bench/README.md#scenarios)).
    /// `rejected` is taken before the future is made, so that it takes no room in it.
    pub(crate) fn run(&mut self, rejected: Option<CloseFrame>) -> impl Future<Output = CloseFrame> {
        tracing::debug!(parent: self.conn().span(), "connection open");
        if let Some(frame) = rejected {
            self.request_close(frame, Instant::now());
        }
        async move {
            // The turns run inside the connection's span, so the handler's events carry the
            // connection's fields: one enter per poll of the task, not one per message or turn.
            let conn = self.conn().clone();
            {
                let mut turns = std::pin::pin!(async { while self.turn().await.is_continue() {} });
                poll_fn(|cx| {
                    let _entered = conn.span().enter();
                    turns.as_mut().poll(cx)
                })
                .await;
            }
            self.publish_traffic();
            std::mem::replace(&mut self.closing, Closing::Open).ended_by()
        }
    }

    async fn turn(&mut self) -> Step {
        if self.closing.may_write() {
            // One atomic load; an urgent close goes before anything else, even a burst of reads.
            self.take_urgent_close();
        }
        self.send_requested_close().await?;
        let deadline = self.closing.deadline();
        let reading = self.reading();
        let may_write = self.closing.may_write();
        let handler_running = self.handling.is_running();

        // The order is fixed: reads cannot starve queued frames because every turn that wrote
        // also takes the queue before its flush, and an urgent close is checked above at every
        // turn. Polled by hand rather than through `select!`: no future per branch to make and
        // keep each turn (S1 in bench/README.md).
        let mut deadline = sleep_until(deadline);
        let event = poll_fn(|cx| {
            if handler_running && let Poll::Ready(reply) = self.handling.poll_call(cx) {
                return Poll::Ready(Event::Reply(reply));
            }
            let incoming = match reading {
                Reading::Nothing => Poll::Pending,
                Reading::Messages => Pin::new(&mut self.out.socket).poll_next(cx),
                Reading::ControlOnly => self.out.socket.poll_recv_control(cx),
            };
            if let Poll::Ready(incoming) = incoming {
                return Poll::Ready(Event::Incoming(incoming, reading));
            }
            if may_write && let Poll::Ready(delivery) = self.out.poll_delivery(cx) {
                return Poll::Ready(Event::Delivery(delivery));
            }
            let event = deadline.poll_unpin(cx).map(|()| Event::Deadline);
            if event.is_pending() {
                self.handling.release_slot();
            }
            event
        })
        .await;
        match in_context(|cx| self.on_event(event, cx)).await {
            Step::Continue(()) => {}
            Step::Break(Stop::Failed(error)) => {
                self.out.fail(&error).await;
                return Step::Break(Stop::Ended);
            }
            Step::Break(Stop::Ended) => return Step::Break(Stop::Ended),
        }
        if self.out.unflushed() {
            // Frames other tasks queued meanwhile go out in the same write.
            if self.closing.may_write()
                && !self.out.full()
                && let Some(command) = self.out.next_command()
            {
                self.on_command(command)?;
            }
            let flushed = self.out.flush().await;
            self.after_write(flushed.map(|()| None), Duration::ZERO)?;
        }
        self.publish_traffic();
        Step::Continue(())
    }

    /// What the event of a turn does. Synchronous, as everything it calls: the handler and
    /// the socket are polled with the task's context, and the socket takes frames without
    /// waiting ([`WriteSide`]), so the turn's future holds no state of this path: only the
    /// waits of the turn itself ([S5](bench/README.md#scenarios)).
    fn on_event(&mut self, event: Event, cx: &mut Context<'_>) -> Step {
        match event {
            Event::Reply(reply) => self.on_reply(reply, cx),
            Event::Incoming(incoming, Reading::ControlOnly) => self.on_incoming(incoming, cx),
            Event::Incoming(incoming, _) => self.on_burst(incoming, cx),
            Event::Delivery(Delivery::Urgent) => {
                self.take_urgent_close();
                Step::Continue(())
            }
            Event::Delivery(Delivery::Command(command)) => self.on_command(command),
            // Only once the queue is closed, which this task does itself after an urgent
            // close (and then stops polling it); end all the same.
            Event::Delivery(Delivery::Closed) => Step::Break(Stop::Ended),
            Event::Deadline => Step::Continue(()),
        }
    }

    /// Calls the handler for a message. Most handlers finish at their first poll: their
    /// reply is written now rather than one turn later.
    fn start(&mut self, message: Message, cx: &mut Context<'_>) -> Step {
        if let Err(panic) = self.handling.call(&self.handler, &self.out.conn, message) {
            return self.on_reply(Err(panic), cx);
        }
        match self.handling.poll_first(cx) {
            Poll::Ready(reply) => self.on_reply(reply, cx),
            Poll::Pending => Step::Continue(()),
        }
    }

    /// The call ended: writes its reply, then starts the message read ahead, if any.
    fn on_reply(
        &mut self,
        reply: std::thread::Result<handling::Reply>,
        cx: &mut Context<'_>,
    ) -> Step {
        let read_ahead = self.handling.end();
        let (reply, close) = handling::outcome(reply, self.conn(), &self.metrics);
        // While an urgent close is under way, or once our close is out, nothing is written.
        if self.closing.may_write() {
            let written = self.out.finish(reply, close);
            self.after_write(written, Duration::ZERO)?;
        }
        match read_ahead {
            Some(message) if self.closing.is_open() => self.start(message, cx),
            _ => Step::Continue(()),
        }
    }

    /// Writes a queued command and the rest of the queue, up to `MAX_BATCH` frames.
    fn on_command(&mut self, command: Outbound) -> Step {
        let written = self.out.write_batch(command);
        self.after_write(written, self.close_grace)
    }

    /// What a write means for the task: a close frame met in the queue (or a call's close)
    /// is requested with `grace` to go out, an urgent close taken, a broken transport ends it.
    fn after_write(
        &mut self,
        written: Result<Option<CloseFrame>, WriteFailed>,
        grace: Duration,
    ) -> Step {
        match written {
            Ok(Some(frame)) => self.request_close(frame, Instant::now() + grace),
            Ok(None) => {}
            Err(WriteFailed::Urgent) => self.take_urgent_close(),
            Err(WriteFailed::Broken) => return Step::Break(Stop::Ended),
        }
        Step::Continue(())
    }

    /// Adds the turn's traffic to the shared counters at the end of each turn, so a burst
    /// costs one update per counter, not one per message.
    fn publish_traffic(&mut self) {
        let metrics = &self.metrics;
        self.received
            .publish(&metrics.messages_received, &metrics.bytes_received);
        self.out
            .sent()
            .publish(&metrics.messages_sent, &metrics.bytes_sent);
    }
}

/// Messages and payload bytes not yet added to the shared counters.
#[derive(Default)]
struct Traffic {
    messages: u64,
    bytes: u64,
}

impl Traffic {
    fn add(&mut self, message: &Message) {
        self.messages += 1;
        self.bytes += payload_len(message);
    }

    fn publish(&mut self, messages: &metrics::Counter, bytes: &metrics::Counter) {
        if self.messages > 0 {
            messages.increment(std::mem::take(&mut self.messages));
            bytes.increment(std::mem::take(&mut self.bytes));
        }
    }
}

fn payload_len(message: &Message) -> u64 {
    u64::try_from(message.len()).unwrap_or(u64::MAX)
}

/// Runs `f` once with the task's context.
fn in_context<R>(f: impl FnOnce(&mut Context<'_>) -> R) -> impl Future<Output = R> {
    let mut f = Some(f);
    poll_fn(move |cx| match f.take() {
        Some(f) => Poll::Ready(f(cx)),
        // Not polled again once ready.
        None => Poll::Pending,
    })
}

/// Boxed, as every rare wait with a timer: a timer is large, and inline it would grow every
/// connection's task ([S5](bench/README.md#scenarios)).
fn sleep_until(deadline: Option<Instant>) -> impl Future<Output = ()> {
    match deadline {
        Some(deadline) => Either::Left(Box::pin(tokio::time::sleep_until(deadline))),
        None => Either::Right(std::future::pending()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `f` returns, without calling it.
    fn returned_size<A, B, F>(_: fn(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Bounds the future of the connection task's run: part of every idle connection's
    /// memory ([S5](bench/README.md#scenarios)), with the task itself, in the connection's future (`endpoint.rs`,
    /// `connection_future_stays_small`). To measure it, set `BOUND` to 0 and run `cargo test
    /// -p ws-context --lib task_future`: the failure gives the size (1,792 bytes when `run`
    /// took the task by value, task included; 1,008 borrowing it; 808 with the futures of the
    /// read and write paths taking their arguments once; 776 without `rejected`; 256 with the
    /// handling path synchronous; 224 with the close write boxed whole; 192 with a turn's
    /// event polled by hand, not by `select!`; rustc 1.95, x86_64, debug and release builds).
    /// A change that passes the bound should say why in its commit, and move the bound.
    #[test]
    fn task_future_stays_small() {
        const BOUND: usize = 192;
        let size = returned_size(ConnectionTask::run);
        assert!(
            size <= BOUND,
            "the connection task's future is {size} bytes, over its bound of {BOUND}"
        );
    }
}
