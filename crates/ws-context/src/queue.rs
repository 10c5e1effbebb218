//! The outbound queue of one connection: from any number of writers to its one task.

use std::{
    collections::VecDeque,
    sync::{Mutex, MutexGuard, PoisonError},
    task::{Context, Poll},
};

use futures_util::task::AtomicWaker;
use tokio::sync::{Semaphore, TryAcquireError};

/// Above this many slots, a queue that empties gives its memory back.
const KEPT_SLOTS: usize = 32;

/// A bounded queue that holds memory only while it holds items. A tokio channel allocates a
/// block of 32 slots up front, about 1.4 KiB for every connection, most of what the framework
/// added to an idle connection (`cargo xtask bench`, [S5](bench/README.md#scenarios)).
///
/// Bounded in messages and in bytes with one semaphore, so a push costs one atomic, as a
/// bound in messages alone did: its permits are the byte budget, and each item costs its
/// payload bytes but at least `budget / capacity` (the slot size), so at most `capacity`
/// items and at most `budget` bytes are queued. An item larger than the whole budget costs
/// the whole budget: it waits for an empty queue rather than never getting in.
pub(crate) struct OutboundQueue<T> {
    /// Each item with what it cost, given back when it is taken.
    items: Mutex<VecDeque<(T, u32)>>,
    /// Free budget, in bytes; closed once the connection task takes no more items.
    room: Semaphore,
    /// The whole budget: `slot × capacity`.
    budget: usize,
    /// The least an item costs: the budget over the capacity in messages.
    slot: usize,
    /// The connection task, woken when an item arrives.
    task: AtomicWaker,
}

/// Why an item was not queued; the item comes back.
pub(crate) enum Refused<T> {
    Full(T),
    Closed(T),
}

impl<T> OutboundQueue<T> {
    /// A queue of at most `capacity` items (at least 1) and `max_bytes` bytes (rounded down to
    /// a multiple of `capacity`, at least one byte per item, at most `u32::MAX`).
    pub(crate) fn new(capacity: usize, max_bytes: usize) -> Self {
        let capacity = capacity.max(1);
        let slot = (max_bytes.min(u32::MAX as usize) / capacity).max(1);
        let budget = slot.saturating_mul(capacity).min(Semaphore::MAX_PERMITS);
        OutboundQueue {
            items: Mutex::new(VecDeque::new()),
            room: Semaphore::new(budget),
            budget,
            slot,
            task: AtomicWaker::new(),
        }
    }

    /// What an item of `bytes` payload bytes takes from the budget.
    fn cost(&self, bytes: usize) -> u32 {
        // The budget is at most `u32::MAX` unless the capacity alone is larger (then the slot
        // is one byte and every item costs one).
        u32::try_from(bytes.clamp(self.slot, self.budget)).unwrap_or(u32::MAX)
    }

    /// Queues `item`, of `bytes` payload bytes, if there is room now.
    pub(crate) fn try_push(&self, item: T, bytes: usize) -> Result<(), Refused<T>> {
        let cost = self.cost(bytes);
        match self.room.try_acquire_many(cost) {
            Ok(permit) => {
                permit.forget();
                self.insert(item, cost);
                Ok(())
            }
            Err(TryAcquireError::NoPermits) => Err(Refused::Full(item)),
            Err(TryAcquireError::Closed) => Err(Refused::Closed(item)),
        }
    }

    /// Queues `item`, of `bytes` payload bytes, once there is room; gives it back if the queue
    /// is closed first. Waiting writers get in in the order they came (the semaphore is fair).
    ///
    /// Cancel safe: when dropped, nothing was queued.
    pub(crate) async fn push(&self, item: T, bytes: usize) -> Result<(), T> {
        let cost = self.cost(bytes);
        match self.room.acquire_many(cost).await {
            Ok(permit) => {
                permit.forget();
                self.insert(item, cost);
                Ok(())
            }
            Err(_) => Err(item),
        }
    }

    fn insert(&self, item: T, cost: u32) {
        self.lock().push_back((item, cost));
        self.task.wake();
    }

    /// True when nothing is queued, nor taken with [`try_pop_charged`](Self::try_pop_charged)
    /// and still charged: one atomic load.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.room.available_permits() == self.budget
    }

    /// True once the connection task takes no more items.
    pub(crate) fn is_closed(&self) -> bool {
        self.room.is_closed()
    }

    /// The next item, if one is queued. An empty queue is seen from its free room (one
    /// atomic load), without the lock.
    pub(crate) fn try_pop(&self) -> Option<T> {
        let (item, cost) = self.try_pop_charged()?;
        self.release(cost);
        Some(item)
    }

    /// The next item and its cost, which stays taken from the budget until
    /// [`release`](Self::release)d: for an item the task moves into a socket that cannot take
    /// it yet, so that it still counts against the bound.
    ///
    /// Inlined: the task asks after every handler call, and the queue is nearly always empty
    /// then (S2 in bench/README.md); only taking an item is a call.
    #[inline]
    pub(crate) fn try_pop_charged(&self) -> Option<(T, u32)> {
        if self.is_empty() {
            return None;
        }
        self.pop_front()
    }

    fn pop_front(&self) -> Option<(T, u32)> {
        let mut items = self.lock();
        let popped = items.pop_front()?;
        if items.is_empty() && items.capacity() > KEPT_SLOTS {
            *items = VecDeque::new();
        }
        Some(popped)
    }

    /// Gives back to the budget what items taken with [`try_pop_charged`](Self::try_pop_charged) cost.
    pub(crate) fn release(&self, cost: u32) {
        if cost > 0 {
            self.room.add_permits(cost as usize);
        }
    }

    /// For the connection task: ready with what `ready` finds, which is checked before and
    /// again after the task's waker is registered, so nothing that comes in between (an item,
    /// the close, a [`wake_task`](Self::wake_task)) is missed.
    pub(crate) fn poll_task<R>(
        &self,
        cx: &mut Context<'_>,
        mut ready: impl FnMut() -> Option<R>,
    ) -> Poll<R> {
        if let Some(found) = ready() {
            return Poll::Ready(found);
        }
        self.task.register(cx.waker());
        ready().map_or(Poll::Pending, Poll::Ready)
    }

    /// Wakes the connection task, for news that does not go through the queue.
    pub(crate) fn wake_task(&self) {
        self.task.wake();
    }

    /// Refuses every further item, and drops the queued ones (their memory goes with them).
    pub(crate) fn close(&self) {
        self.room.close();
        let dropped = std::mem::take(&mut *self.lock());
        drop(dropped);
        self.task.wake();
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<(T, u32)>> {
        self.items.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;

    #[test]
    fn bounded_in_order_and_empty_without_memory() {
        let queue = OutboundQueue::new(2, usize::MAX);
        assert!(queue.try_pop().is_none());
        assert!(queue.try_push(1, 0).is_ok());
        assert!(queue.try_push(2, 0).is_ok());
        assert!(matches!(queue.try_push(3, 0), Err(Refused::Full(3))));
        assert_eq!(queue.try_pop(), Some(1));
        assert!(queue.try_push(3, 0).is_ok());
        assert_eq!(queue.try_pop(), Some(2));
        assert_eq!(queue.try_pop(), Some(3));
        assert_eq!(queue.try_pop(), None);
    }

    #[test]
    fn a_queue_that_empties_after_a_burst_gives_its_memory_back() {
        let queue = OutboundQueue::new(1000, usize::MAX);
        for i in 0..500 {
            assert!(queue.try_push(i, 0).is_ok());
        }
        while queue.try_pop().is_some() {}
        assert_eq!(queue.lock().capacity(), 0);
    }

    #[test]
    fn closed_refuses_and_drops_what_was_queued() {
        let queue = OutboundQueue::new(4, usize::MAX);
        let item = Arc::new(());
        assert!(queue.try_push(item.clone(), 0).is_ok());
        queue.close();
        assert!(queue.is_closed());
        assert_eq!(Arc::strong_count(&item), 1, "the queued item was dropped");
        assert!(matches!(queue.try_push(item, 0), Err(Refused::Closed(_))));
    }

    /// Issue 12: bounded in bytes as well as in items; an item larger than the whole budget
    /// gets into an empty queue only.
    #[test]
    fn bounded_in_bytes_too() {
        let queue = OutboundQueue::new(8, 1000);
        assert!(queue.try_push("a", 400).is_ok());
        assert!(queue.try_push("b", 400).is_ok());
        assert!(matches!(queue.try_push("c", 400), Err(Refused::Full("c"))));
        // Small items cost one slot (1000 / 8 = 125 bytes): 200 bytes left fit one more.
        assert!(queue.try_push("d", 1).is_ok());
        assert!(matches!(queue.try_push("e", 1), Err(Refused::Full("e"))));
        assert_eq!(queue.try_pop(), Some("a"));
        assert!(queue.try_push("c", 400).is_ok());
        while queue.try_pop().is_some() {}
        assert!(queue.try_push("huge", 1 << 30).is_ok());
        assert!(matches!(queue.try_push("f", 0), Err(Refused::Full("f"))));
        assert_eq!(queue.try_pop(), Some("huge"));
        assert!(queue.try_push("f", 0).is_ok());
    }

    /// The next item, waiting for it as the connection task does; `None` once closed.
    async fn pop<T>(queue: &OutboundQueue<T>) -> Option<T> {
        std::future::poll_fn(|cx| {
            queue.poll_task(cx, || match queue.try_pop() {
                Some(item) => Some(Some(item)),
                None => queue.is_closed().then_some(None),
            })
        })
        .await
    }

    #[tokio::test]
    async fn a_waiting_push_gets_in_when_room_frees_and_pop_wakes_on_arrival() {
        let queue = Arc::new(OutboundQueue::new(1, usize::MAX));
        assert!(queue.try_push(1, 0).is_ok());
        let pusher = tokio::spawn({
            let queue = queue.clone();
            async move { queue.push(2, 0).await }
        });
        assert_eq!(pop(&queue).await, Some(1));
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), pop(&queue)).await,
            Ok(Some(2))
        );
        assert!(pusher.await.unwrap().is_ok());
        // Polled once, so it is registered and waiting, then the queue is closed.
        let mut waiting = std::pin::pin!(pop(&queue));
        let first = std::future::poll_fn(|cx| Poll::Ready(waiting.as_mut().poll(cx))).await;
        assert_eq!(first, Poll::Pending);
        queue.close();
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), waiting).await,
            Ok(None),
            "a closed queue ends the wait"
        );
    }
}
