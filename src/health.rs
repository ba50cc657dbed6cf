//! HTTP verification after a restart: each check polls its URL until it has
//! answered the expected status enough times in a row, or its deadline passes.

use std::time::{Duration, Instant};

use crate::report::CheckReport;
use crate::settings::VerifySettings;

/// Expands `{host}` and `{instance}` in a verify URL template.
pub fn expand(template: &str, host: &str, instance: Option<&str>) -> String {
    let url = template.replace("{host}", host);
    match instance {
        Some(instance) => url.replace("{instance}", instance),
        None => url,
    }
}

/// Polls `url` as `check` says; never longer than `check.deadline_ms`.
/// `between` runs while waiting between attempts (the host lock's heartbeat).
pub fn verify(url: &str, check: &VerifySettings, between: &dyn Fn()) -> CheckReport {
    let started = Instant::now();
    let deadline = started + Duration::from_millis(check.deadline_ms);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_millis(check.timeout_ms)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut attempts = 0;
    let mut in_a_row = 0;
    let mut last_status = None;
    let mut last_error: Option<String>;
    loop {
        attempts += 1;
        match agent.get(url).call() {
            Ok(response) => {
                let status = response.status().as_u16();
                last_status = Some(status);
                last_error = None;
                if status == check.expect_status {
                    in_a_row += 1;
                } else {
                    in_a_row = 0;
                }
            }
            Err(error) => {
                in_a_row = 0;
                last_error = Some(describe(&error));
            }
        }
        if in_a_row >= check.consecutive {
            break;
        }
        let pause = Duration::from_millis(check.interval_ms);
        if Instant::now() + pause >= deadline {
            break;
        }
        between();
        std::thread::sleep(pause);
    }
    CheckReport {
        url: url.to_string(),
        ok: in_a_row >= check.consecutive,
        attempts,
        last_status,
        last_error,
        ms: started.elapsed().as_millis() as u64,
    }
}

fn describe(error: &ureq::Error) -> String {
    match error {
        ureq::Error::Io(io) => format!("connection failed: {}", io.kind()),
        ureq::Error::Timeout(_) => "timed out".to_string(),
        other => other.to_string(),
    }
}
