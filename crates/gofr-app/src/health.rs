//! `/.well-known/alive` and `/.well-known/health`, as GoFr serves them.

use axum::{Router, routing::get};
use ws_context::{BackplaneStatus, ConnectionHub};

use crate::{Config, app::data};

pub(crate) fn routes(config: &Config, hub: ConnectionHub) -> Router {
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
                let mut health = serde_json::json!({
                    "status": "UP",
                    "name": name,
                    "websocket": { "connections": connections },
                });
                let backplane = hub.backplane_status();
                if backplane != BackplaneStatus::Standalone {
                    // Without the other instances the app still serves its own connections.
                    let up = backplane == BackplaneStatus::Up;
                    health["status"] = (if up { "UP" } else { "DEGRADED" }).into();
                    health["cluster"] = serde_json::json!({
                        "status": if up { "UP" } else { "DOWN" },
                        "nodes": hub.nodes().iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                    });
                }
                async move { data(health) }
            }),
        )
}
