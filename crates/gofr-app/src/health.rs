//! `/.well-known/alive` and `/.well-known/health`, as GoFr serves them.

use axum::{Router, routing::get};
use ws_context::ConnectionHub;

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
                async move {
                    data(serde_json::json!({
                        "status": "UP",
                        "name": name,
                        "websocket": { "connections": connections },
                    }))
                }
            }),
        )
}
