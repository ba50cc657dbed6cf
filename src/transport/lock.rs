//! Host locks: one per host, service and environment, so no two runs ever
//! interleave on a host. The lock is an flock held by the host program's
//! `lock` step (`host/lock.rs`), whose stdin is an SSH channel of the run's own
//! session: it lets go when the channel closes (hostenv exits, is killed, or
//! stops waiting) and after `host::lock::BEAT_TIMEOUT` without a heartbeat (a
//! connection dropped without a word). Lock files live in `/run/hostenv/`,
//! root's own directory, and are never deleted (deleting a locked file races).

use std::time::Duration;

use crate::host::channel::{holder_head, MAX_HOLDER_LINE, MAX_SECONDS};
use crate::protocol::error::{ErrorKind, HostError};
use crate::protocol::request::Audit;
use crate::settings::names::{EnvironmentName, ServiceName};
use crate::transport::audit::ascii_json;
use crate::transport::remote::{Invocation, Remote};

/// Who holds the lock, for whoever waits for it next: action, build, user,
/// start time (no secrets), as ASCII JSON within what the holder takes; a
/// long `by` or `buildUrl` is cut short here (the request's own limits keep
/// them within reason, the audit line has them whole).
pub fn holder_text(action: &str, audit: &Audit, since: &str) -> String {
    let room = MAX_HOLDER_LINE - format!("hold {MAX_SECONDS} ").len();
    let (by, url) = (audit.by.clone(), audit.build_url.clone());
    let mut keep = usize::MAX;
    loop {
        let cut = |text: &Option<String>| {
            text.as_ref().map(|t| match t.char_indices().nth(keep) {
                Some((at, _)) => format!("{}…", &t[..at]),
                None => t.clone(),
            })
        };
        let text = ascii_json(&serde_json::json!({
            "action": action,
            "buildUrl": cut(&url),
            "by": cut(&by),
            "since": since,
        }));
        if text.len() <= room || keep == 0 {
            return text;
        }
        let longest = [&by, &url]
            .iter()
            .filter_map(|t| t.as_ref().map(|t| t.chars().count()))
            .max()
            .unwrap_or(0);
        keep = keep.min(longest) / 2;
    }
}

/// The holder line: the run may take `remaining` more, and is `text`.
pub fn holder_line(remaining: Duration, text: &str) -> Result<String, HostError> {
    let seconds = remaining
        .as_secs_f64()
        .ceil()
        .clamp(1.0, MAX_SECONDS as f64) as u64;
    holder_head(seconds, text).ok_or_else(|| {
        HostError::new(
            ErrorKind::Internal,
            "the lock's holder line is not one the host takes; nothing was sent",
        )
    })
}

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
    Invocation::new("lock", &[service, environment_name(environment), mode])
}

/// The environment a lock is taken for and the host records: the request's, or `default`.
pub fn environment_name(environment: Option<&EnvironmentName>) -> &str {
    environment.map_or("default", EnvironmentName::as_str)
}

/// Takes the lock on the host, waiting up to `wait`; `holder` (the holder
/// line: how long the run may take, who and when, no secrets) is recorded in
/// the lock file for whoever waits next. Returns how
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
    fn the_holder_line_fits_whatever_the_request_says() {
        let audit = Audit {
            by: Some("\u{1f600}\u{2028}".repeat(300)),
            build_url: Some("https://ci.example/".repeat(100)),
        };
        let text = holder_text("deploy", &audit, "2026-12-06T00:00:00Z");
        let line = holder_line(Duration::from_secs(u64::MAX / 4), &text).unwrap();
        assert!(
            line.len() <= MAX_HOLDER_LINE + 1 && line.is_ascii(),
            "{line}"
        );
        assert!(line.starts_with(&format!("hold {MAX_SECONDS} {{\"action\":\"deploy\"")));
        let plain = Audit {
            by: Some("jenkins".into()),
            build_url: None,
        };
        assert_eq!(
            holder_line(
                Duration::from_millis(1500),
                &holder_text("plan", &plain, "t")
            )
            .unwrap(),
            "hold 2 {\"action\":\"plan\",\"buildUrl\":null,\"by\":\"jenkins\",\"since\":\"t\"}\n"
        );
    }

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
