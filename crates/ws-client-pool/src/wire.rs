//! The bytes under the WebSocket engine: which messages may have left the process.
//!
//! When a connection dies, a message handed to tokio-tungstenite may be anywhere: whole in the
//! engine's write buffer, whole in rustls's buffer (`wss://`), partly written, or wholly in
//! the kernel's send buffer. Only bytes the kernel accepted can have reached the service; a
//! message none of whose bytes the kernel took can be sent again on the next connection
//! without any risk of a duplicate. Two thin wrappers measure this, sharing one [`Ledger`]:
//!
//! ```text
//! WebSocketStream ── Tap ── [TLS] ── Counted ── TcpStream
//!                     │                 │
//!                     │                 '── bytes the kernel accepted
//!                     '── where each data message starts in the engine's byte stream
//! ```
//!
//! - [`Counted`] sits right on the `TcpStream` (under TLS, if any) and counts the bytes the
//!   kernel accepted.
//! - [`Tap`] sits right under the engine (over TLS, if any), follows the frame headers in the
//!   bytes the engine writes, and records the offset of each text or binary frame's first
//!   byte (the engine never fragments what it sends, so one data frame is one message).
//!
//! A data message *may have left* once the kernel has accepted more bytes than the offset of
//! its first byte. Over plain TCP both wrappers see the same bytes and the answer is exact.
//! Under TLS the kernel counts ciphertext, which is never shorter than the plaintext it
//! carries, so the answer errs only towards "may have left" (by the TLS framing of what is in
//! flight, about 22 bytes per 16 KiB record): a message is never sent twice.
//!
//! Counting starts when the handshake is over ([`Ledger::start`]), so offsets are those of the
//! connection's frames.

use std::{
    collections::VecDeque,
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What one connection's wrappers measured; shared by [`Tap`], [`Counted`] and the task.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Off during the handshake, whose bytes are not frames.
    active: bool,
    /// Bytes the kernel accepted since [`Ledger::start`].
    kernel: u64,
    /// Bytes the engine wrote (accepted by the layer under it) since then.
    written: u64,
    /// Where the frame being written stands.
    cursor: Cursor,
    /// Offsets of data frames' first bytes that the kernel may not have accepted yet.
    pending: VecDeque<u64>,
    /// Data messages of which the kernel accepted at least one byte.
    left: u64,
}

/// Position inside the frame the engine is writing.
#[derive(Debug)]
enum Cursor {
    /// In a header: its bytes so far (a header is at most 2 + 8 + 4 bytes).
    Header { bytes: [u8; 14], have: usize },
    /// In a payload: bytes still to come.
    Payload(u64),
}

impl Default for Cursor {
    fn default() -> Self {
        Cursor::Header {
            bytes: [0; 14],
            have: 0,
        }
    }
}

/// The payload length, once `header` holds a whole frame header.
fn payload_len(header: &[u8]) -> Option<u64> {
    let second = *header.get(1)?;
    let short = second & 0x7F;
    let extended = match short {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    if header.len() < 2 + extended + mask {
        return None;
    }
    let length = match extended {
        2 => u64::from(u16::from_be_bytes([header[2], header[3]])),
        8 => u64::from_be_bytes([
            header[2], header[3], header[4], header[5], header[6], header[7], header[8], header[9],
        ]),
        _ => u64::from(short),
    };
    Some(length)
}

impl State {
    /// The engine's layer below accepted `bytes`: follow the frames through them.
    fn wrote(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match &mut self.cursor {
                Cursor::Payload(rest) => {
                    let n = (*rest).min(bytes.len() as u64);
                    *rest -= n;
                    self.written += n;
                    // `n` is at most `bytes.len()`.
                    bytes = &bytes[n as usize..];
                    if *rest == 0 {
                        self.cursor = Cursor::default();
                    }
                }
                Cursor::Header {
                    bytes: header,
                    have,
                } => {
                    let byte = bytes[0];
                    // Opcode 1 (text) or 2 (binary): a data message starts here.
                    if *have == 0 && matches!(byte & 0x0F, 0x1 | 0x2) {
                        self.pending.push_back(self.written);
                    }
                    header[*have] = byte;
                    *have += 1;
                    self.written += 1;
                    bytes = &bytes[1..];
                    if let Some(length) = payload_len(&header[..*have]) {
                        self.cursor = if length == 0 {
                            Cursor::default()
                        } else {
                            Cursor::Payload(length)
                        };
                    }
                }
            }
        }
        self.settle();
    }

    /// The kernel accepted `n` more bytes.
    fn accepted(&mut self, n: usize) {
        self.kernel += n as u64;
        self.settle();
    }

    fn settle(&mut self) {
        while self
            .pending
            .front()
            .is_some_and(|&start| start < self.kernel)
        {
            self.pending.pop_front();
            self.left += 1;
        }
    }
}

impl Ledger {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Only plain arithmetic runs under the lock; a poisoned one still holds whole counts.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The handshake is over: count from here.
    pub(crate) fn start(&self) {
        *self.lock() = State {
            active: true,
            ..State::default()
        };
    }

    /// Data messages of which the kernel accepted at least one byte: those that may have
    /// reached the service. Every later one is still in the process.
    pub(crate) fn left(&self) -> u64 {
        self.lock().left
    }

    fn wrote(&self, bytes: &[u8]) {
        let mut state = self.lock();
        if state.active {
            state.wrote(bytes);
        }
    }

    fn accepted(&self, n: usize) {
        let mut state = self.lock();
        if state.active {
            state.accepted(n);
        }
    }
}

/// The `TcpStream`, counting the bytes the kernel accepts.
#[derive(Debug)]
pub(crate) struct Counted<S> {
    inner: S,
    ledger: Arc<Ledger>,
}

impl<S> Counted<S> {
    pub(crate) fn new(inner: S, ledger: Arc<Ledger>) -> Self {
        Counted { inner, ledger }
    }
}

/// Under the engine, following the frames it writes.
#[derive(Debug)]
pub(crate) struct Tap<S> {
    inner: S,
    ledger: Arc<Ledger>,
}

impl<S> Tap<S> {
    pub(crate) fn new(inner: S, ledger: Arc<Ledger>) -> Self {
        Tap { inner, ledger }
    }
}

macro_rules! delegate_read {
    ($wrapper:ident) => {
        impl<S: AsyncRead + Unpin> AsyncRead for $wrapper<S> {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
            }
        }
    };
}

delegate_read!(Counted);
delegate_read!(Tap);

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result {
            this.ledger.accepted(n);
        }
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = result {
            this.ledger.accepted(n);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Writes one buffer at a time (the engine writes one contiguous buffer anyway), so that the
/// accepted bytes are known exactly.
impl<S: AsyncWrite + Unpin> AsyncWrite for Tap<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result {
            this.ledger.wrote(&buf[..n.min(buf.len())]);
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: FIN, opcode, masked, with a payload of `len` zero bytes.
    fn frame(opcode: u8, len: usize) -> Vec<u8> {
        let mut bytes = vec![0x80 | opcode];
        match len {
            0..=125 => bytes.push(0x80 | len as u8),
            126..=65535 => {
                bytes.push(0x80 | 126);
                bytes.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                bytes.push(0x80 | 127);
                bytes.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        bytes.extend_from_slice(&[1, 2, 3, 4]);
        bytes.resize(bytes.len() + len, 0);
        bytes
    }

    #[test]
    fn a_message_has_left_once_the_kernel_took_its_first_byte() {
        let ledger = Ledger::default();
        ledger.wrote(&frame(0x1, 10)); // handshake bytes are not counted
        ledger.accepted(100);
        ledger.start();
        // Text of 10, ping of 8, binary of 300, binary of 70 000, text of 0.
        let stream: Vec<u8> = [
            frame(0x1, 10),
            frame(0x9, 8),
            frame(0x2, 300),
            frame(0x2, 70_000),
            frame(0x1, 0),
        ]
        .concat();
        let last = 30 + 308 + 70_014;
        let starts = [0, 30, 338, last];
        // The engine writes in odd pieces; the kernel lags behind.
        for piece in stream.chunks(7) {
            ledger.wrote(piece);
        }
        assert_eq!(ledger.left(), 0);
        for (kernel, left) in [
            (1, 1),
            (16, 1),
            (17, 1),
            (30, 1),
            (31, 2),
            (338, 2),
            (339, 3),
            (last, 3),
            (last + 1, 4),
        ] {
            let already = ledger.lock().kernel as usize;
            ledger.accepted(kernel - already);
            assert_eq!(
                ledger.left(),
                left,
                "kernel took {kernel} bytes; starts {starts:?}"
            );
        }
    }
}
