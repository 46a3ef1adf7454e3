//! Waiting without burning a core: spin briefly, then yield, then sleep with growing
//! pauses, always bounded by a deadline.

use std::time::{Duration, Instant};

use crate::{Error, Result};

/// Calls `poll` until it reports at least one event, an error, or `timeout` passes.
pub(crate) fn wait_with(
    timeout: Duration,
    what: &'static str,
    mut poll: impl FnMut() -> Result<usize>,
) -> Result<usize> {
    let start = Instant::now();
    let mut backoff = Backoff::new();
    loop {
        let n = poll()?;
        if n > 0 {
            return Ok(n);
        }
        if start.elapsed() >= timeout {
            return Err(Error::Timeout {
                what,
                after: timeout,
            });
        }
        backoff.snooze();
    }
}

/// Spin, then yield, then sleep 1 µs .. 1 ms (doubling).
pub(crate) struct Backoff {
    step: u32,
}

impl Backoff {
    const SPINS: u32 = 64;
    const YIELDS: u32 = 64;

    pub(crate) fn new() -> Self {
        Backoff { step: 0 }
    }

    pub(crate) fn snooze(&mut self) {
        if self.step < Self::SPINS {
            std::hint::spin_loop();
        } else if self.step < Self::SPINS + Self::YIELDS {
            std::thread::yield_now();
        } else {
            let exp = (self.step - Self::SPINS - Self::YIELDS).min(10);
            std::thread::sleep(Duration::from_micros(1 << exp));
        }
        self.step = self.step.saturating_add(1);
    }
}
