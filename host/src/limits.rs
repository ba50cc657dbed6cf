//! Root's bounds on what any run may make the host program do, for every
//! service: `/etc/hostenv/limits.conf`, root-owned, optional (each bound has
//! a safe default). A run asks for its own lock wait and deadline; these cap
//! them, so no request, deploy user or agent keeps a root process alive or
//! fills a disk past what root allows.
//!
//! ```text
//! lock-wait 600             # seconds a holder waits for another run's lock
//! run 21600                 # seconds a holder keeps a lock, whatever the run asks
//! audit-log-bytes 1048576   # the audit log is rotated once it would pass this
//! audit-log-keep 4          # rotated logs kept: audit.log.1 (newest) to .N
//! ```

use std::time::Duration;

/// The bounds, defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub lock_wait: Duration,
    pub run: Duration,
    pub audit_log_bytes: u64,
    pub audit_log_keep: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            lock_wait: Duration::from_secs(600),
            run: Duration::from_secs(6 * 3600),
            audit_log_bytes: 1 << 20,
            audit_log_keep: 4,
        }
    }
}

/// Each key, its range, and where its value goes.
const KEYS: [(&str, u64, u64); 4] = [
    ("lock-wait", 1, 86_400),
    ("run", 60, 7 * 86_400),
    ("audit-log-bytes", 4096, 1 << 30),
    ("audit-log-keep", 1, 100),
];

impl Limits {
    /// Parses `limits.conf`: `key value` lines and `#` comments, each key at
    /// most once and within its range; the error names the line.
    pub fn parse(text: &str) -> Result<Limits, String> {
        let mut limits = Limits::default();
        let mut seen: Vec<&str> = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let at = number + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line
                .split_once(' ')
                .ok_or(format!("line {at}: expected `key value`"))?;
            let &(key, low, high) = KEYS
                .iter()
                .find(|(name, _, _)| *name == key)
                .ok_or(format!("line {at}: `{key}` is not a limit"))?;
            if seen.contains(&key) {
                return Err(format!("line {at}: `{key}` is given twice"));
            }
            seen.push(key);
            let value = value
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|v| (low..=high).contains(v))
                .ok_or(format!(
                    "line {at}: `{key}` must be a number from {low} to {high}"
                ))?;
            match key {
                "lock-wait" => limits.lock_wait = Duration::from_secs(value),
                "run" => limits.run = Duration::from_secs(value),
                "audit-log-bytes" => limits.audit_log_bytes = value,
                _ => limits.audit_log_keep = value as u32,
            }
        }
        Ok(limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(Limits::parse("# nothing set\n").unwrap(), Limits::default());
        let set = Limits::parse("lock-wait 5\nrun 120\naudit-log-bytes 8192\naudit-log-keep 2\n")
            .unwrap();
        assert_eq!(set.lock_wait, Duration::from_secs(5));
        assert_eq!(set.run, Duration::from_secs(120));
        assert_eq!((set.audit_log_bytes, set.audit_log_keep), (8192, 2));
    }

    #[test]
    fn anything_else_names_its_line() {
        for (text, says) in [
            ("lock-wait 0\n", "line 1: `lock-wait` must be"),
            ("\nrun 10\n", "line 2: `run` must be"),
            (
                "audit-log-keep 1\naudit-log-keep 2\n",
                "line 2: `audit-log-keep` is given twice",
            ),
            ("shell /bin/sh\n", "line 1: `shell` is not a limit"),
            ("lock-wait\n", "line 1: expected"),
            ("lock-wait -1\n", "line 1: `lock-wait` must be"),
        ] {
            let error = Limits::parse(text).unwrap_err();
            assert!(error.starts_with(says), "{text:?}: {error}");
        }
    }
}
