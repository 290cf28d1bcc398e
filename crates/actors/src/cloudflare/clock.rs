//! The runtime's clock. Only shells read it, once per event, and pass `now`
//! to their cores.

use crate::ports::{Clock, Sleep};

/// `Date.now()`. In Workers it advances only on I/O, so loops that must stop
/// are bounded by count as well as by time.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        worker::Date::now().as_millis()
    }
}

/// The runtime's timer (`setTimeout`).
#[derive(Debug, Default, Clone, Copy)]
pub struct RuntimeSleep;

impl Sleep for RuntimeSleep {
    async fn sleep(&self, ms: u64) {
        worker::Delay::from(std::time::Duration::from_millis(ms)).await;
    }
}
