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
                    let cluster = match backplane {
                        BackplaneStatus::Up => "UP",
                        // A Redis Cluster shard is missing until its replica takes over.
                        BackplaneStatus::Degraded => "DEGRADED",
                        _ => "DOWN",
                    };
                    health["cluster"] = serde_json::json!({
                        "status": cluster,
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
