//! What every test here starts from: a configuration for 127.0.0.1 with a quick shutdown.
//! Servers, clients, HTTP requests and waits are ws-test's.

use gofr_app::Config;

/// A test configuration: loopback, quick shutdown.
pub(crate) fn config() -> Config {
    let vars = [
        ("HTTP_HOST".to_owned(), "127.0.0.1".to_owned()),
        ("METRICS_PORT".to_owned(), "0".to_owned()),
        ("SHUTDOWN_GRACE_PERIOD".to_owned(), "1s".to_owned()),
    ]
    .into();
    Config::from_vars(&vars).unwrap()
}
