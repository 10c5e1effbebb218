//! Errors: what can go wrong reading frames ([`ProtocolError`], each with the close code that
//! answers it) and sending them ([`SendError`]).

use ws_message::close_code;

/// Why the peer's bytes cannot be accepted. Every variant maps to the close code that
/// [`Connection::fail`](crate::Connection::fail) sends for it ([`ProtocolError::close_code`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A message (fragments together, or inflated) is larger than
    /// [`Config::max_message_size`](crate::Config::max_message_size). Close code 1009.
    #[error("message larger than the limit of {limit} bytes")]
    MessageTooBig {
        /// The limit that was crossed.
        limit: usize,
    },
    /// A frame declares a payload larger than
    /// [`Config::max_frame_size`](crate::Config::max_frame_size). Close code 1009.
    #[error("frame larger than the limit of {limit} bytes")]
    FrameTooBig {
        /// The limit that was crossed.
        limit: usize,
    },
    /// A text message is not valid UTF-8 (found at the fragment that breaks it). Close code 1007.
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
    /// A close frame carries a code a peer may not send (1004, 1005, 1006, 1015, unassigned
    /// ones below 3000, or 5000 and up). Close code 1002.
    #[error("close code {0} may not be sent by a peer")]
    BadCloseCode(u16),
    /// A close frame's reason is not valid UTF-8. Close code 1007.
    #[error("close reason is not valid UTF-8")]
    BadClosePayload,
    /// A framing rule of RFC 6455 is broken (reserved opcode or RSV bit, masking, fragmented or
    /// oversized control frame, continuation without a message, ...). Close code 1002.
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// A compressed message does not inflate (RFC 7692). Close code 1007.
    #[error("compressed message is corrupt: {0}")]
    Inflate(String),
    /// Keeping this unfinished message would exceed the process-wide
    /// [`InboundBudget`](crate::InboundBudget). Close code 1013 (try again later).
    #[error("the process-wide budget for unfinished inbound messages is exhausted")]
    BudgetExhausted,
}

impl ProtocolError {
    /// The close code to send the peer for this error.
    pub fn close_code(&self) -> u16 {
        match self {
            ProtocolError::MessageTooBig { .. } | ProtocolError::FrameTooBig { .. } => {
                close_code::TOO_BIG
            }
            ProtocolError::InvalidUtf8
            | ProtocolError::BadClosePayload
            | ProtocolError::Inflate(_) => close_code::INVALID_PAYLOAD,
            ProtocolError::BadCloseCode(_) | ProtocolError::Protocol(_) => {
                close_code::PROTOCOL_ERROR
            }
            ProtocolError::BudgetExhausted => close_code::TRY_AGAIN_LATER,
        }
    }
}

/// Why a message could not be queued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// Our close frame is already queued: RFC 6455 allows no frame after it.
    #[error("the connection is closing: our close frame is already queued")]
    Closed,
    /// The compressor failed (it does not for valid input; kept for completeness).
    #[error("compression failed: {0}")]
    Compress(String),
    /// A ping, pong or close payload is longer than the 125 bytes a control frame can carry.
    #[error("control frame payload of {0} bytes is longer than 125")]
    ControlTooLong(usize),
}
