//! HTTP routes in GoFr's style: [`HttpContext`] (the request, its body bound like a WebSocket
//! message) and [`HttpHandler`], whose `Ok` value is answered `{"data": ...}`.

use std::{fmt, future::Future, pin::Pin, sync::Arc};

use axum::{
    Json,
    body::Bytes,
    extract::{FromRequestParts, Query, RawPathParams, Request},
    response::{IntoResponse, Response},
};
use http::{Extensions, HeaderMap, Method, StatusCode, Uri};
use serde::{Serialize, de::DeserializeOwned};
use ws_context::ConnectionHub;
use ws_message::Message;

use crate::Error;

/// Largest request body an HTTP handler reads: 2 MiB, axum's default.
const BODY_LIMIT: usize = 2 << 20;

/// The context of one HTTP request, GoFr's `*gofr.Context` for HTTP routes.
///
/// ```no_run
/// use gofr_app::{Error, HttpContext};
///
/// #[derive(serde::Deserialize, serde::Serialize)]
/// struct Order { item: String }
///
/// async fn create(ctx: HttpContext) -> Result<Order, Error> {
///     let order: Order = ctx.bind()?;
///     Ok(order) // answered 201 {"data":{"item":...}} on POST
/// }
/// ```
pub struct HttpContext {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    extensions: Extensions,
    path_params: Vec<(String, String)>,
    body: Bytes,
    hub: ConnectionHub,
}

impl fmt::Debug for HttpContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpContext")
            .field("method", &self.method)
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

impl HttpContext {
    /// Decodes the request body (GoFr's `ctx.Bind`): `String` gets the raw text, `Bytes` the
    /// raw body, other types are read from JSON. A bad body is a 400 with the reason.
    pub fn bind<T: DeserializeOwned + 'static>(&self) -> Result<T, Error> {
        ws_message::decode(&Message::Binary(self.body.clone()))
            .map_err(|error| Error::bad_request(error.to_string()))
    }

    /// A path parameter by name (`/orders/{id}` gives `id`).
    pub fn path_param(&self, name: &str) -> Option<&str> {
        self.path_params
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// A query parameter by name, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(&self.uri).ok()?;
        pairs
            .into_iter()
            .find(|(key, _)| key == name)
            .map(|(_, v)| v)
    }

    /// A header's value, if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// All request headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// What middleware put into the request (authentication, for example).
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// The request method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The request URI.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// Every open WebSocket connection of the app, to push to sockets from HTTP routes.
    pub fn hub(&self) -> &ConnectionHub {
        &self.hub
    }
}

pub(crate) type BoxHttpFuture = Pin<Box<dyn Future<Output = Response> + Send>>;
pub(crate) type BoxHttpHandler = Arc<dyn Fn(HttpContext) -> BoxHttpFuture + Send + Sync>;

/// An async function that handles an HTTP request: `Fn(HttpContext) -> Result<T, E>`.
///
/// `Ok(T)` is answered `{"data": T}` with 200 (201 for POST); `Err(E)` with GoFr's error
/// envelope and the error's status ([`Error`]'s, or 500 for other errors).
pub trait HttpHandler<M>: Send + Sync + 'static {
    /// Erases the handler's types.
    #[doc(hidden)]
    fn into_boxed(self) -> BoxHttpHandler;
}

impl<F, Fut, T, E> HttpHandler<(T, E)> for F
where
    F: Fn(HttpContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
    T: Serialize + Send + 'static,
    E: Into<Error> + Send + 'static,
{
    fn into_boxed(self) -> BoxHttpHandler {
        Arc::new(move |ctx| {
            let created = ctx.method == Method::POST;
            let future = self(ctx);
            Box::pin(async move {
                match future.await {
                    Ok(data) => {
                        let status = if created {
                            StatusCode::CREATED
                        } else {
                            StatusCode::OK
                        };
                        (status, Json(serde_json::json!({ "data": data }))).into_response()
                    }
                    Err(error) => {
                        let error: Error = error.into();
                        if error.status().is_server_error() {
                            tracing::error!(error = %error, "request failed");
                        }
                        error.into_response()
                    }
                }
            })
        })
    }
}

/// Turns a request into a context and runs the handler.
pub(crate) async fn serve(
    handler: BoxHttpHandler,
    hub: ConnectionHub,
    request: Request,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let path_params = match RawPathParams::from_request_parts(&mut parts, &()).await {
        Ok(params) => params
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        Err(_) => Vec::new(),
    };
    let body = match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(body) => body,
        Err(error) => {
            // A body that stalls past `HTTP_READ_TIMEOUT` is 408; one over the limit is 413.
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&error);
            while let Some(current) = cause {
                if let Some(timeout) = current.downcast_ref::<ws_upgrader::BodyTimeout>() {
                    return Error::new(StatusCode::REQUEST_TIMEOUT, timeout.to_string())
                        .into_response();
                }
                cause = current.source();
            }
            return Error::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body over {BODY_LIMIT} bytes"),
            )
            .into_response();
        }
    };
    handler(HttpContext {
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
        extensions: parts.extensions,
        path_params,
        body,
        hub,
    })
    .await
}
