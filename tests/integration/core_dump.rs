//! A crash writes no secret to disk, and a running hostenv's memory and
//! environment are closed to other processes of its user: the process makes
//! itself non-dumpable (and its core size 0) before it reads anything.
//!
//! Both are checked against a control: the same abort of a dumpable program
//! does leave a core, and its environment can be read.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::TempDir;

const CORE_PATTERN: &str = "/proc/sys/kernel/core_pattern";
const CANARY: &str = "CANARY-core-dump-jwt-secret";
/// `nobody`: a user other than root, as a CI agent's is.
const USER: &str = "65534";

/// Points the kernel's core files at a directory for the test, and puts the
/// machine's setting back when dropped (also when the test fails).
struct CorePattern(String);

impl CorePattern {
    fn set(dir: &Path) -> CorePattern {
        let before = std::fs::read_to_string(CORE_PATTERN).expect("core_pattern");
        std::fs::write(CORE_PATTERN, format!("{}/core.%e.%p", dir.display())).unwrap();
        CorePattern(before)
    }
}

impl Drop for CorePattern {
    fn drop(&mut self) {
        let _ = std::fs::write(CORE_PATTERN, self.0.trim_end());
    }
}

/// `program args` as `nobody`, with core dumps allowed, a canary secret in
/// its environment and stdin left open (a request that never ends).
fn start(program: &Path, args: &[&str]) -> Child {
    Command::new("setpriv")
        .args([
            &format!("--reuid={USER}"),
            &format!("--regid={USER}"),
            "--clear-groups",
            "sh",
            "-c",
            r#"ulimit -c unlimited; exec "$@""#,
            "sh",
        ])
        .arg(program)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("JWT_SECRET", CANARY)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("setpriv")
}

/// The process's PID once `sh` has exec'd the program (its `comm` is the program's).
fn running(child: &Child, name: &str) -> u32 {
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == name {
            // A moment more, so that it is blocked on its stdin.
            std::thread::sleep(Duration::from_millis(300));
            return pid;
        }
        assert!(Instant::now() < deadline, "{name} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `nobody` can read the process's environment.
fn environ_readable(pid: u32) -> bool {
    Command::new("setpriv")
        .args([
            &format!("--reuid={USER}"),
            &format!("--regid={USER}"),
            "--clear-groups",
            "cat",
            &format!("/proc/{pid}/environ"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

fn abort(mut child: Child) {
    assert!(Command::new("kill")
        .args(["-ABRT", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let _ = child.wait();
}

fn cores(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|entry| entry.path())
        .collect()
}

#[test]
fn an_aborted_run_leaves_no_core_and_its_memory_is_closed() {
    let dir = TempDir::new("cores");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    // nobody must be able to run the binary: a copy outside the work tree.
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let hostenv = bin.join("hostenv");
    std::fs::copy(env!("CARGO_BIN_EXE_hostenv"), &hostenv).unwrap();
    let cores_dir = dir.path().join("cores");
    std::fs::create_dir(&cores_dir).unwrap();
    std::fs::set_permissions(&cores_dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let _pattern = CorePattern::set(&cores_dir);

    // The control: a dumpable program, aborted the same way, leaves a core
    // and shows its environment.
    let control = start(Path::new("/bin/sleep"), &["30"]);
    let pid = running(&control, "sleep");
    assert!(environ_readable(pid), "the control's environment is closed");
    abort(control);
    let found = cores(&cores_dir);
    assert_eq!(found.len(), 1, "the control left no core: {found:?}");
    std::fs::remove_file(&found[0]).unwrap();

    // hostenv waiting for its request with a secret bound: closed, and no core.
    let run = start(&hostenv, &["check"]);
    let pid = running(&run, "hostenv");
    assert!(
        !environ_readable(pid),
        "another process of the user reads hostenv's environment"
    );
    abort(run);
    std::thread::sleep(Duration::from_millis(200));
    let found = cores(&cores_dir);
    for core in &found {
        let bytes = std::fs::read(core).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(CANARY),
            "the secret is in {}",
            core.display()
        );
    }
    assert_eq!(found, Vec::<PathBuf>::new(), "hostenv left a core file");
}
