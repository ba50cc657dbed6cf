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

/// Every request the pipeline deploys (one per deployment environment, and the
/// one that goes through the bastion) passes `hostenv check` with the
/// deployment variables a Bitbucket step would have.
#[test]
fn the_bitbucket_requests_check_with_deployment_variables() {
    let work = TempDir::new("bitbucket-request");
    std::fs::create_dir_all(work.path().join("voxbridge")).unwrap();
    std::fs::copy(
        repo_root().join("examples/voxbridge/.env.example"),
        work.path().join("voxbridge/.env.example"),
    )
    .unwrap();
    let pipeline =
        std::fs::read_to_string(repo_root().join("examples/bitbucket-pipelines.yml")).unwrap();
    let env: BTreeMap<String, String> = [
        ("JWT_SECRET", "CANARY-bitbucket-jwt"),
        ("MONGODB_URI", "mongodb://app:CANARY-bitbucket-mongo@db:27017"),
        ("REDIS_URL", "redis://:CANARY-bitbucket-redis@cache:6379/0"),
        // base64, as a secured variable holds them (no newlines).
        ("HOSTENV_SSH_KEY_B64", "Q0FOQVJZLWJpdGJ1Y2tldC1rZXkK"),
        // known_hosts lines with a real (throwaway) ed25519 public key: `check`
        // parses them as a deploy would before its first connection.
        (
            "HOSTENV_KNOWN_HOSTS_B64",
            "YXBpLTEuaW50ZXJuYWwgc3NoLWVkMjU1MTkgQUFBQUMzTnphQzFsWkRJMU5URTVBQUFBSU1yUUE4RlkrYVFxOTFQbnZZNGl1TjBUL29ZOUNMVmUwZ09EOU1pSGNucnUKYXBpLTIuaW50ZXJuYWwgc3NoLWVkMjU1MTkgQUFBQUMzTnphQzFsWkRJMU5URTVBQUFBSU1yUUE4RlkrYVFxOTFQbnZZNGl1TjBUL29ZOUNMVmUwZ09EOU1pSGNucnUK",
        ),
        (
            "HOSTENV_BASTION_KNOWN_HOSTS_B64",
            "YmFzdGlvbi5leGFtcGxlLmNvbSBzc2gtZWQyNTUxOSBBQUFBQzNOemFDMWxaREkxTlRFNUFBQUFJTXJRQThGWSthUXE5MVBudlk0aXVOMFQvb1k5Q0xWZTBnT0Q5TWlIY25ydQo=",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let canaries: Vec<String> = env.values().cloned().collect();
    let mut checked = Vec::new();
    for deployment in ["staging", "production"] {
        for variant in ["", ".via-bastion"] {
            let name = format!("voxbridge.{deployment}{variant}.json");
            let path = repo_root().join("examples/deploy").join(&name);
            if !path.exists() {
                continue;
            }
            let request: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            assert_eq!(request["environment"], deployment, "{name}");
            let run = run_hostenv(
                &["check"],
                work.path(),
                &env,
                Some(request.to_string().as_bytes()),
            );
            assert_eq!(run.code, 0, "{name}: {}\n{}", run.stdout, run.stderr);
            assert_no_leak("stdout", &run.stdout, &canaries);
            assert_no_leak("stderr", &run.stderr, &canaries);
            checked.push(name);
        }
    }
    assert_eq!(
        checked,
        [
            "voxbridge.staging.json",
            "voxbridge.production.json",
            "voxbridge.production.via-bastion.json"
        ]
    );
    // The pipeline deploys exactly these, and verifies the binary before it runs.
    assert!(pipeline.contains("deploy/voxbridge.$BITBUCKET_DEPLOYMENT_ENVIRONMENT.json"));
    assert!(
        pipeline.contains("deploy/voxbridge.$BITBUCKET_DEPLOYMENT_ENVIRONMENT.via-bastion.json")
    );
    assert!(pipeline.contains(r#"echo "$HOSTENV_SHA256  /tmp/hostenv.tar.gz" | sha256sum -c -"#));
    let bastion: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo_root().join("examples/deploy/voxbridge.production.via-bastion.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(bastion["verify"][0]["via"], "ssh");
    assert!(bastion["ssh"]["jump"]["host"].is_string());
}
