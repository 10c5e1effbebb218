//! `/.well-known/alive` and `/.well-known/health`, as GoFr serves them.

use axum::{Router, routing::get};
use ws_client_pool::{ServiceState, WsClientPool};
use ws_context::ConnectionHub;

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
                let (status, services) = service_health(&services);
                async move {
                    data(serde_json::json!({
                        "status": status,
                        "name": name,
                        "websocket": { "connections": connections },
                        "services": services,
                    }))
                }
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
                "url": service.url,
                "error": service.last_error.map(|(_, error)| error),
                "queued": service.queued,
                "reconnects": service.reconnects,
                "possibly_lost": service.possibly_lost,
            }),
        );
    }
    (status, serde_json::Value::Object(details))
}
