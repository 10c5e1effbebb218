//! Shared pieces of the benchmark programs run by `cargo xtask bench`: every server binds
//! 127.0.0.1 with a port the OS picks and prints `listening on ADDR` for xtask to read back.
//! (xtask also raises each process's open-file limit, so that 10,000 connections fit.)

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

/// The S4 payload: about 200 bytes of JSON, the shape of a typical event. The S4 server binds
/// it and the criterion benches decode and encode it, so both measure the same work.
#[derive(Debug, Serialize, Deserialize)]
pub struct Event {
    /// Event id.
    pub id: u64,
    /// Event kind, such as `order.created`.
    pub kind: String,
    /// Who caused it.
    pub user: String,
    /// Labels.
    pub tags: Vec<String>,
    /// A number.
    pub score: f64,
    /// A flag.
    pub active: bool,
    /// Free text.
    pub note: String,
}

/// Binds 127.0.0.1 with a port the OS picks and prints the address on stdout, which is how
/// xtask learns where to connect.
pub async fn listen() -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    announce(addr);
    Ok((listener, addr))
}

/// Prints the line xtask waits for (Rust's stdout is line-buffered, so it leaves at once).
pub fn announce(addr: SocketAddr) {
    println!("listening on {addr}");
}
