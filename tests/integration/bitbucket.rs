//! The Bitbucket Pipelines example: the pipeline file validates against
//! Atlassian's published schema (shipped by check-jsonschema, installed by
//! scripts/setup.sh), and the request it deploys passes `hostenv check` with the
//! deployment variables a Bitbucket step would have.

use std::collections::BTreeMap;
use std::process::Command;

use crate::common::{assert_no_leak, repo_root, run_hostenv, TempDir};

fn validate(file: &std::path::Path) -> std::process::Output {
    let checker = repo_root().join("target/tools/venv/bin/check-jsonschema");
    Command::new(&checker)
        .args(["--builtin-schema", "vendor.bitbucket-pipelines"])
        .arg(file)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{} runs (scripts/setup.sh installs it): {e}",
                checker.display()
            )
        })
}

#[test]
fn the_pipeline_example_matches_atlassians_schema() {
    let example = repo_root().join("examples/bitbucket-pipelines.yml");
    let output = validate(&example);
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // The check can fail: a step with a trigger Bitbucket does not know is refused.
    let broken = TempDir::new("bitbucket");
    let text = std::fs::read_to_string(&example).unwrap();
    assert!(text.contains("trigger: manual"));
    let path = broken.path().join("bitbucket-pipelines.yml");
    std::fs::write(&path, text.replace("trigger: manual", "trigger: sometimes")).unwrap();
    assert!(!validate(&path).status.success());
}

#[test]
fn the_bitbucket_request_checks_with_deployment_variables() {
    let work = TempDir::new("bitbucket-request");
    std::fs::create_dir_all(work.path().join("voxbridge")).unwrap();
    std::fs::copy(
        repo_root().join("examples/voxbridge/.env.example"),
        work.path().join("voxbridge/.env.example"),
    )
    .unwrap();
    let request = std::fs::read(repo_root().join("examples/voxbridge.bitbucket.json")).unwrap();
    let env: BTreeMap<String, String> = [
        ("JWT_SECRET", "CANARY-bitbucket-jwt"),
        ("MONGODB_URI", "CANARY-bitbucket-mongo"),
        ("REDIS_URL", "CANARY-bitbucket-redis"),
        // base64, as a secured variable holds them (no newlines).
        ("HOSTENV_SSH_KEY_B64", "Q0FOQVJZLWJpdGJ1Y2tldC1rZXkK"),
        (
            "HOSTENV_KNOWN_HOSTS_B64",
            "YXBpLTEuaW50ZXJuYWwgc3NoLWVkMjU1MTkgQUFBQQo=",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let run = run_hostenv(&["check"], work.path(), &env, Some(&request));
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let canaries: Vec<String> = env.values().cloned().collect();
    assert_no_leak("stdout", &run.stdout, &canaries);
    assert_no_leak("stderr", &run.stderr, &canaries);
}
