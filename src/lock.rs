//! Host locks: one per host, service and environment, so no two runs ever
//! interleave on a host. The lock is an flock held by a process on the host
//! whose stdin is an SSH channel of the run's own session: it lets go when the
//! channel closes (hostenv exits or is killed) and after `BEAT_TIMEOUT` without
//! a heartbeat (a connection dropped without a word). Lock files live in
//! `/run/lock/hostenv/` and are never deleted (deleting a locked file races).

use std::time::Duration;

use crate::error::{ErrorKind, HostError};
use crate::remote::{Invocation, Remote};

/// The holder gives up after this long without hearing from hostenv.
pub const BEAT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a run waits for a lock another run holds (`rollout.lockWaitMs`).
pub const DEFAULT_WAIT_MS: u64 = 60_000;

const HOLD: &str = concat!(
    r#"set -u; umask 077; file=$1; mode=$2; wait=$3; beat=$4; "#,
    r#"mkdir -p -- "$(dirname -- "$file")"; exec 9>>"$file"; "#,
    r#"if [ "$mode" = shared ]; then how=-s; else how=-x; fi; "#,
    r#"read -r holder || holder=unknown; "#,
    r#"if flock "$how" -w "$wait" 9; then :; else echo "locked by $(head -c 600 -- "$file")"; exit 5; fi; "#,
    r#"if [ "$mode" = exclusive ]; then echo "$holder" > "$file"; fi; "#,
    r#"echo acquired; "#,
    r#"while b=$(timeout -- "$beat" dd bs=1 count=1 2>/dev/null) && [ -n "$b" ]; do :; done"#,
);

/// Exclusive for runs that write (deploy, rollback), shared for runs that read (plan, drift).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Exclusive,
    Shared,
}

pub fn path(service: &str, environment: Option<&str>) -> String {
    format!(
        "/run/lock/hostenv/{service}.{}.lock",
        environment.unwrap_or("default")
    )
}

pub fn invocation(
    service: &str,
    environment: Option<&str>,
    mode: Mode,
    wait: Duration,
) -> Invocation {
    let mode = match mode {
        Mode::Exclusive => "exclusive",
        Mode::Shared => "shared",
    };
    let wait = wait.as_secs().max(1).to_string();
    let beat = BEAT_TIMEOUT.as_secs().to_string();
    Invocation::new(
        "lock",
        HOLD,
        &[&path(service, environment), mode, &wait, &beat],
    )
}

/// Takes the lock on the host, waiting up to `wait`; `holder` (no secrets: who
/// and when) is recorded in the lock file for whoever waits next.
pub fn acquire(
    remote: &Remote,
    invocation: &Invocation,
    holder: &str,
    wait: Duration,
) -> Result<(), HostError> {
    let verdict = remote.connection.hold(
        remote.host,
        &invocation.shell_line(remote.sudo),
        holder,
        wait,
    )?;
    verdict.map_err(|answer| {
        if answer.starts_with("locked by") {
            HostError::new(
                ErrorKind::Locked,
                format!(
                    "`{}`: another run holds the lock after {} s of waiting; {answer}",
                    remote.host,
                    wait.as_secs()
                ),
            )
        } else if remote.sudo && crate::remote::is_sudo_refusal(&answer) {
            HostError::new(
                ErrorKind::SudoRefused,
                format!("`{}`: sudo refused the `lock` step; grant the lines `hostenv sudoers` prints: {answer}", remote.host),
            )
        } else {
            HostError::new(
                ErrorKind::RemoteCommandFailed,
                format!("`{}`: the `lock` step failed: {answer}", remote.host),
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hold_script_is_one_line_without_sudoers_wildcards() {
        assert!(!HOLD.contains(['\n', '\\', '*', '?', '!', '#']));
    }

    #[test]
    fn one_lock_per_service_and_environment() {
        assert_eq!(
            path("voxbridge", Some("production")),
            "/run/lock/hostenv/voxbridge.production.lock"
        );
        assert_eq!(
            path("voxcore", None),
            "/run/lock/hostenv/voxcore.default.lock"
        );
    }
}
