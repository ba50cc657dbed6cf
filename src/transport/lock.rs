//! Host locks: one per host, service and environment, so no two runs ever
//! interleave on a host. The lock is an flock held by the host program's
//! `lock` step (`host/lock.rs`), whose stdin is an SSH channel of the run's own
//! session: it lets go when the channel closes (hostenv exits, is killed, or
//! stops waiting) and after `host::lock::BEAT_TIMEOUT` without a heartbeat (a
//! connection dropped without a word). Lock files live in `/run/hostenv/`,
//! root's own directory, and are never deleted (deleting a locked file races).

use std::time::Duration;

use crate::protocol::error::{ErrorKind, HostError};
use crate::settings::names::{EnvironmentName, ServiceName};
use crate::transport::remote::{Invocation, Remote};

/// Exclusive for runs that write (deploy, rollback), shared for runs that read (plan, drift).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Exclusive,
    Shared,
}

/// The lock step of `service` in `environment` (the request's, or `default`).
pub fn invocation(
    service: &ServiceName,
    environment: Option<&EnvironmentName>,
    mode: Mode,
) -> Invocation {
    let mode = match mode {
        Mode::Exclusive => "exclusive",
        Mode::Shared => "shared",
    };
    let environment = environment.map_or("default", EnvironmentName::as_str);
    Invocation::new("lock", &[service, environment, mode])
}

/// Takes the lock on the host, waiting up to `wait`; `holder` (no secrets: who
/// and when) is recorded in the lock file for whoever waits next. Returns how
/// the host program described itself on the way (None from one that did not),
/// with the outcome. `first`: steps the holder takes once the lock is its
/// own, sent with the lock step (their answers are read as the run takes them).
pub fn acquire(
    remote: &Remote,
    invocation: &Invocation,
    holder: &str,
    wait: Duration,
    first: &[(Invocation, &[u8])],
) -> Result<(Option<String>, Result<(), HostError>), HostError> {
    let first: Vec<(Vec<String>, &[u8])> = first
        .iter()
        .map(|(step, stdin)| (step.words(), *stdin))
        .collect();
    let held = remote
        .connection
        .hold(&invocation.shell_line(remote.sudo), holder, wait, &first)?;
    let outcome = held.verdict.map_err(|answer| {
        if let Some(holder) = answer.strip_prefix("held-by ") {
            HostError::new(
                ErrorKind::Locked,
                format!(
                    "`{}`: another run holds the lock after {} s of waiting; locked by {holder}",
                    remote.host,
                    wait.as_secs()
                ),
            )
        } else if remote.sudo && crate::transport::remote::is_sudo_refusal(&answer) {
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
    });
    Ok((held.description, outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_lock_per_service_and_environment() {
        // The lock file itself is the host program's (`privilege.rs` checks it).
        let service = ServiceName::parse("voxcore").unwrap();
        assert_eq!(
            invocation(&service, None, Mode::Shared).sudoers_command(),
            "/usr/local/sbin/hostenv-host lock voxcore default shared"
        );
        let production = EnvironmentName::parse("production");
        assert_eq!(
            invocation(&service, production.as_ref(), Mode::Exclusive).sudoers_command(),
            "/usr/local/sbin/hostenv-host lock voxcore production exclusive"
        );
    }
}
