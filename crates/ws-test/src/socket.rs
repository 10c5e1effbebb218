//! The client's two engines behind one interface: tokio-tungstenite when no compression
//! was agreed (a strict, well-tried peer), and a small frame loop of our own over
//! tungstenite's frame codec when permessage-deflate was (tungstenite rejects frames with
//! RSV1 set). Both answer pings and close frames on their own.

use std::io::Cursor;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        self,
        protocol::{
            CloseFrame as TCloseFrame, Role,
            frame::{
                Frame, FrameHeader,
                coding::{CloseCode, Control, Data, OpCode},
            },
        },
    },
};
use ws_message::{CloseFrame, Message};

use crate::handshake::Opened;

/// The tail every compressed message loses on the wire (RFC 7692, 7.2.1).
const SYNC_TAIL: [u8; 4] = [0, 0, 0xff, 0xff];
/// Largest message the deflate engine accepts, compressed or not: 64 MiB, as tungstenite.
const MAX_MESSAGE: usize = 64 << 20;

pub(crate) enum Socket {
    Plain(Box<WebSocketStream<TcpStream>>),
    Deflate(Box<DeflateSocket>),
}

impl Socket {
    pub(crate) async fn new(opened: Opened) -> Socket {
        if opened.deflate() {
            Socket::Deflate(Box::new(DeflateSocket {
                stream: opened.stream,
                buf: opened.leftover,
                inflater: Decompress::new(false),
                partial: None,
                close_sent: false,
            }))
        } else {
            let ws = WebSocketStream::from_partially_read(
                opened.stream,
                opened.leftover,
                Role::Client,
                None,
            )
            .await;
            Socket::Plain(Box::new(ws))
        }
    }

    /// Drops the connection with a TCP reset (RST) instead of a FIN.
    pub(crate) fn reset(self) {
        let stream = match &self {
            Socket::Plain(ws) => ws.get_ref(),
            Socket::Deflate(socket) => &socket.stream,
        };
        // A zero linger time is what makes the kernel send RST when the socket is dropped.
        let _ = stream.set_zero_linger();
    }

    /// Sends one message (text, binary, ping, pong or close).
    pub(crate) async fn send(&mut self, message: Message) -> Result<(), String> {
        match self {
            Socket::Plain(ws) => ws
                .send(to_tungstenite(message))
                .await
                .map_err(|e| e.to_string()),
            Socket::Deflate(socket) => socket.send(message).await,
        }
    }

    /// The next message, pings and pongs included; `None` once the connection has ended.
    pub(crate) async fn next(&mut self) -> Option<Result<Message, String>> {
        match self {
            Socket::Plain(ws) => loop {
                match ws.next().await? {
                    Ok(tungstenite::Message::Frame(_)) => continue,
                    Ok(message @ tungstenite::Message::Close(_)) => {
                        // tungstenite queues its answer to a close until the next write or
                        // flush: send it now, so the server's closing handshake completes.
                        let _ = ws.flush().await;
                        return Some(from_tungstenite(message));
                    }
                    Ok(message) => return Some(from_tungstenite(message)),
                    Err(tungstenite::Error::ConnectionClosed) => return None,
                    Err(error) => return Some(Err(error.to_string())),
                }
            },
            Socket::Deflate(socket) => socket.next().await,
        }
    }
}

fn to_tungstenite(message: Message) -> tungstenite::Message {
    match message {
        Message::Text(text) => tungstenite::Message::text(text.as_str()),
        Message::Binary(data) => tungstenite::Message::Binary(data),
        Message::Ping(data) => tungstenite::Message::Ping(data),
        Message::Pong(data) => tungstenite::Message::Pong(data),
        Message::Close(frame) => tungstenite::Message::Close(frame.and_then(|frame| {
            let (code, reason) = frame.into_wire()?;
            Some(TCloseFrame {
                code: CloseCode::from(code),
                reason: reason.into(),
            })
        })),
    }
}

fn from_tungstenite(message: tungstenite::Message) -> Result<Message, String> {
    Ok(match message {
        tungstenite::Message::Text(text) => Message::text(text.as_str().to_owned()),
        tungstenite::Message::Binary(data) => Message::Binary(data),
        tungstenite::Message::Ping(data) => Message::Ping(data),
        tungstenite::Message::Pong(data) => Message::Pong(data),
        tungstenite::Message::Close(None) => Message::Close(None),
        tungstenite::Message::Close(Some(frame)) => {
            Message::Close(Some(close_frame(u16::from(frame.code), &frame.reason)?))
        }
        tungstenite::Message::Frame(_) => return Err("unexpected raw frame".to_owned()),
    })
}

fn close_frame(code: u16, reason: &str) -> Result<CloseFrame, String> {
    CloseFrame::new(code, reason)
        .map_err(|e| format!("the server sent a close frame with code {code}: {e}"))
}

/// A message being received in several frames.
struct Partial {
    text: bool,
    compressed: bool,
    data: Vec<u8>,
}

/// The deflate engine: frames read and written with tungstenite's codec, messages inflated
/// with one decompressor for the connection (which also reads a server that resets its
/// context per message) and each outgoing message compressed on its own.
pub(crate) struct DeflateSocket {
    stream: TcpStream,
    buf: Vec<u8>,
    inflater: Decompress,
    partial: Option<Partial>,
    close_sent: bool,
}

impl DeflateSocket {
    async fn send(&mut self, message: Message) -> Result<(), String> {
        let (opcode, payload, compress) = match message {
            Message::Text(text) => (OpCode::Data(Data::Text), text.into_bytes(), true),
            Message::Binary(data) => (OpCode::Data(Data::Binary), data, true),
            Message::Ping(data) => (OpCode::Control(Control::Ping), data, false),
            Message::Pong(data) => (OpCode::Control(Control::Pong), data, false),
            Message::Close(frame) => {
                self.close_sent = true;
                let mut payload = Vec::new();
                if let Some((code, reason)) = frame.and_then(CloseFrame::into_wire) {
                    payload.extend_from_slice(&code.to_be_bytes());
                    payload.extend_from_slice(reason.as_bytes());
                }
                (OpCode::Control(Control::Close), Bytes::from(payload), false)
            }
        };
        let payload = if compress {
            Bytes::from(deflate(&payload)?)
        } else {
            payload
        };
        self.write_frame(opcode, compress, payload).await
    }

    async fn write_frame(
        &mut self,
        opcode: OpCode,
        rsv1: bool,
        payload: Bytes,
    ) -> Result<(), String> {
        let mut mask = [0u8; 4];
        getrandom::fill(&mut mask).map_err(|e| e.to_string())?;
        let header = FrameHeader {
            is_final: true,
            rsv1,
            rsv2: false,
            rsv3: false,
            opcode,
            mask: Some(mask),
        };
        let mut wire = Vec::with_capacity(payload.len() + 14);
        Frame::from_payload(header, payload)
            .format(&mut wire)
            .map_err(|e| e.to_string())?;
        self.stream
            .write_all(&wire)
            .await
            .map_err(|e| e.to_string())
    }

    async fn next(&mut self) -> Option<Result<Message, String>> {
        loop {
            let frame = match self.parse() {
                Ok(Some(frame)) => frame,
                Ok(None) => match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) if self.buf.is_empty() && self.partial.is_none() => return None,
                    Ok(0) => return Some(Err("the connection ended inside a message".to_owned())),
                    Ok(_) => continue,
                    Err(error) => return Some(Err(error.to_string())),
                },
                Err(error) => return Some(Err(error)),
            };
            match self.on_frame(frame).await {
                Ok(Some(message)) => return Some(Ok(message)),
                Ok(None) => continue,
                Err(error) => return Some(Err(error)),
            }
        }
    }

    /// One whole frame from the buffer, if it holds one.
    fn parse(&mut self) -> Result<Option<(FrameHeader, Vec<u8>)>, String> {
        let mut cursor = Cursor::new(&self.buf[..]);
        let Some((header, length)) = FrameHeader::parse(&mut cursor).map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        let length = usize::try_from(length)
            .ok()
            .filter(|l| *l <= MAX_MESSAGE)
            .ok_or("frame too large")?;
        let start = usize::try_from(cursor.position()).map_err(|e| e.to_string())?;
        if self.buf.len() < start + length {
            return Ok(None);
        }
        let payload = self.buf[start..start + length].to_vec();
        self.buf.drain(..start + length);
        if header.mask.is_some() {
            return Err("the server masked a frame".to_owned());
        }
        if header.rsv2 || header.rsv3 {
            return Err("the server set RSV2 or RSV3".to_owned());
        }
        Ok(Some((header, payload)))
    }

    async fn on_frame(
        &mut self,
        (header, payload): (FrameHeader, Vec<u8>),
    ) -> Result<Option<Message>, String> {
        match header.opcode {
            OpCode::Control(control) => {
                if !header.is_final || header.rsv1 {
                    return Err("a fragmented or compressed control frame".to_owned());
                }
                match control {
                    Control::Ping => {
                        let data = Bytes::from(payload);
                        self.write_frame(OpCode::Control(Control::Pong), false, data.clone())
                            .await?;
                        Ok(Some(Message::Ping(data)))
                    }
                    Control::Pong => Ok(Some(Message::Pong(Bytes::from(payload)))),
                    Control::Close => {
                        let frame = match payload.as_slice() {
                            [] => None,
                            [hi, lo, reason @ ..] => {
                                let reason = std::str::from_utf8(reason)
                                    .map_err(|_| "a close reason that is not UTF-8")?;
                                Some(close_frame(u16::from_be_bytes([*hi, *lo]), reason)?)
                            }
                            [_] => return Err("a close frame of one byte".to_owned()),
                        };
                        if !self.close_sent {
                            // Echo the code, as tungstenite does.
                            let echo = frame
                                .as_ref()
                                .map(|f| CloseFrame::new(f.code(), "").map_err(|e| e.to_string()))
                                .transpose()?;
                            self.send(Message::Close(echo)).await?;
                        }
                        Ok(Some(Message::Close(frame)))
                    }
                    _ => Err("a reserved control opcode".to_owned()),
                }
            }
            OpCode::Data(Data::Continue) => {
                let Some(partial) = &mut self.partial else {
                    return Err("a continuation frame outside a message".to_owned());
                };
                if header.rsv1 {
                    return Err("RSV1 on a continuation frame".to_owned());
                }
                partial.data.extend_from_slice(&payload);
                if partial.data.len() > MAX_MESSAGE {
                    return Err("message too large".to_owned());
                }
                if !header.is_final {
                    return Ok(None);
                }
                let partial = self.partial.take().ok_or("no message")?;
                self.finish(partial).map(Some)
            }
            OpCode::Data(data) => {
                if self.partial.is_some() {
                    return Err("a new message inside a fragmented one".to_owned());
                }
                let text = match data {
                    Data::Text => true,
                    Data::Binary => false,
                    _ => return Err("a reserved data opcode".to_owned()),
                };
                let partial = Partial {
                    text,
                    compressed: header.rsv1,
                    data: payload,
                };
                if header.is_final {
                    self.finish(partial).map(Some)
                } else {
                    self.partial = Some(partial);
                    Ok(None)
                }
            }
        }
    }

    fn finish(&mut self, partial: Partial) -> Result<Message, String> {
        let data = if partial.compressed {
            inflate(&mut self.inflater, partial.data)?
        } else {
            partial.data
        };
        if partial.text {
            let text = String::from_utf8(data).map_err(|_| "a text message that is not UTF-8")?;
            Ok(Message::text(text))
        } else {
            Ok(Message::binary(data))
        }
    }
}

/// One message compressed on its own, without its sync-flush tail.
fn deflate(data: &[u8]) -> Result<Vec<u8>, String> {
    let mut compressor = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(data.len() / 2 + 64);
    loop {
        let consumed = usize::try_from(compressor.total_in()).map_err(|e| e.to_string())?;
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(64));
        }
        compressor
            .compress_vec(&data[consumed..], &mut out, FlushCompress::Sync)
            .map_err(|e| e.to_string())?;
        let done = usize::try_from(compressor.total_in()).map_err(|e| e.to_string())? == data.len();
        if done && out.ends_with(&SYNC_TAIL) && out.len() < out.capacity() {
            break;
        }
    }
    out.truncate(out.len() - SYNC_TAIL.len());
    Ok(out)
}

/// One compressed message, its tail put back, inflated with the connection's decompressor.
fn inflate(inflater: &mut Decompress, mut data: Vec<u8>) -> Result<Vec<u8>, String> {
    data.extend_from_slice(&SYNC_TAIL);
    let start_in = inflater.total_in();
    let mut out = Vec::with_capacity(data.len() * 3);
    loop {
        let consumed =
            usize::try_from(inflater.total_in() - start_in).map_err(|e| e.to_string())?;
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity().max(1024));
        }
        let status = inflater
            .decompress_vec(&data[consumed..], &mut out, FlushDecompress::Sync)
            .map_err(|e| format!("a compressed message that does not inflate: {e}"))?;
        if out.len() > MAX_MESSAGE {
            return Err("inflated message too large".to_owned());
        }
        let consumed =
            usize::try_from(inflater.total_in() - start_in).map_err(|e| e.to_string())?;
        if status == Status::StreamEnd {
            return Err("the server ended its deflate stream (BFINAL)".to_owned());
        }
        if consumed == data.len() && out.len() < out.capacity() {
            return Ok(out);
        }
    }
}
