//! Bounded waits: [`eventually`] and the default bound every helper of the kit uses.

use std::{future::Future, panic::Location, time::Duration};

use tokio::time::Instant;

/// How long every wait of the kit lasts by default: a reply, a close, a condition on the
/// server's state. Long enough for a loaded CI machine, short enough that a broken test fails
/// in seconds rather than hanging.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often [`eventually`] checks its condition.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Waits until `condition` holds, checking it every few milliseconds, for at most
/// [`DEFAULT_TIMEOUT`].
///
/// Use it for what the server does on its own time (a connection registered, a room left
/// after a close); messages have their own waits on the client.
///
/// # Panics
///
/// When the bound passes with the condition still false, with a message naming `what` was
/// awaited and the test line that waited.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let hub = ws_context::ConnectionHub::new();
/// ws_test::eventually("the hub to be empty", || hub.is_empty()).await;
/// # }
/// ```
#[track_caller]
pub fn eventually<'a>(
    what: &'a str,
    condition: impl FnMut() -> bool + 'a,
) -> impl Future<Output = ()> + 'a {
    eventually_within(DEFAULT_TIMEOUT, what, condition)
}

/// [`eventually`] with another bound.
///
/// # Panics
///
/// When `bound` passes with the condition still false.
#[track_caller]
pub fn eventually_within<'a>(
    bound: Duration,
    what: &'a str,
    mut condition: impl FnMut() -> bool + 'a,
) -> impl Future<Output = ()> + 'a {
    let caller = Location::caller();
    async move {
        let checked = wait_until(bound, || if condition() { Ok(()) } else { Err(None) }).await;
        if let Err(last) = checked {
            fail(
                caller,
                &format!("waited {bound:?} for {what}{}", last.unwrap_or_default()),
            );
        }
    }
}

/// Checks `check` until it is `Ok` or `bound` passes; then the last `Err`, which may say what
/// was seen instead.
pub(crate) async fn wait_until<T>(
    bound: Duration,
    mut check: impl FnMut() -> Result<T, Option<String>>,
) -> Result<T, Option<String>> {
    let deadline = Instant::now() + bound;
    loop {
        match check() {
            Ok(value) => return Ok(value),
            Err(last) if Instant::now() >= deadline => return Err(last),
            Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}

/// Fails the test: a panic whose message starts with the test line that asked.
pub(crate) fn fail(caller: &Location<'_>, message: &str) -> ! {
    panic!("{caller}: {message}")
}
