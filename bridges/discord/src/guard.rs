//! One event's panic stays that event's (SPEC section 9): the inbound processor, the routing of
//! hub events and the outbox jobs run each event under [`isolate`], count and log a panic, and
//! go on with the next event instead of losing the task (a dead inbound task once left Discord
//! deaf while `/readyz` stayed green).

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;

/// Runs `future`; a panic in it becomes `Err` with the panic's message.
///
/// `AssertUnwindSafe` is sound here because what a handler shares across events (caches behind
/// mutexes that recover from poisoning, the store) stays consistent at every await point: a
/// half-done event leaves at most a cache entry missing.
pub async fn isolate<F: Future>(future: F) -> Result<F::Output, String> {
    AssertUnwindSafe(future)
        .catch_unwind()
        .await
        .map_err(|panic| panic_message(panic.as_ref()).to_owned())
}

/// What a caught panic said.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&'static str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("panic")
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn handle(event: u32) -> u32 {
        assert!(event != 2, "event {event} is poison");
        event
    }

    #[tokio::test]
    async fn a_panicking_event_is_reported_and_the_next_one_is_handled() {
        let mut handled = Vec::new();
        let mut failed = Vec::new();
        for event in 0..5 {
            match isolate(handle(event)).await {
                Ok(event) => handled.push(event),
                Err(panic) => failed.push(panic),
            }
        }
        assert_eq!(handled, vec![0, 1, 3, 4]);
        assert_eq!(failed, vec!["event 2 is poison".to_owned()]);
        assert_eq!(
            isolate(async { panic!("static") }).await,
            Err::<(), _>("static".to_owned())
        );
    }
}
