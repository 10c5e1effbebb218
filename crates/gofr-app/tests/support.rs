use std::{net::SocketAddr, time::Duration};

use gofr_app::{App, Config, ShutdownHandle};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
    task::JoinHandle,
};

pub(crate) const WAIT: Duration = Duration::from_secs(5);

/// A test configuration: loopback, quick shutdown.
pub(crate) fn config() -> Config {
    let vars = [
        ("HTTP_HOST".to_owned(), "127.0.0.1".to_owned()),
        ("METRICS_PORT".to_owned(), "0".to_owned()),
        ("SHUTDOWN_GRACE_PERIOD".to_owned(), "1s".to_owned()),
    ]
    .into();
    Config::from_vars(&vars).unwrap()
}

pub(crate) struct Served {
    pub(crate) addr: SocketAddr,
    pub(crate) shutdown: ShutdownHandle,
    pub(crate) task: JoinHandle<Result<(), gofr_app::AppError>>,
}

/// Binds 127.0.0.1:0 first, then serves the app on it.
pub(crate) async fn serve(app: App) -> Served {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = app.shutdown_handle();
    let task = tokio::spawn(app.serve(listener));
    Served {
        addr,
        shutdown,
        task,
    }
}

/// One HTTP/1.1 request over a fresh connection; returns status and body.
pub(crate) async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Waits, bounded, until `check` holds.
pub(crate) async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
