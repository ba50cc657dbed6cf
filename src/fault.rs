//! Test-only fault injection (cargo feature `fault-injection`, never in builds
//! for use): with `HOSTENV_PAUSE_AT=host:step` and `HOSTENV_PAUSE_FILE=path`,
//! a run about to take that step on that host says so on stderr and waits for
//! as long as the file exists, so a test can kill it, cut its connection or
//! fill a disk at an exact point, then let it go on. With
//! `HOSTENV_PANIC_AT=host:step` the run panics there instead, as a bug would.

use std::time::Duration;

/// Whether the environment asks to pause before `step` on `host`.
pub fn pauses_before(host: &str, step: &str) -> bool {
    std::env::var("HOSTENV_PAUSE_AT").is_ok_and(|at| at == format!("{host}:{step}"))
}

/// Waits here when the environment asks to pause before `step` on `host`.
pub fn pause_before(host: &str, step: &str) {
    if !pauses_before(host, step) {
        return;
    }
    let Some(file) = std::env::var_os("HOSTENV_PAUSE_FILE") else {
        return;
    };
    eprintln!("hostenv: paused before {step} on {host}");
    while std::path::Path::new(&file).exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("hostenv: resumed before {step} on {host}");
}

/// Panics before `step` on `host` when the environment asks to: a stand-in
/// for a bug in one host's run.
pub fn panic_before(host: &str, step: &str) {
    if std::env::var("HOSTENV_PANIC_AT").is_ok_and(|at| at == format!("{host}:{step}")) {
        panic!("a panic asked for before {step} on {host} (HOSTENV_PANIC_AT)");
    }
}
