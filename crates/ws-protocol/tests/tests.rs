//! The integration tests of ws-protocol, one binary.

mod common;
mod direct;
mod errors;
mod fuzz_corpus;
mod properties;
mod rfc;
mod round_trips;
