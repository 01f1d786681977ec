//! A gate for warnings an attacker or an overload can trigger thousands of times a
//! second (refused internode calls, connections past a cap, shed requests): at most one
//! line per interval, each saying how many were not logged since, so the log shows the
//! event without being flooded by it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most one log line per interval.
#[derive(Debug)]
pub struct LogGate {
    interval: Duration,
    /// When the last line was let through, and how many were held back since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogGate {
    /// A gate letting one line through per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(held back since the last line)` when a line may be logged now, `None`
    /// (counted) when not.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        // A poisoned lock only guards a timestamp and a count.
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (last, held_back) = &mut *state;
        if last.is_some_and(|last| now.duration_since(last) < self.interval) {
            *held_back += 1;
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(held_back))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_counting_what_was_held_back() {
        let gate = LogGate::new(Duration::from_secs(1));
        let start = Instant::now();
        assert_eq!(gate.admit_at(start), Some(0));
        assert_eq!(gate.admit_at(start + Duration::from_millis(10)), None);
        assert_eq!(gate.admit_at(start + Duration::from_millis(999)), None);
        assert_eq!(gate.admit_at(start + Duration::from_secs(1)), Some(2));
        assert_eq!(gate.admit_at(start + Duration::from_secs(3)), Some(0));
    }
}
