//! `/.well-known/alive` and `/.well-known/health`, as GoFr serves them.

use axum::{Router, routing::get};
use ws_client_pool::{ServiceState, WsClientPool};
use ws_context::{BackplaneStatus, ConnectionHub};

use crate::{Config, app::data};

pub(crate) fn routes(config: &Config, hub: ConnectionHub, services: WsClientPool) -> Router {
    let name = config.app_name.clone();
    Router::new()
        .route(
            "/.well-known/alive",
            get(|| async { data(serde_json::json!({ "status": "UP" })) }),
        )
        .route(
            "/.well-known/health",
            get(move || {
                let name = name.clone();
                let connections = hub.len();
                let (mut status, services) = service_health(&services);
                let mut health = serde_json::json!({
                    "name": name,
                    "websocket": { "connections": connections },
                    "services": services,
                });
                let backplane = hub.backplane_status();
                if backplane != BackplaneStatus::Standalone {
                    // Without the other instances the app still serves its own connections.
                    let up = backplane == BackplaneStatus::Up;
                    if !up {
                        status = "DEGRADED";
                    }
                    health["cluster"] = serde_json::json!({
                        "status": if up { "UP" } else { "DOWN" },
                        "nodes": hub.nodes().iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                    });
                }
                health["status"] = status.into();
                async move { data(health) }
            }),
        )
}

/// Each outbound service's state and last error. A service that is not connected makes the
/// app DEGRADED, not DOWN: the app still serves, and messages for it are queued.
fn service_health(services: &WsClientPool) -> (&'static str, serde_json::Value) {
    let mut status = "UP";
    let mut details = serde_json::Map::new();
    for service in services.statuses() {
        if service.state != ServiceState::Connected {
            status = "DEGRADED";
        }
        details.insert(
            service.name.clone(),
            serde_json::json!({
                "status": service.state.as_str(),
                "url": redact_url(&service.url),
                "error": service.last_error.map(|(_, error)| error),
                "queued": service.queued,
                "reconnects": service.reconnects,
                "possibly_lost": service.possibly_lost,
            }),
        );
    }
    (status, serde_json::Value::Object(details))
}

/// A URL fit to show: no user name or password, no query (tokens often ride there), no
/// fragment. `wss://user:secret@host:443/path?token=x` becomes `wss://host:443/path`.
pub(crate) fn redact_url(url: &str) -> String {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    let url = &url[..end];
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let (scheme, rest) = url.split_at(scheme_end + 3);
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    format!("{scheme}{host}{path}")
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn urls_lose_userinfo_query_and_fragment() {
        for (url, shown) in [
            (
                "wss://user:secret@host:443/path?token=x",
                "wss://host:443/path",
            ),
            ("ws://a@b@host/ws#frag", "ws://host/ws"),
            ("ws://host:8080?token=x", "ws://host:8080"),
            ("ws://host/ws", "ws://host/ws"),
            ("not a url?secret", "not a url"),
        ] {
            assert_eq!(redact_url(url), shown);
        }
    }
}
