//! Outbound WebSocket services from inside handlers.

use ws_client_pool::{PoolError, ServiceStatus, WsClientPool};
use ws_context::Context;
use ws_message::Encode;

use crate::HttpContext;

/// GoFr's `ctx.WriteMessageToService` for both kinds of handler: WebSocket ([`Context`]) and
/// HTTP ([`HttpContext`]). The app puts its services into every request's extensions, so this
/// works in any route the [`App`](crate::App) serves.
///
/// ```no_run
/// use gofr_app::{Error, HttpContext, ServiceExt as _};
///
/// async fn notify(ctx: HttpContext) -> Result<&'static str, Error> {
///     ctx.write_message_to_service("notification-service", &serde_json::json!({"title": "Hi"}))?;
///     Ok("Notification sent successfully!")
/// }
/// ```
pub trait ServiceExt {
    /// The app's outbound services; `None` outside an [`App`](crate::App).
    fn ws_services(&self) -> Option<&WsClientPool>;

    /// Queues a message for the named service, encoded as `write_message_to_socket` does
    /// (see [`WsClientPool::write_message_to_service`]). Returns once it is queued.
    fn write_message_to_service<T: Encode + ?Sized>(
        &self,
        name: &str,
        data: &T,
    ) -> Result<(), PoolError> {
        match self.ws_services() {
            Some(services) => services.write_message_to_service(name, data),
            None => Err(PoolError::ServiceNotFound {
                name: name.to_owned(),
            }),
        }
    }

    /// The named service's state and counters.
    fn ws_service_status(&self, name: &str) -> Option<ServiceStatus> {
        self.ws_services()?.status(name)
    }
}

impl ServiceExt for Context {
    fn ws_services(&self) -> Option<&WsClientPool> {
        self.extensions().get()
    }
}

impl ServiceExt for HttpContext {
    fn ws_services(&self) -> Option<&WsClientPool> {
        self.extensions().get()
    }
}
