//! A fresh machine of this project's kind passes the tests only if every
//! program they run is there: either it comes with the machine
//! (`tests/fresh-machine/debian-packages.txt`, the packages a new machine
//! has) or `scripts/setup.sh` installs it. A green CI on a machine where an
//! earlier session installed something by hand proves neither.

use std::collections::BTreeSet;
use std::path::Path;

use crate::common::repo_root;

/// Every external program the tests, the testbed and the scripts CI runs
/// start, and the Debian package that provides it.
const PROGRAMS: &[(&str, &str)] = &[
    // Started by the Rust tests and examples (checked against the sources below).
    ("bash", "bash"),
    ("sh", "dash"),
    ("git", "git"),
    ("grep", "grep"),
    ("groovy", "groovy"),
    ("iptables", "iptables"),
    ("kill", "procps"),
    ("node", "nodejs"),
    ("nsenter", "util-linux"),
    ("pgrep", "procps"),
    ("pkill", "procps"),
    ("python3", "python3"),
    ("setpriv", "util-linux"),
    ("sha256sum", "coreutils"),
    ("ss", "iproute2"),
    ("ssh-keygen", "openssh-client"),
    ("ssh-keyscan", "openssh-client"),
    ("strace", "strace"),
    // Run by the testbed hosts (tests/testbed/launch.sh, the units, the tests' shell lines).
    ("unshare", "util-linux"),
    ("mount", "mount"),
    ("umount", "mount"),
    ("hostname", "hostname"),
    ("su", "util-linux"),
    ("sshd", "openssh-server"),
    ("systemd", "systemd"),
    ("systemctl", "systemd"),
    ("sudo", "sudo"),
    ("visudo", "sudo"),
    ("getent", "libc-bin"),
    ("mkfifo", "coreutils"),
    ("find", "findutils"),
    ("stat", "coreutils"),
    // Run by scripts/test.sh, and by scripts/release.sh (which the tests run).
    ("npm", "npm"),
    ("ldd", "libc-bin"),
    ("tar", "tar"),
    ("gzip", "gzip"),
    ("musl-gcc", "musl-tools"),
    // Run by scripts/setup.sh to make the other generations' trees, whose own
    // programs (dpkg-query, dbus-daemon, their systemd, sshd, sudo) run their hosts.
    ("debootstrap", "debootstrap"),
];

/// Programs only the benchmark runs; scripts/bench.sh installs them itself.
const BENCHMARK_ONLY: &[&str] = &["/usr/bin/time"];

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap()
}

/// The Debian packages a new machine has.
fn baseline() -> BTreeSet<String> {
    read("tests/fresh-machine/debian-packages.txt")
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split('\t').next())
        .map(str::to_string)
        .collect()
}

/// The packages scripts/setup.sh installs when they are missing: the
/// `path:package` pairs of its check list and its `missing+=(package)` lines.
fn installed_by_setup() -> BTreeSet<String> {
    let setup = read("scripts/setup.sh");
    let mut packages = BTreeSet::new();
    for word in setup.split_whitespace() {
        let word = word.trim_end_matches(';');
        if let Some((path, package)) = word.split_once(':') {
            if path.starts_with('/') && !package.is_empty() && !package.contains(['$', '}']) {
                packages.insert(package.to_string());
            }
        }
        if let Some(package) = word
            .strip_prefix("missing+=(")
            .and_then(|w| w.strip_suffix(')'))
            .filter(|p| !p.starts_with('"'))
        {
            packages.insert(package.to_string());
        }
    }
    packages
}

/// Every `Command::new("...")` literal in the Rust sources under `dir`.
fn started_programs(dir: &Path, found: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            started_programs(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("fresh_machine.rs")
        {
            let text = std::fs::read_to_string(&path).unwrap();
            for piece in text.split("Command::new(\"").skip(1) {
                if let Some((program, _)) = piece.split_once('"') {
                    found.insert(program.to_string());
                }
            }
        }
    }
}

#[test]
fn every_program_the_tests_run_is_on_a_fresh_machine_or_installed_by_setup() {
    let mut started = BTreeSet::new();
    started_programs(&repo_root().join("tests"), &mut started);
    started_programs(&repo_root().join("examples"), &mut started);
    let listed: BTreeSet<&str> = PROGRAMS.iter().map(|(program, _)| *program).collect();
    for program in &started {
        assert!(
            listed.contains(program.as_str()) || BENCHMARK_ONLY.contains(&program.as_str()),
            "a test runs `{program}`: list it in PROGRAMS with the package that provides it"
        );
    }
    let (baseline, setup) = (baseline(), installed_by_setup());
    assert!(baseline.len() > 500, "the baseline list is not a machine's");
    assert!(
        setup.contains("openssh-server") && setup.contains("nodejs"),
        "{setup:?}"
    );
    let missing: Vec<String> = PROGRAMS
        .iter()
        .filter(|(_, package)| !baseline.contains(*package) && !setup.contains(*package))
        .map(|(program, package)| format!("{program} ({package})"))
        .collect();
    assert!(
        missing.is_empty(),
        "a fresh machine lacks these and scripts/setup.sh does not install them: {}",
        missing.join(", ")
    );
    let bench = read("scripts/bench.sh");
    for program in BENCHMARK_ONLY {
        assert!(
            bench.contains(program),
            "scripts/bench.sh does not install {program}"
        );
    }
}
