//! Restarting a configured unit within the configured time, and clearing a
//! failed state before a rollback's restart. The unit must be one the
//! service's configuration names (or an instance of its template).

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::config::HostConfig;
use super::{Failure, CHILD_PATH};

fn systemctl(args: &[&str]) -> Command {
    let mut command = Command::new("systemctl");
    command
        .args(args)
        .env_clear()
        .env("PATH", CHILD_PATH)
        .env("LANG", "C")
        .stdin(Stdio::null());
    command
}

fn admitted(config: &HostConfig, unit: &str) -> Result<(), Failure> {
    if config.admits_unit(unit) {
        Ok(())
    } else {
        Err(Failure::usage(format!(
            "`{unit}` is not a unit of this service's configuration"
        )))
    }
}

/// `systemctl restart`; on failure prints `result=...` (systemd's verdict,
/// `start-limit-hit` among them) and fails. systemctl's own words go to
/// `stderr`, as they would from a run of its own.
pub fn restart(
    config: &HostConfig,
    unit: &str,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<(), Failure> {
    admitted(config, unit)?;
    let mut child = systemctl(&["restart", "--", unit])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Failure::io(format!("cannot run systemctl: {e}")))?;
    // Read while it runs: a full pipe must not hold systemctl up.
    let mut said = child.stderr.take().expect("piped");
    let words = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = said.read_to_end(&mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_secs(config.restart_timeout_s);
    let succeeded = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status.success(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = writeln!(
                    stderr,
                    "hostenv-host: `{unit}` did not restart within {} s",
                    config.restart_timeout_s
                );
                break false;
            }
            Err(e) => return Err(Failure::io(format!("waiting for systemctl: {e}"))),
        }
    };
    let _ = stderr.write_all(&words.join().unwrap_or_default());
    if succeeded {
        return Ok(());
    }
    // `Result=...`, not `--value`: that option came with systemd v230.
    let verdict = systemctl(&["show", "-p", "Result", "--", unit])
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            let shown = String::from_utf8_lossy(&o.stdout);
            let value = shown.trim().strip_prefix("Result=").unwrap_or_default();
            value.to_string()
        })
        .unwrap_or_default();
    writeln!(stdout, "result={verdict}").map_err(|e| Failure::io(format!("cannot answer: {e}")))?;
    Err(Failure::silent(1))
}

/// `systemctl reset-failed`; its own failure does not matter.
pub fn reset_failed(config: &HostConfig, unit: &str) -> Result<(), Failure> {
    admitted(config, unit)?;
    let _ = systemctl(&["reset-failed", "--", unit])
        .stderr(Stdio::null())
        .status();
    Ok(())
}

/// `REALTIME MONOTONIC`, both in microseconds, read one right after the other.
pub fn clock() -> String {
    use rustix::time::{clock_gettime, ClockId};
    let micros = |t: rustix::time::Timespec| {
        i128::from(t.tv_sec) * 1_000_000 + i128::from(t.tv_nsec) / 1_000
    };
    let realtime = clock_gettime(ClockId::Realtime);
    let monotonic = clock_gettime(ClockId::Monotonic);
    format!("{} {}", micros(realtime), micros(monotonic))
}
