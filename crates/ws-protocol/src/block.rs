//! Small payloads cut from a per-thread block.
//!
//! A message of a few dozen bytes would otherwise cost two allocations: its own buffer, and the
//! shared header `bytes` allocates the first time the payload is cloned (binding a message, a
//! broadcast, a reply). Cut from a block, its buffer is a slice of memory the thread already
//! has, and a clone is a reference count. The price: a payload kept after its message was
//! handled keeps its whole block ([`BLOCK_SIZE`]) alive; that is why only payloads of at most
//! [`SMALL_PAYLOAD_MAX`] bytes are cut this way, so a block holds at least 16 of them.

use std::cell::RefCell;

use bytes::{Bytes, BytesMut};

use crate::{SMALL_PAYLOAD_MAX, mask::apply_mask};

/// A block's size: what one kept small payload can hold alive at most.
const BLOCK_SIZE: usize = 4096;

thread_local! {
    /// What is left of this thread's current block (none before the thread's first small
    /// payload); payloads already cut from it hold the rest, and the block is freed with the
    /// last of them. Initialized as a constant: no lazy-initialization check per payload.
    static BLOCK: RefCell<Option<BytesMut>> = const { RefCell::new(None) };
}

/// `payload` (at most [`SMALL_PAYLOAD_MAX`] bytes), unmasked with `mask`, in the thread's block.
pub(crate) fn small_payload(payload: &[u8], mask: Option<[u8; 4]>) -> Bytes {
    debug_assert!(payload.len() <= SMALL_PAYLOAD_MAX);
    if payload.is_empty() {
        return Bytes::new();
    }
    BLOCK.with(|cell| match cell.try_borrow_mut() {
        Ok(mut block) => {
            let block = match &mut *block {
                Some(block) if block.capacity() >= payload.len() => block,
                spent => spent.insert(BytesMut::with_capacity(BLOCK_SIZE)),
            };
            cut(block, payload, mask)
        }
        // Only if a read ever ran inside another on this thread.
        Err(_) => cut(&mut BytesMut::with_capacity(payload.len()), payload, mask),
    })
}

/// Appends `payload` to the (empty) `block`, unmasks it there and splits it off.
fn cut(block: &mut BytesMut, payload: &[u8], mask: Option<[u8; 4]>) -> Bytes {
    block.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut block[..], key, 0);
    }
    block.split().freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Message;

    #[test]
    fn payloads_share_a_block_until_it_is_full_and_outlive_it() {
        BLOCK.with(|block| *block.borrow_mut() = None);
        let first = small_payload(b"abc", None);
        let second = small_payload(b"def", Some([1, 2, 3, 4]));
        assert_eq!(&first[..], b"abc");
        assert_eq!(&second[..], &[b'd' ^ 1, b'e' ^ 2, b'f' ^ 3]);
        // The second starts where the first ends: one block.
        assert_eq!(first.as_ptr().wrapping_add(3), second.as_ptr());

        // Fill the block: the next payload starts a new one; the old one lives on in `kept`.
        let kept: Vec<Bytes> = (0..BLOCK_SIZE / SMALL_PAYLOAD_MAX + 1)
            .map(|i| small_payload(&[i as u8; SMALL_PAYLOAD_MAX], None))
            .collect();
        drop(small_payload(b"x", None));
        assert_eq!(&first[..], b"abc");
        for (i, payload) in kept.iter().enumerate() {
            assert_eq!(&payload[..], &[i as u8; SMALL_PAYLOAD_MAX][..]);
        }
        let clone = second.clone();
        assert_eq!(clone.as_ptr(), second.as_ptr(), "a clone shares the bytes");
    }

    /// What is kept (by `detach`, and so in a prepared message) has its own bytes when small.
    #[test]
    fn detached_and_prepared_small_payloads_leave_their_block() {
        // A fresh block: `read` is at its start, so the block is `BLOCK_SIZE` bytes from there.
        BLOCK.with(|block| *block.borrow_mut() = None);
        let read = small_payload(b"kept for long", None);
        let block = read.as_ptr() as usize;
        let within = |message: &Message| {
            let at = message.payload().as_ptr() as usize;
            (block..block + BLOCK_SIZE).contains(&at)
        };
        let message = Message::Binary(read.clone());
        assert!(within(&message));
        assert!(!within(&message.clone().detach()));
        let prepared = crate::PreparedMessage::new(message);
        assert!(!within(prepared.message()));
        assert_eq!(prepared.message().payload(), read);

        let large = Bytes::from(vec![1; SMALL_PAYLOAD_MAX + 1]);
        let kept = Message::Binary(large.clone()).detach();
        assert_eq!(
            kept.payload().as_ptr(),
            large.as_ptr(),
            "a large payload is not copied"
        );
    }

    #[test]
    fn an_empty_payload_takes_nothing_from_the_block() {
        assert!(small_payload(b"", Some([9; 4])).is_empty());
    }
}
