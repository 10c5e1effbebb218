//! The bytes a connection has to write: [`Output`].

use std::{cell::Cell, collections::VecDeque, io::IoSlice};

use bytes::{Buf, Bytes, BytesMut};

use crate::{MAX_HEADER, mask::apply_mask};

/// Payloads this long or longer are queued by reference (a `Bytes` clone), not copied, when
/// they go out unmasked (server frames).
pub(crate) const BY_REFERENCE: usize = 8 * 1024;

/// The smallest coalescing buffer allocated: room for a few small frames.
const MIN_BUFFER: usize = 512;

/// The largest coalescing buffer kept for reuse ([`SPARE`]).
const SPARE_MAX: usize = 16 * 1024;

thread_local! {
    /// A coalescing buffer an output gave back when it was written out, for the next output on
    /// this thread that needs one: most outputs are written out at once (a reply, a burst), so
    /// one buffer per thread serves them instead of an allocation and a free per write, and an
    /// idle connection still holds none.
    static SPARE: Cell<Option<BytesMut>> = const { Cell::new(None) };
}

/// The bytes a connection has to write, in order.
///
/// Frames are a queue of chunks: headers and small payloads are coalesced in one buffer, so a
/// burst of small frames is one chunk and one write; payloads of 8 KiB and more are kept by
/// reference, not copied, when the role allows it (server frames are unmasked), and so are
/// shared frames (a prepared message's) that find nothing else queued. Read it through
/// [`bytes::Buf`]: [`chunk`](Buf::chunk) / [`chunks_vectored`](Buf::chunks_vectored) for the
/// next bytes, [`advance`](Buf::advance) past what was written.
///
/// Memory: once everything has been taken (it is empty) it holds no allocation.
#[derive(Debug, Default)]
pub struct Output {
    /// Chunks before `tail`, in order.
    queue: VecDeque<Bytes>,
    /// The coalescing buffer, after every chunk of `queue`.
    tail: BytesMut,
    /// Bytes in `queue` and `tail` together.
    len: usize,
}

impl Output {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The number of bytes to write.
    pub fn len(&self) -> usize {
        self.len
    }

    fn reserve_tail(&mut self, additional: usize) {
        if self.tail.capacity() - self.tail.len() < additional {
            if self.tail.capacity() == 0
                && let Some(spare) = SPARE.take()
            {
                self.tail = spare;
            }
            self.tail.reserve(additional.max(MIN_BUFFER));
        }
    }

    /// Queues one frame: `first_byte` (FIN, RSV1, opcode), masked with `mask` when given.
    pub(crate) fn push_frame(&mut self, first_byte: u8, mask: Option<[u8; 4]>, payload: &Bytes) {
        let mut header = [0u8; MAX_HEADER];
        let header_len = encode_header(&mut header, first_byte, mask, payload.len());
        match mask {
            Some(key) => {
                self.reserve_tail(header_len + payload.len());
                self.tail.extend_from_slice(&header[..header_len]);
                let start = self.tail.len();
                self.tail.extend_from_slice(payload);
                apply_mask(&mut self.tail[start..], key, 0);
            }
            None if payload.len() >= BY_REFERENCE => {
                self.reserve_tail(header_len);
                self.tail.extend_from_slice(&header[..header_len]);
                self.queue.push_back(self.tail.split().freeze());
                self.queue.push_back(payload.clone());
            }
            None => {
                self.reserve_tail(header_len + payload.len());
                self.tail.extend_from_slice(&header[..header_len]);
                self.tail.extend_from_slice(payload);
            }
        }
        self.len += header_len + payload.len();
    }

    /// Queues bytes that are already whole frames (a prepared message's): by reference from
    /// 8 KiB or when nothing else is queued, copied otherwise (to coalesce with what is there).
    /// A broadcast reaches most receivers with an empty output: by reference, each costs a
    /// reference count and a chunk in the queue instead of a buffer of the frame's size and a
    /// copy of it (S8, bench/README.md).
    pub(crate) fn push_encoded(&mut self, frames: &Bytes) {
        if frames.len() >= BY_REFERENCE || self.len == 0 {
            if !self.tail.is_empty() {
                self.queue.push_back(self.tail.split().freeze());
            }
            self.queue.push_back(frames.clone());
        } else {
            self.reserve_tail(frames.len());
            self.tail.extend_from_slice(frames);
        }
        self.len += frames.len();
    }
}

/// Keeps a written-out coalescing buffer as the thread's spare, unless it is still shared or
/// larger than [`SPARE_MAX`] (`try_reclaim` makes its whole allocation available again, and
/// fails for a shared one).
fn give_back(mut tail: BytesMut) {
    tail.clear();
    if tail.try_reclaim(MIN_BUFFER) && tail.capacity() <= SPARE_MAX {
        SPARE.set(Some(tail));
    }
}

/// Writes a frame header into `out` and returns its length (2 to 14 bytes).
pub(crate) fn encode_header(
    out: &mut [u8; MAX_HEADER],
    first_byte: u8,
    mask: Option<[u8; 4]>,
    len: usize,
) -> usize {
    out[0] = first_byte;
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut pos = if len < 126 {
        out[1] = mask_bit | len as u8;
        2
    } else if len <= usize::from(u16::MAX) {
        out[1] = mask_bit | 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = mask_bit | 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    if let Some(key) = mask {
        out[pos..pos + 4].copy_from_slice(&key);
        pos += 4;
    }
    pos
}

impl Buf for Output {
    fn remaining(&self) -> usize {
        self.len
    }

    fn chunk(&self) -> &[u8] {
        match self.queue.front() {
            Some(front) => front,
            None => &self.tail,
        }
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.len, "advance past the end of the output");
        self.len -= cnt;
        while cnt > 0 {
            match self.queue.front_mut() {
                Some(front) if cnt >= front.len() => {
                    cnt -= front.len();
                    self.queue.pop_front();
                }
                Some(front) => {
                    front.advance(cnt);
                    cnt = 0;
                }
                None => {
                    self.tail.advance(cnt);
                    cnt = 0;
                }
            }
        }
        if self.len == 0 {
            // Written out: hold no memory while idle.
            self.queue = VecDeque::new();
            give_back(std::mem::take(&mut self.tail));
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for chunk in self
            .queue
            .iter()
            .map(|b| &b[..])
            .chain(std::iter::once(&self.tail[..]))
        {
            if n == dst.len() {
                break;
            }
            if !chunk.is_empty() {
                dst[n] = IoSlice::new(chunk);
                n += 1;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_server_payloads_are_shared_and_the_buffer_is_released() {
        let mut out = Output::default();
        let big = Bytes::from(vec![7u8; BY_REFERENCE]);
        out.push_frame(0x82, None, &Bytes::from_static(b"hi"));
        out.push_frame(0x82, None, &big);
        out.push_frame(0x81, None, &Bytes::from_static(b"yo"));
        assert_eq!(out.len(), 4 + 4 + BY_REFERENCE + 4);
        let mut slices = [IoSlice::new(&[]); 8];
        let n = out.chunks_vectored(&mut slices);
        assert_eq!(n, 3);
        assert_eq!(slices[1].as_ptr(), big.as_ptr(), "payload not copied");
        let all = out.copy_to_bytes(out.remaining());
        assert_eq!(&all[..4], &[0x82, 2, b'h', b'i']);
        assert!(out.is_empty());
        assert_eq!(out.tail.capacity(), 0);
    }

    /// S8: a shared frame (a prepared message's) that finds the output empty is queued by
    /// reference whatever its size; behind other bytes, a small one is copied to coalesce.
    #[test]
    fn shared_frames_are_queued_by_reference_into_an_empty_output() {
        let mut out = Output::default();
        let shared = Bytes::from(vec![0x81; 5 * 1024]);
        out.push_encoded(&shared);
        assert_eq!(out.chunk().as_ptr(), shared.as_ptr(), "frame not copied");
        assert_eq!(out.tail.capacity(), 0, "no buffer allocated for it");
        let small = Bytes::from_static(b"\x81\x02hi");
        out.push_encoded(&small);
        let mut slices = [IoSlice::new(&[]); 4];
        assert_eq!(out.chunks_vectored(&mut slices), 2);
        assert_ne!(
            slices[1].as_ptr(),
            small.as_ptr(),
            "a small frame behind is copied"
        );
        assert_eq!(&slices[1][..], &small[..]);
        out.advance(shared.len() + small.len());
        assert!(out.is_empty());
        assert_eq!(out.queue.capacity(), 0, "nothing kept once written");
    }

    /// A written-out output gives its buffer to the next one on the thread (no allocation per
    /// reply) and keeps none itself; a buffer grown past `SPARE_MAX` is freed instead.
    #[test]
    fn a_written_out_buffer_serves_the_next_output_on_the_thread() {
        let mut first = Output::default();
        first.push_frame(0x81, None, &Bytes::from_static(b"one"));
        let buffer = first.chunk().as_ptr();
        first.advance(first.len());
        assert_eq!(first.tail.capacity(), 0, "an idle output holds no buffer");

        let mut second = Output::default();
        second.push_frame(0x81, None, &Bytes::from_static(b"two"));
        assert_eq!(
            second.chunk().as_ptr(),
            buffer,
            "the same buffer, from its start"
        );
        assert_eq!(second.chunk(), b"\x81\x03two");

        // Grown past the bound: not kept.
        second.push_frame(0x82, Some([1, 2, 3, 4]), &Bytes::from(vec![0; SPARE_MAX]));
        second.advance(second.len());
        let mut third = Output::default();
        third.push_frame(0x81, None, &Bytes::from_static(b"3"));
        assert!(third.tail.capacity() < SPARE_MAX, "a fresh, small buffer");
    }
}
