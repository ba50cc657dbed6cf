//! Request limits and the command line's own errors, which still answer in JSON.

use std::collections::BTreeMap;

use crate::common::{repo_root, run_hostenv};

#[test]
fn a_request_over_one_mebibyte_is_refused_unread() {
    let padding = "x".repeat(1024 * 1024);
    let request =
        format!("{{\"apiVersion\":\"hostenv/v1\",\"kind\":\"Deploy\",\"service\":\"{padding}\"}}");
    let run = run_hostenv(
        &["check"],
        &repo_root(),
        &BTreeMap::new(),
        Some(request.as_bytes()),
    );
    assert_eq!(run.code, 2);
    let result = run.json();
    assert_eq!(result["error"]["kind"], "requestTooLarge");
    assert_eq!(result["hosts"], serde_json::json!([]));
}

#[test]
fn a_usage_error_still_prints_one_result_document() {
    let run = run_hostenv(
        &["check", "--no-such-flag"],
        &repo_root(),
        &BTreeMap::new(),
        None,
    );
    assert_eq!(run.code, 2);
    assert_eq!(run.json()["error"]["kind"], "usage");
    assert!(run.stderr.contains("--no-such-flag"));
    // The whole message reaches the result, the missing argument included.
    let run = run_hostenv(&["schema"], &repo_root(), &BTreeMap::new(), None);
    assert_eq!(run.code, 2);
    let message = run.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.starts_with("the following required arguments were not provided:")
            && message.contains("<WHICH>")
            && !message.contains("Usage:"),
        "{message}"
    );
}

#[test]
fn a_missing_request_file_is_its_own_error() {
    let run = run_hostenv(
        &["check", "--request", "/nonexistent/request.json"],
        &repo_root(),
        &BTreeMap::new(),
        None,
    );
    assert_eq!(run.code, 2);
    assert_eq!(run.json()["error"]["kind"], "requestUnreadable");
}

#[test]
fn a_rejected_request_is_one_failing_junit_testcase() {
    let dir = crate::common::TempDir::new("junit");
    let junit = dir.path().join("result.xml");
    let run = run_hostenv(
        &["check", "--junit", junit.to_str().unwrap()],
        dir.path(),
        &BTreeMap::new(),
        Some(br#"{"apiVersion": "hostenv/v1", "kind": "Deploy", "service": "a<b>"}"#),
    );
    assert_eq!(run.code, 2);
    let parsed = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import sys, xml.etree.ElementTree as ET\n\
             case = ET.parse(sys.argv[1]).getroot().find('./testsuite/testcase')\n\
             print(case.get('name'), case.find('failure').get('type'))",
        )
        .arg(&junit)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&parsed.stdout).trim(),
        "check request invalidRequest",
        "{}",
        String::from_utf8_lossy(&parsed.stderr)
    );
}

/// A usage error reports the action that was typed, and no action when the
/// arguments named none; a failed `sudoers` is `sudoers`.
#[test]
fn a_usage_error_names_the_action_typed() {
    let empty = BTreeMap::new();
    for (args, action) in [
        (&["deploy", "--bogus"][..], Some("deploy")),
        (&["rollback", "--to"], Some("rollback")),
        (&["host-install", "--no-such"], Some("host-install")),
        (&["version", "--no-such"], Some("version")),
        (&["schema"], Some("schema")),
        (&[], None),
        (&["deploy-everything"], None),
        (&["--bogus"], None),
    ] {
        let run = run_hostenv(args, &repo_root(), &empty, Some(b"{}"));
        assert_eq!(run.code, 2, "{args:?}: {}", run.stdout);
        let result = run.json();
        assert_eq!(result["error"]["kind"], "usage", "{args:?}");
        assert_eq!(result["action"].as_str(), action, "{args:?}: {result:#}");
        assert_eq!(result.get("action").is_some(), action.is_some(), "{args:?}");
    }
    let run = run_hostenv(&["sudoers"], &repo_root(), &empty, Some(b"{}"));
    assert_eq!(run.code, 2, "{}", run.stdout);
    assert_eq!(run.json()["action"], "sudoers");
}

#[test]
fn each_action_takes_only_its_own_flags() {
    let refused = [
        &["check", "--to", "3"][..],
        &["check", "--plan-key-env", "KEY"],
        &["drift", "--expect-plan", "abc", "--plan-key-env", "KEY"],
        &["plan", "--to", "2"],
        &["plan", "--expect-plan", "abc", "--plan-key-env", "KEY"],
        &["rollback", "--plan-key-env", "KEY"],
        &["build-env", "--to", "1"],
        &["host-install", "--to", "1"],
        &["sudoers", "--junit", "x.xml"],
    ];
    for args in refused {
        let run = run_hostenv(args, &repo_root(), &BTreeMap::new(), Some(b"{}"));
        assert_eq!(run.code, 2, "{args:?}: {}", run.stdout);
        assert_eq!(run.json()["error"]["kind"], "usage", "{args:?}");
    }
    // Where they belong, they are read (and here the empty request is what is refused).
    for args in [
        &["rollback", "--to", "2"][..],
        &["plan", "--plan-key-env", "KEY"],
        &["deploy", "--plan-key-env", "KEY", "--expect-plan", "abc"],
    ] {
        let mut env = BTreeMap::new();
        env.insert("KEY".to_string(), "k".repeat(32));
        let run = run_hostenv(args, &repo_root(), &env, Some(b"{}"));
        assert_ne!(run.json()["error"]["kind"], "usage", "{args:?}");
    }
}

/// A rendered file a host would refuse (4 MiB or more: systemd before v249
/// does not read it, and the host program takes no more) is refused by every
/// action before any host is contacted, naming the keys that take the most
/// room and no value.
#[test]
fn a_file_too_large_for_a_host_is_refused_before_any_host() {
    let work = crate::common::TempDir::new("too-large");
    let keys: Vec<String> = (0..34).map(|i| format!("BIG_{i:02}")).collect();
    let contract: String = keys.iter().map(|k| format!("{k}=\n")).collect();
    std::fs::write(work.path().join("big.env.example"), contract).unwrap();
    let mut env = BTreeMap::new();
    let mut sources = serde_json::Map::new();
    let mut values = Vec::new();
    for (index, key) in keys.iter().enumerate() {
        // The value spells the lock channel's requests: it is data all the same.
        let unit = format!("{index:02}\nx1 restore voxbridge 0\n0\n");
        let length = if key == "BIG_07" { 130_000 } else { 125_000 };
        let value: String = unit.repeat(length / unit.len() + 1)[..length].to_string();
        let file = work.path().join(key);
        std::fs::write(&file, &value).unwrap();
        env.insert(key.clone(), file.display().to_string());
        values.push(value);
        sources.insert(key.clone(), serde_json::json!({"secretFileEnv": key}));
    }
    env.insert("SSH_AUTH_SOCK".into(), "/nonexistent/agent.sock".into());
    let request = serde_json::json!({
        "apiVersion": "hostenv/v1", "kind": "Deploy", "service": "voxbridge",
        "contract": "big.env.example", "hosts": ["192.0.2.1"], "env": sources,
        "ssh": {"agent": true}
    })
    .to_string();
    for action in ["check", "plan", "deploy", "drift"] {
        let run = run_hostenv(&[action], work.path(), &env, Some(request.as_bytes()));
        assert_eq!(run.code, 2, "{action}: {}", run.stdout);
        let result = run.json();
        assert_eq!(result["error"]["kind"], "fileTooLarge", "{action}");
        assert_eq!(result["error"]["field"], "/env");
        let message = result["error"]["message"].as_str().unwrap();
        assert!(message.contains("`BIG_07`"), "{message}");
        assert_eq!(result["hosts"], serde_json::json!([]));
        for value in &values {
            assert!(!run.stdout.contains(&value[..40]) && !run.stderr.contains(&value[..40]));
        }
    }
}

/// A file within the environment's bound that its escapes take past the
/// 2 MiB systemd v219 reads (a backslash is written as two) is refused before
/// any host unless `target.systemdMin` says the hosts read more; the message
/// names the size, the limit and the version.
#[test]
fn a_file_over_its_oldest_systemds_limit_needs_a_newer_minimum() {
    let work = crate::common::TempDir::new("over-v219");
    let keys: Vec<String> = (0..10).map(|i| format!("SLASHES_{i}")).collect();
    let contract: String = keys.iter().map(|k| format!("{k}=\n")).collect();
    std::fs::write(work.path().join("slashes.env.example"), contract).unwrap();
    let mut env = BTreeMap::new();
    let mut sources = serde_json::Map::new();
    for key in &keys {
        let file = work.path().join(key);
        std::fs::write(&file, "\\".repeat(110_000)).unwrap();
        env.insert(key.clone(), file.display().to_string());
        sources.insert(key.clone(), serde_json::json!({"secretFileEnv": key}));
    }
    let request = |target: serde_json::Value| {
        serde_json::json!({
            "apiVersion": "hostenv/v1", "kind": "Deploy", "service": "voxbridge",
            "contract": "slashes.env.example", "hosts": ["192.0.2.1"], "env": sources,
            "target": target, "ssh": {"agent": true}
        })
        .to_string()
    };
    let run = run_hostenv(
        &["check", "--ssh-unbound"],
        work.path(),
        &env,
        Some(request(serde_json::json!({})).as_bytes()),
    );
    assert_eq!(run.code, 2, "{}", run.stdout);
    let error = &run.json()["error"];
    assert_eq!(error["kind"], "fileTooLarge");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("the rendered file would be 2200")
            && message.contains("systemd v219")
            && message.contains("reads at most 2097152 bytes")
            && message.contains("`target.systemdMin`"),
        "{message}"
    );
    let run = run_hostenv(
        &["check", "--ssh-unbound"],
        work.path(),
        &env,
        Some(request(serde_json::json!({"systemdMin": 247})).as_bytes()),
    );
    assert_eq!(run.code, 0, "{}", run.stdout);
}

/// `--junit FILE` is checked before anything is done: its directory is made
/// when missing (a fresh clone has no `test-results/`), and a path that
/// cannot be written refuses the run (exit 2) naming it. A file that still
/// cannot be written once the run is over leaves the outcome as it was and
/// is named in `outputErrors`.
#[test]
fn output_files_are_checked_before_the_run_and_never_rewrite_its_outcome() {
    let work = crate::common::TempDir::new("junit-output");
    let request = std::fs::read(repo_root().join("examples/voxbridge.json")).unwrap();
    let check = |junit: &str| {
        run_hostenv(
            &[
                "check",
                "--secrets-unbound",
                "--ssh-unbound",
                "--junit",
                junit,
            ],
            &repo_root(),
            &BTreeMap::new(),
            Some(&request),
        )
    };
    let fresh = work.path().join("test-results/hostenv/voxbridge.xml");
    let run = check(fresh.to_str().unwrap());
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert!(std::fs::read_to_string(&fresh)
        .unwrap()
        .contains("<testsuite"));

    let a_file = work.path().join("a-file");
    std::fs::write(&a_file, "").unwrap();
    for (junit, why) in [
        (work.path().to_path_buf(), "it is a directory"),
        (a_file.join("x.xml"), "its directory cannot be made"),
    ] {
        let run = check(junit.to_str().unwrap());
        assert_eq!(run.code, 2, "{}", run.stdout);
        let error = &run.json()["error"];
        assert_eq!(error["kind"], "outputUnwritable", "{error}");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains(&format!(
                "--junit `{}` cannot be written: {why}",
                junit.display()
            )),
            "{message}"
        );
    }

    // Writable when checked, full when written.
    let run = check("/dev/full");
    assert_eq!(run.code, 0, "{}", run.stdout);
    let result = run.json();
    assert_eq!(result["ok"], true);
    assert_eq!(result["outputErrors"][0]["path"], "/dev/full");
    assert!(
        result["outputErrors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("No space left on device"),
        "{result:#}"
    );
}

/// `sudoers --user` starts every printed rule: a name with sudoers syntax in
/// it would be a rule of its own, and is refused.
#[test]
fn sudoers_takes_only_a_user_name() {
    let request = std::fs::read(repo_root().join("examples/voxbridge.json")).unwrap();
    let run = run_hostenv(
        &["sudoers", "--user", "ci"],
        &repo_root(),
        &BTreeMap::new(),
        Some(&request),
    );
    assert_eq!(run.code, 0, "{}", run.stdout);
    let rules: Vec<&str> = run.stdout.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(rules.len(), 2, "{}", run.stdout);
    assert!(rules
        .iter()
        .all(|r| r
            .starts_with("ci ALL=(root) NOPASSWD: /usr/local/sbin/hostenv-host lock voxbridge ")));
    for user in ["ALL ALL=(ALL) NOPASSWD: ALL\n#", "deploy,root", "%wheel"] {
        let run = run_hostenv(
            &["sudoers", "--user", user],
            &repo_root(),
            &BTreeMap::new(),
            Some(&request),
        );
        assert_eq!(run.code, 2, "{user:?}: {}", run.stdout);
        assert_eq!(run.json()["error"]["kind"], "usage");
        assert!(!run.stdout.contains("hostenv-host lock"), "{}", run.stdout);
    }
}
