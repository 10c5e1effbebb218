//! A small HTTP/1.1 client for the plain routes next to the WebSockets (pages, health,
//! metrics): one request per connection, bounded waits.

use std::{fmt, panic::Location};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use crate::wait::{DEFAULT_TIMEOUT, fail};

/// An HTTP answer: status, headers (lower-case names) and body as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code, such as 200.
    pub status: u16,
    /// Each header as `(lower-case name, value)`, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body, as text (lossy for bytes that are not UTF-8).
    pub body: String,
}

impl HttpResponse {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body decoded from JSON.
    ///
    /// # Panics
    ///
    /// When the body is not JSON of that type; the message shows the body.
    #[track_caller]
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_str(&self.body).unwrap_or_else(|error| {
            fail(
                Location::caller(),
                &format!("expected a JSON body ({error}), got {:?}", self.body),
            )
        })
    }
}

impl fmt::Display for HttpResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.body)
    }
}

/// `GET url` over a fresh connection (`Connection: close`), waiting at most
/// [`DEFAULT_TIMEOUT`](crate::DEFAULT_TIMEOUT).
///
/// # Panics
///
/// When the URL is not `http://host:port/...`, the server cannot be reached, or the answer
/// does not come in time or is not HTTP.
#[track_caller]
pub fn http_get(url: &str) -> impl Future<Output = HttpResponse> + '_ {
    request("GET", url, None)
}

/// `POST url` with a JSON body (`None`: an empty body), as [`http_get`].
///
/// # Panics
///
/// As [`http_get`].
#[track_caller]
pub fn http_post<'a>(
    url: &'a str,
    json: Option<&'a serde_json::Value>,
) -> impl Future<Output = HttpResponse> + 'a {
    let body = json.map(|json| Body {
        content_type: "application/json",
        text: json.to_string(),
    });
    request("POST", url, body)
}

/// `POST url` with `text` as a `text/plain` body, as [`http_get`]: for handlers that read
/// the raw body (`ctx.bind::<String>()`).
///
/// # Panics
///
/// As [`http_get`].
#[track_caller]
pub fn http_post_text<'a>(
    url: &'a str,
    text: &str,
) -> impl Future<Output = HttpResponse> + use<'a> {
    let body = Body {
        content_type: "text/plain; charset=utf-8",
        text: text.to_owned(),
    };
    request("POST", url, Some(body))
}

/// A request body and its type.
struct Body {
    content_type: &'static str,
    text: String,
}

#[track_caller]
fn request<'a>(
    method: &'a str,
    url: &'a str,
    body: Option<Body>,
) -> impl Future<Output = HttpResponse> + 'a {
    let caller = Location::caller();
    async move {
        match tokio::time::timeout(DEFAULT_TIMEOUT, exchange(method, url, body)).await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => fail(caller, &format!("{method} {url}: {error}")),
            Err(_) => fail(
                caller,
                &format!("{method} {url}: no complete answer within {DEFAULT_TIMEOUT:?}"),
            ),
        }
    }
}

async fn exchange(method: &str, url: &str, body: Option<Body>) -> Result<HttpResponse, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err("only http:// URLs are supported".to_owned());
    }
    let authority = uri.authority().ok_or("the URL has no host")?.as_str();
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut stream = TcpStream::connect(authority)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let content_type = body
        .as_ref()
        .map(|body| format!("Content-Type: {}\r\n", body.content_type))
        .unwrap_or_default();
    let body = body.map(|body| body.text).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n{content_type}\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream
        .write_all(format!("{head}{body}").as_bytes())
        .await
        .map_err(|e| format!("cannot send the request: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .await
        .map_err(|e| format!("cannot read the answer: {e}"))?;
    parse(&raw)
}

fn parse(raw: &[u8]) -> Result<HttpResponse, String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP answer: {text:?}"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status line in {head:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// The body of a chunked answer, read to its end.
fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        let (Some(chunk), Some(next)) = (after.get(..size), after.get(size..)) else {
            break;
        };
        if size == 0 {
            break;
        }
        body.push_str(chunk);
        rest = next.trim_start_matches("\r\n");
    }
    body
}
