//! App-wide admission control for WebSocket routes (`WS_MAX_CONNECTIONS`,
//! `WS_MAX_CONNECTIONS_PER_IP`), and the layer that answers HTTP handler panics with 500.
//!
//! A request to a WebSocket route takes a [`Ticket`] before the upgrader runs; over a limit it
//! is refused with 503 and `Retry-After` through the upgrader's `reject`, so no socket is ever
//! made. The ticket rides in the request's extensions, which the connection keeps for its
//! whole life: the place is given back when the connection (or a refused request) is gone.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex, MutexGuard},
};

use axum::{
    extract::{ConnectInfo, MatchedPath, Request},
    middleware::Next,
    response::{IntoResponse as _, Response},
};
use futures_util::FutureExt as _;
use http::{HeaderValue, StatusCode, header::RETRY_AFTER};
use ws_upgrader::{RejectionKind, UpgradeRejection, WsUpgrader};

use crate::Error;

/// `Retry-After` of a refusal for too many connections, in seconds: places free up as
/// connections end, so a client should come back soon but not at once.
pub(crate) const RETRY_AFTER_SECONDS: &str = "5";

/// The open WebSocket connections of the app, in total and per client address.
#[derive(Debug)]
pub(crate) struct Admission {
    max: usize,
    per_ip: Option<usize>,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    /// Only addresses with a connection open: the map never outgrows the connections.
    by_ip: HashMap<IpAddr, usize>,
}

/// A place taken under the limits; cloneable (request extensions need it), given back when
/// the last clone goes.
#[derive(Debug, Clone)]
pub(crate) struct Ticket(#[allow(dead_code, reason = "held for its Drop")] Arc<Place>);

#[derive(Debug)]
struct Place {
    admission: Arc<Admission>,
    ip: Option<IpAddr>,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut open = self.admission.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(ip) = self.ip
            && let Some(count) = open.by_ip.get_mut(&ip)
        {
            *count -= 1;
            if *count == 0 {
                open.by_ip.remove(&ip);
            }
        }
    }
}

impl Admission {
    pub(crate) fn new(max: usize, per_ip: Option<usize>) -> Arc<Self> {
        Arc::new(Admission {
            max,
            per_ip,
            open: Mutex::new(Open::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Open> {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A place for one more connection from `ip`, or why there is none.
    fn admit(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<Ticket, String> {
        let mut open = self.lock();
        if open.total >= self.max {
            return Err(format!(
                "too many connections: the server allows {} at once; try again later",
                self.max
            ));
        }
        if let (Some(per_ip), Some(ip)) = (self.per_ip, ip) {
            let count = open.by_ip.entry(ip).or_insert(0);
            if *count >= per_ip {
                return Err(format!(
                    "too many connections from your address: {per_ip} allowed at once; try again later"
                ));
            }
            *count += 1;
        }
        open.total += 1;
        drop(open);
        Ok(Ticket(Arc::new(Place {
            admission: self.clone(),
            ip,
        })))
    }
}

/// The middleware of every WebSocket route: take a place or refuse with 503.
pub(crate) async fn admit(
    admission: Arc<Admission>,
    upgrader: WsUpgrader,
    mut request: Request,
    next: Next,
) -> Response {
    let ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip());
    match admission.admit(ip) {
        Ok(ticket) => {
            request.extensions_mut().insert(ticket);
            next.run(request).await
        }
        Err(reason) => {
            let route = request
                .extensions()
                .get::<MatchedPath>()
                .map_or("unmatched", MatchedPath::as_str);
            ::metrics::counter!(
                "ws_upgrade_failures_total",
                "route" => route.to_owned(),
                "reason" => "overloaded"
            )
            .increment(1);
            tracing::warn!(route, peer = ?ip, %reason, "WebSocket upgrade refused");
            let mut refusal =
                upgrader.reject(&UpgradeRejection::new(RejectionKind::Overloaded, reason));
            refusal
                .headers_mut()
                .entry(RETRY_AFTER)
                .or_insert(HeaderValue::from_static(RETRY_AFTER_SECONDS));
            refusal
        }
    }
}

/// Answers a panicking handler with 500 in GoFr's error envelope instead of dropping the
/// connection; the panic is logged.
pub(crate) async fn catch_panic(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    match AssertUnwindSafe(next.run(request)).catch_unwind().await {
        Ok(response) => response,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic".to_owned());
            tracing::error!(%method, route = %path, panic = %what, "HTTP handler panicked");
            Error::new(StatusCode::INTERNAL_SERVER_ERROR, "internal server error").into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_given_back_when_the_last_clone_goes() {
        let admission = Admission::new(2, Some(1));
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let first = admission.admit(Some(a)).unwrap();
        assert!(admission.admit(Some(a)).is_err(), "per-IP limit");
        let second = admission.admit(Some(b)).unwrap();
        assert!(admission.admit(None).is_err(), "app-wide limit");
        let clone = first.clone();
        drop(first);
        assert!(
            admission.admit(Some(a)).is_err(),
            "a clone still holds the place"
        );
        drop(clone);
        let again = admission.admit(Some(a)).unwrap();
        drop((second, again));
        assert_eq!(admission.lock().total, 0);
        assert!(admission.lock().by_ip.is_empty());
    }
}
