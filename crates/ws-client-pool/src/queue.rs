//! The bounded send queue of one service.

use std::{collections::VecDeque, sync::Mutex};

use tokio::sync::Notify;
use ws_message::Message;

/// Messages waiting for the connection task. Writers never wait: a full queue is refused.
#[derive(Debug)]
pub(crate) struct SendQueue {
    messages: Mutex<VecDeque<Message>>,
    capacity: usize,
    ready: Notify,
}

impl SendQueue {
    pub(crate) fn new(capacity: usize) -> Self {
        SendQueue {
            messages: Mutex::new(VecDeque::new()),
            capacity,
            ready: Notify::new(),
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Message>> {
        // A poisoned lock only means another thread panicked while pushing; the deque is intact.
        self.messages
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends a message; gives it back when the queue is full. Returns the new depth. A small
    /// payload is queued as a copy ([`Message::detach`]): one read by a server from a peer may
    /// be a slice of a block that it would keep whole while it waits here.
    pub(crate) fn push_back(&self, message: Message) -> Result<usize, Message> {
        let mut messages = self.lock();
        if messages.len() >= self.capacity {
            return Err(message);
        }
        messages.push_back(message.detach());
        let depth = messages.len();
        drop(messages);
        self.ready.notify_one();
        Ok(depth)
    }

    /// Puts back, ahead of everything else and in their order, messages taken from this queue
    /// that never reached the kernel (a connection ended while they were in the engine's
    /// buffer). Returns the new depth. They were taken from the queue, so it holds at most
    /// `capacity` plus the messages one connection had in flight: at most 64 (the frames
    /// written between two flushes); during shutdown, when writes are refused anyway, what
    /// the engine's 128 KiB write buffer holds.
    pub(crate) fn requeue(&self, unsent: impl DoubleEndedIterator<Item = Message>) -> usize {
        let mut messages = self.lock();
        for message in unsent.rev() {
            messages.push_front(message);
        }
        messages.len()
    }

    pub(crate) fn pop_front(&self) -> Option<Message> {
        self.lock().pop_front()
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Completes after the next `push_back` (or at once if one happened since the last wait).
    pub(crate) async fn pushed(&self) {
        self.ready.notified().await;
    }
}
