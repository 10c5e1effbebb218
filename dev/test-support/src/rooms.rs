//! [`room_chat`]: the smallest room server, which the hub's and the backplane's tests share.

use axum::Router;
use ws_context::{BindError, CloseFrame, Connection, ConnectionHub, Context, Endpoint, Message};

/// `/ws/{room}` on `hub`: a connection joins the room of its path, and every text it sends
/// goes to that room (itself included); `?name=` is the member's presence key. `options` adjust the endpoint (limits, hooks).
///
/// # Panics
///
/// When `options` leave the endpoint with an option it refuses.
pub fn room_chat(hub: &ConnectionHub, options: impl FnOnce(Endpoint) -> Endpoint) -> Router {
    let endpoint = Endpoint::new(to_room)
        .hub(hub.clone())
        .on_connect(join_room);
    let route = options(endpoint)
        .into_route()
        .expect("valid endpoint options");
    Router::new().route("/ws/{room}", route)
}

async fn join_room(conn: Connection) -> Result<(), CloseFrame> {
    // `?name=` is the member's presence key.
    if let Some(name) = conn.query_param("name") {
        conn.hub().set_presence_info(conn.id(), name);
    }
    conn.hub()
        .join(conn.id(), conn.path_param("room").unwrap_or("lobby"))
        .await;
    Ok(())
}

async fn to_room(ctx: Context) -> Result<(), BindError> {
    let text: String = ctx.bind()?;
    let room = ctx.path_param("room").unwrap_or("lobby");
    ctx.hub().send_to_room(room, Message::text(text)).await;
    Ok(())
}
