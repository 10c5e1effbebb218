//! ws-upgrader over real sockets on 127.0.0.1: every option seen on the wire.

mod support;

mod deflate;
mod direct_reads;
mod direct_writes;
mod drained;
mod fuzz_corpus;
mod handshake_timeout;
mod limits;
mod options;
mod serve;
