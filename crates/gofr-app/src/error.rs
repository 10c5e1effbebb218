//! [`Error`], what HTTP and WebSocket handlers return (a status and GoFr's JSON envelope), and
//! [`AppError`], why [`App::run`](crate::App::run) or [`App::serve`](crate::App::serve) stopped.

use std::fmt;

use axum::{
    Json,
    response::{IntoResponse, Response},
};
use http::StatusCode;

/// A handler error: an HTTP status and a message, answered as GoFr's envelope
/// `{"error":{"message":"..."}}`.
///
/// Any `std::error::Error` converts into it with `?` (as 500 Internal Server Error); the
/// constructors pick other statuses. In a WebSocket handler the status is not used: the
/// message goes back in an error frame and the connection stays open.
///
/// ```
/// use gofr_app::Error;
///
/// fn find(id: u32) -> Result<&'static str, Error> {
///     match id {
///         1 => Ok("tea"),
///         _ => Err(Error::not_found(format!("no order {id}"))),
///     }
/// }
/// assert_eq!(find(2).unwrap_err().status(), http::StatusCode::NOT_FOUND);
/// ```
pub struct Error {
    status: StatusCode,
    message: String,
}

impl Error {
    /// An error with any status.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Error {
            status,
            message: message.into(),
        }
    }

    /// 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Error::new(StatusCode::BAD_REQUEST, message)
    }

    /// 401 Unauthorized.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Error::new(StatusCode::UNAUTHORIZED, message)
    }

    /// 404 Not Found.
    pub fn not_found(message: impl Into<String>) -> Self {
        Error::new(StatusCode::NOT_FOUND, message)
    }

    /// 500 Internal Server Error.
    pub fn internal(message: impl Into<String>) -> Self {
        Error::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for Error {
    fn from(error: E) -> Self {
        Error::internal(error.to_string())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

/// Why an app could not start or stopped with a failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// A configuration value is invalid.
    #[error(transparent)]
    Config(#[from] crate::ConfigError),
    /// A WebSocket route's options (set in [`App::websocket_with`](crate::App::websocket_with))
    /// cannot work.
    #[error("WebSocket route {path}: {source}")]
    WebSocketRoute {
        /// The route's path.
        path: String,
        /// The option at fault and its value.
        source: ws_context::ConfigError,
    },
    /// The listener could not be bound or the server failed.
    #[error("server I/O failed on {address}: {source}")]
    Io {
        /// What was being bound or served.
        address: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `REDIS_URL` is set but the cluster could not be joined.
    #[cfg(feature = "redis")]
    #[error("cannot join the cluster: {0}")]
    Cluster(#[from] ws_backplane_redis::RedisBackplaneError),
}
