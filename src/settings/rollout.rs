//! `rollout`: how a run takes its hosts (canary, batches, failures tolerated,
//! parallelism, how long to wait for a host's lock), and when it stops.

use std::time::Duration;

use crate::protocol::error::{Error, ErrorKind, Result};
use crate::protocol::request::{Amount, Deployment};

/// Hosts taken on at once unless `rollout.parallel` says otherwise.
pub const DEFAULT_PARALLEL: u32 = 10;
/// How long a run waits for another run's lock on a host unless `rollout.lockWaitMs` says.
pub const DEFAULT_LOCK_WAIT_MS: u64 = 60_000;

/// How the hosts are taken: canary, batch size, failures tolerated, parallelism.
#[derive(Clone)]
pub struct Rollout {
    pub parallel: usize,
    pub canary: usize,
    pub batch: usize,
    pub max_failed: usize,
    pub lock_wait: Duration,
}

impl Rollout {
    pub fn from_request(deployment: &Deployment, at: &str, hosts: usize) -> Result<Rollout> {
        let rollout = deployment.rollout.clone().unwrap_or_default();
        let canary = rollout.canary.unwrap_or(0) as usize;
        if canary > hosts {
            return Err(Error::invalid(
                ErrorKind::InvalidSetting,
                format!("{at}/rollout/canary"),
                format!("there are only {hosts} hosts"),
            ));
        }
        let batch = match &rollout.batch {
            Some(amount) => hosts_in(amount, hosts, &format!("{at}/rollout/batch"))?.max(1),
            None => hosts.max(1),
        };
        let max_failed = match &rollout.max_failed {
            Some(amount) => hosts_in(amount, hosts, &format!("{at}/rollout/maxFailed"))?,
            None => 0,
        };
        Ok(Rollout {
            parallel: rollout.parallel.unwrap_or(DEFAULT_PARALLEL).max(1) as usize,
            canary,
            batch,
            max_failed,
            lock_wait: Duration::from_millis(rollout.lock_wait_ms.unwrap_or(DEFAULT_LOCK_WAIT_MS)),
        })
    }

    /// Index ranges, in request order: the canary hosts, then batches.
    pub fn batches(&self, hosts: usize) -> Vec<std::ops::Range<usize>> {
        let mut batches = Vec::new();
        if self.canary > 0 {
            batches.push(0..self.canary);
        }
        let mut start = self.canary;
        while start < hosts {
            let end = (start + self.batch).min(hosts);
            batches.push(start..end);
            start = end;
        }
        batches
    }

    /// Why the batches after batch `index` are not attempted, if they are
    /// not: the canary failed, or more hosts failed than `maxFailed` allows
    /// (`failures` in this batch, `failed` in all batches so far).
    pub fn stop_after(&self, index: usize, failures: usize, failed: usize) -> Option<String> {
        if index == 0 && self.canary > 0 && failures > 0 {
            Some("not attempted: the canary failed".into())
        } else if failed > self.max_failed {
            Some(format!(
                "not attempted: {failed} hosts failed, more than `rollout.maxFailed` ({}) allows",
                self.max_failed
            ))
        } else {
            None
        }
    }
}

/// A count, or `"N%"` of the hosts rounded up (at least 1).
fn hosts_in(amount: &Amount, hosts: usize, field: &str) -> Result<usize> {
    match amount {
        Amount::Count(count) => Ok(*count as usize),
        Amount::Percent(text) => {
            let percent = text
                .strip_suffix('%')
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| (1..=100).contains(n))
                .ok_or_else(|| {
                    Error::invalid(
                        ErrorKind::InvalidSetting,
                        field,
                        "must be a whole number of hosts or a percentage from `1%` to `100%`",
                    )
                })?;
            Ok((hosts * percent).div_ceil(100).max(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_put_the_canary_alone_first() {
        let rollout = Rollout {
            parallel: 4,
            canary: 1,
            batch: 3,
            max_failed: 0,
            lock_wait: Duration::from_secs(1),
        };
        assert_eq!(rollout.batches(8), vec![0..1, 1..4, 4..7, 7..8]);
        let no_canary = Rollout {
            canary: 0,
            ..rollout
        };
        assert_eq!(no_canary.batches(3), vec![0..3]);
    }

    #[test]
    fn percentages_round_up_to_at_least_one_host() {
        let percent = |p: &str, hosts| hosts_in(&Amount::Percent(p.into()), hosts, "/f").unwrap();
        assert_eq!(percent("25%", 10), 3);
        assert_eq!(percent("1%", 3), 1);
        assert_eq!(percent("100%", 7), 7);
        assert!(hosts_in(&Amount::Percent("0%".into()), 3, "/f").is_err());
        assert!(hosts_in(&Amount::Percent("x%".into()), 3, "/f").is_err());
    }

    #[test]
    fn the_rollout_stops_after_a_failed_canary_or_too_many_failures() {
        let rollout = |canary, max_failed| Rollout {
            parallel: 1,
            canary,
            batch: 2,
            max_failed,
            lock_wait: Duration::ZERO,
        };
        // (rollout, batch index, failures in it, failed so far, stops)
        let table = [
            (rollout(1, 5), 0, 1, 1, Some("the canary failed")),
            (rollout(1, 5), 0, 0, 0, None),
            // Without a canary the first batch is one like any other.
            (rollout(0, 5), 0, 1, 1, None),
            (
                rollout(0, 0),
                0,
                1,
                1,
                Some("1 hosts failed, more than `rollout.maxFailed` (0)"),
            ),
            // A later batch's failures count with the earlier ones.
            (rollout(1, 2), 2, 1, 2, None),
            (
                rollout(1, 2),
                2,
                1,
                3,
                Some("3 hosts failed, more than `rollout.maxFailed` (2)"),
            ),
        ];
        for (rollout, index, failures, failed, stops) in table {
            let reason = rollout.stop_after(index, failures, failed);
            match stops {
                Some(words) => assert!(
                    reason.as_deref().is_some_and(|r| r.contains(words)),
                    "batch {index}, {failures}/{failed} failed: {reason:?}"
                ),
                None => assert_eq!(reason, None, "batch {index}, {failures}/{failed} failed"),
            }
        }
    }
}
