//! The runtime's clock. Only shells read it, once per event, and pass `now`
//! to their cores.

use crate::ports::Clock;

/// `Date.now()`. In Workers it advances only on I/O, so loops that must stop
/// are bounded by count as well as by time.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        worker::Date::now().as_millis()
    }
}
