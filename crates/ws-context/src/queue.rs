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
/// added to an idle connection (`cargo xtask bench`, S5).
pub(crate) struct OutboundQueue<T> {
    items: Mutex<VecDeque<T>>,
    /// One permit per free slot; closed once the connection task takes no more items.
    room: Semaphore,
    capacity: usize,
    /// The connection task, woken when an item arrives.
    task: AtomicWaker,
}

/// Why an item was not queued; the item comes back.
pub(crate) enum Refused<T> {
    Full(T),
    Closed(T),
}

impl<T> OutboundQueue<T> {
    pub(crate) fn new(capacity: usize) -> Self {
        OutboundQueue {
            items: Mutex::new(VecDeque::new()),
            room: Semaphore::new(capacity),
            capacity,
            task: AtomicWaker::new(),
        }
    }

    /// Queues `item` if there is room now.
    pub(crate) fn try_push(&self, item: T) -> Result<(), Refused<T>> {
        match self.room.try_acquire() {
            Ok(permit) => {
                permit.forget();
                self.insert(item);
                Ok(())
            }
            Err(TryAcquireError::NoPermits) => Err(Refused::Full(item)),
            Err(TryAcquireError::Closed) => Err(Refused::Closed(item)),
        }
    }

    /// Queues `item` once there is room; gives it back if the queue is closed first.
    ///
    /// Cancel safe: when dropped, nothing was queued.
    pub(crate) async fn push(&self, item: T) -> Result<(), T> {
        match self.room.acquire().await {
            Ok(permit) => {
                permit.forget();
                self.insert(item);
                Ok(())
            }
            Err(_) => Err(item),
        }
    }

    fn insert(&self, item: T) {
        self.lock().push_back(item);
        self.task.wake();
    }

    /// True once the connection task takes no more items.
    pub(crate) fn is_closed(&self) -> bool {
        self.room.is_closed()
    }

    /// The next item, if one is queued. An empty queue is seen from its free room (one
    /// atomic load), without the lock.
    pub(crate) fn try_pop(&self) -> Option<T> {
        if self.room.available_permits() == self.capacity {
            return None;
        }
        let mut items = self.lock();
        let item = items.pop_front()?;
        if items.is_empty() && items.capacity() > KEPT_SLOTS {
            *items = VecDeque::new();
        }
        drop(items);
        self.room.add_permits(1);
        Some(item)
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

    fn lock(&self) -> MutexGuard<'_, VecDeque<T>> {
        self.items.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;

    #[test]
    fn bounded_in_order_and_empty_without_memory() {
        let queue = OutboundQueue::new(2);
        assert!(queue.try_pop().is_none());
        assert!(queue.try_push(1).is_ok());
        assert!(queue.try_push(2).is_ok());
        assert!(matches!(queue.try_push(3), Err(Refused::Full(3))));
        assert_eq!(queue.try_pop(), Some(1));
        assert!(queue.try_push(3).is_ok());
        assert_eq!(queue.try_pop(), Some(2));
        assert_eq!(queue.try_pop(), Some(3));
        assert_eq!(queue.try_pop(), None);
    }

    #[test]
    fn a_queue_that_empties_after_a_burst_gives_its_memory_back() {
        let queue = OutboundQueue::new(1000);
        for i in 0..500 {
            assert!(queue.try_push(i).is_ok());
        }
        while queue.try_pop().is_some() {}
        assert_eq!(queue.lock().capacity(), 0);
    }

    #[test]
    fn closed_refuses_and_drops_what_was_queued() {
        let queue = OutboundQueue::new(4);
        let item = Arc::new(());
        assert!(queue.try_push(item.clone()).is_ok());
        queue.close();
        assert!(queue.is_closed());
        assert_eq!(Arc::strong_count(&item), 1, "the queued item was dropped");
        assert!(matches!(queue.try_push(item), Err(Refused::Closed(_))));
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
        let queue = Arc::new(OutboundQueue::new(1));
        assert!(queue.try_push(1).is_ok());
        let pusher = tokio::spawn({
            let queue = queue.clone();
            async move { queue.push(2).await }
        });
        assert_eq!(pop(&queue).await, Some(1));
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), pop(&queue)).await,
            Ok(Some(2))
        );
        assert!(pusher.await.unwrap().is_ok());
        let waiting = tokio::spawn({
            let queue = queue.clone();
            async move { pop(&queue).await }
        });
        tokio::task::yield_now().await;
        queue.close();
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), waiting)
                .await
                .unwrap()
                .unwrap(),
            None,
            "a closed queue ends the wait"
        );
    }
}
