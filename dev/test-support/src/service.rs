//! [`Service`]: a WebSocket service for a client under test (the pool, an app's outbound
//! services) to talk to, recording what it is sent.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    task::{JoinHandle, JoinSet},
};
use tokio_tungstenite::tungstenite::{
    Message,
    handshake::server::{Request, Response},
    protocol::{CloseFrame, frame::coding::CloseCode},
};

use crate::WAIT;

/// What every instance of a service saw, shared across restarts on the same port.
#[derive(Debug, Clone, Default)]
pub struct Log {
    /// Data messages, in the order they were read.
    pub received: Arc<Mutex<Vec<Message>>>,
    /// Close codes the client sent.
    pub close_codes: Arc<Mutex<Vec<u16>>>,
    /// Connections accepted.
    pub connections: Arc<Mutex<usize>>,
    /// The `Authorization` header of each handshake.
    pub authorization: Arc<Mutex<Vec<Option<String>>>>,
}

impl Log {
    /// The text messages received, in order.
    pub fn texts(&self) -> Vec<String> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter_map(|m| m.to_text().ok().map(str::to_owned))
            .collect()
    }

    /// How many data messages were received.
    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}

/// How a connection behaves.
#[derive(Debug, Clone, Copy, Default)]
pub struct Behaviour {
    /// Send every data message back.
    pub echo: bool,
    /// On the first connection only, stop reading after this many messages.
    pub freeze_after: Option<usize>,
}

/// A WebSocket service on 127.0.0.1: records what it receives (and each handshake's
/// `Authorization`), can echo, can be stopped gracefully (close 1001, then read until the
/// client's reply), killed (sockets dropped without a close frame) or frozen (stops reading,
/// as a hung process does).
#[derive(Debug)]
pub struct Service {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it saw.
    pub log: Log,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Drop for Service {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Service {
    /// Starts one on a free loopback port.
    ///
    /// # Panics
    ///
    /// When no port can be bound.
    pub async fn start(behaviour: Behaviour) -> Service {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Service::spawn(listener, Log::default(), behaviour)
    }

    /// Starts again on the same address (or first on an address chosen in advance), keeping
    /// the log.
    ///
    /// # Panics
    ///
    /// When the address cannot be bound.
    pub async fn restart(addr: SocketAddr, log: Log, behaviour: Behaviour) -> Service {
        let listener = TcpListener::bind(addr).await.unwrap();
        Service::spawn(listener, log, behaviour)
    }

    fn spawn(listener: TcpListener, log: Log, behaviour: Behaviour) -> Service {
        let addr = listener.local_addr().unwrap();
        let (stop, stop_rx) = watch::channel(false);
        let task_log = log.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            let mut first = true;
            let mut stop_accept = stop_rx.clone();
            loop {
                tokio::select! {
                    () = stopped(&mut stop_accept) => break,
                    accepted = listener.accept() => {
                        let Ok((tcp, _)) = accepted else { continue };
                        *task_log.connections.lock().unwrap() += 1;
                        let freeze = if first { behaviour.freeze_after } else { None };
                        first = false;
                        connections.spawn(serve(tcp, task_log.clone(), stop_rx.clone(), behaviour.echo, freeze));
                    }
                }
            }
            drop(listener);
            // Graceful: every connection finishes its closing handshake.
            while connections.join_next().await.is_some() {}
        });
        Service {
            addr,
            log,
            stop,
            task,
        }
    }

    /// `ws://<addr>/ws` (it answers any path).
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Close 1001 to every client, read until their replies, stop listening.
    ///
    /// # Panics
    ///
    /// When that takes longer than [`WAIT`].
    pub async fn stop_gracefully(mut self) {
        self.stop.send_replace(true);
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("service did not stop")
            .unwrap();
    }

    /// Drops every socket at once, without a close frame.
    pub async fn kill(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

#[allow(
    clippy::result_large_err,
    reason = "the handshake callback's signature is tungstenite's"
)]
async fn serve(
    tcp: TcpStream,
    log: Log,
    mut stop: watch::Receiver<bool>,
    echo: bool,
    freeze_after: Option<usize>,
) {
    let headers = log.authorization.clone();
    let callback = move |request: &Request, response: Response| {
        let value = request.headers().get("authorization");
        headers
            .lock()
            .unwrap()
            .push(value.and_then(|v| v.to_str().ok()).map(str::to_owned));
        Ok(response)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
        return;
    };
    let mut read = 0usize;
    loop {
        tokio::select! {
            () = stopped(&mut stop) => {
                let frame = CloseFrame { code: CloseCode::Away, reason: "restarting".into() };
                let _ = ws.close(Some(frame)).await;
                // Data sent before the client saw our close is still read.
                while let Ok(Some(Ok(message))) = tokio::time::timeout(WAIT, ws.next()).await {
                    record(&log, message);
                }
                return;
            }
            message = ws.next() => match message {
                Some(Ok(message)) => {
                    let data = message.is_text() || message.is_binary();
                    record(&log, message.clone());
                    if data {
                        read += 1;
                        if echo {
                            let _ = ws.send(message).await;
                        }
                        if freeze_after == Some(read) {
                            // Hung: holds the socket, never reads or answers again.
                            std::future::pending::<()>().await;
                        }
                    }
                }
                _ => return,
            }
        }
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn record(log: &Log, message: Message) {
    match message {
        Message::Text(_) | Message::Binary(_) => log.received.lock().unwrap().push(message),
        Message::Close(frame) => log
            .close_codes
            .lock()
            .unwrap()
            .push(frame.map_or(1005, |f| f.code.into())),
        _ => {}
    }
}
