//! HTTP verification after a restart: each check polls its URL until it has
//! answered the expected status enough times in a row, or its deadline passes.

use std::time::{Duration, Instant};

use crate::protocol::report::CheckReport;
use crate::settings::VerifySettings;

/// Expands `{host}` and `{instance}` in a verify URL template.
pub fn expand(template: &str, host: &str, instance: Option<&str>) -> String {
    let url = template.replace("{host}", host);
    match instance {
        Some(instance) => url.replace("{instance}", instance),
        None => url,
    }
}

/// One HTTP GET: the status, or why there was none.
pub type Probe<'a> = dyn Fn(&str, Duration) -> Result<u16, String> + 'a;

/// GETs from this machine for one check: every attempt goes through one
/// agent, so a service that keeps connections alive is asked again on the
/// connection of the first attempt (one round trip per attempt, not two).
pub struct Direct {
    agent: ureq::Agent,
}

impl Direct {
    pub fn new(timeout: Duration) -> Direct {
        Direct {
            agent: ureq::Agent::config_builder()
                .timeout_global(Some(timeout))
                .http_status_as_error(false)
                .build()
                .into(),
        }
    }

    /// One GET; `timeout` is the agent's own.
    pub fn get(&self, url: &str, _timeout: Duration) -> Result<u16, String> {
        let mut response = self.agent.get(url).call().map_err(|e| describe(&e))?;
        let status = response.status().as_u16();
        // The connection goes back to the agent only once its body is read;
        // a body too large for a health answer just costs the reuse.
        let _ = response
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_to_vec();
        Ok(status)
    }
}

/// `http://host[:port][/path]` → (host, port, path), for probes through SSH.
pub fn split_url(url: &str) -> Option<(String, u16, String)> {
    let uri: http::Uri = url.parse().ok()?;
    if uri.scheme_str() != Some("http") {
        return None;
    }
    let authority = uri.authority()?;
    // Nothing but the host and a port number (the URI type passes over a
    // port that is not a number, and a user's name).
    let expected = match authority.port() {
        Some(port) => format!("{}:{}", authority.host(), port.as_str()),
        None => authority.host().to_string(),
    };
    if authority.as_str() != expected {
        return None;
    }
    // An IPv6 address comes in brackets; the tunnel wants the address.
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let path = match uri.query() {
        Some(query) => format!("{}?{query}", uri.path()),
        None => uri.path().to_string(),
    };
    Some((host.to_string(), authority.port_u16().unwrap_or(80), path))
}

/// Polls `url` with `probe` as `check` says; never longer than `check.deadline_ms`.
/// `between` runs while waiting between attempts (the host lock's heartbeat).
pub fn verify(url: &str, check: &VerifySettings, probe: &Probe, between: &dyn Fn()) -> CheckReport {
    let started = Instant::now();
    let deadline = started + Duration::from_millis(check.deadline_ms);
    let timeout = Duration::from_millis(check.timeout_ms);
    let mut attempts = 0;
    let mut in_a_row = 0;
    let mut last_status = None;
    let mut last_error: Option<String>;
    loop {
        attempts += 1;
        match probe(url, timeout) {
            Ok(status) => {
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
                last_error = Some(error);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_urls_for_probes_through_ssh() {
        let split = |u| split_url(u).unwrap();
        assert_eq!(
            split("http://h:8080/health"),
            ("h".into(), 8080, "/health".into())
        );
        assert_eq!(split("http://h"), ("h".into(), 80, "/".into()));
        assert_eq!(
            split("http://[::1]:9000/x?y=1"),
            ("::1".into(), 9000, "/x?y=1".into())
        );
        assert_eq!(split("http://h:81?q"), ("h".into(), 81, "/?q".into()));
        for not_one in [
            "https://h/",
            "h:80/x",
            "http://h:port/",
            "http:///x",
            "http://u@h/",
        ] {
            assert_eq!(split_url(not_one), None, "{not_one}");
        }
    }
}
