//! JSON-driven cases: `tests/cases/<name>/` holds `case.json` (the command line
//! and the environment to bind), the request, the contract and other inputs, and
//! `expected.json`, the whole result with `durationMs` set to 0. Files under
//! `expected-files/` must exist with those bytes after the run. Every
//! environment value and every file under `secrets/` is a canary that must not
//! appear in stdout or stderr in any form.
//!
//! `HOSTENV_BLESS=1 cargo test cases` rewrites `expected.json` from the actual
//! output, for review in the diff.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::common::{assert_no_leak, copy_dir, repo_root, run_hostenv, TempDir};

const MIN_CANARY_LEN: usize = 8;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    #[allow(dead_code)]
    description: String,
    #[serde(default = "default_args")]
    args: Vec<String>,
    /// Feed this file on stdin instead of passing `--request`.
    #[serde(default)]
    stdin: Option<String>,
    /// The environment bound for the run; `{case}` is the case's working directory.
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Environment values that are not secrets (paths, names) and so not canaries.
    #[serde(default)]
    public_env: Vec<String>,
    /// Further secrets, such as credential-looking literals in the request.
    #[serde(default)]
    canaries: Vec<String>,
}

fn default_args() -> Vec<String> {
    vec!["check".into(), "--request".into(), "request.json".into()]
}

/// `durationMs` set to 0 and the case's working directory spelled `{case}`,
/// so that `expected.json` holds nothing that changes between runs.
fn normalise(mut result: Value, dir: &str) -> Value {
    fn replace_dir(value: &mut Value, dir: &str) {
        match value {
            Value::String(text) => *text = text.replace(dir, "{case}"),
            Value::Array(items) => items.iter_mut().for_each(|v| replace_dir(v, dir)),
            Value::Object(fields) => fields.values_mut().for_each(|v| replace_dir(v, dir)),
            _ => {}
        }
    }
    replace_dir(&mut result, dir);
    if let Some(duration) = result.get_mut("durationMs") {
        *duration = Value::from(0);
    }
    result
}

fn canaries(case: &Case, dir: &Path) -> Vec<String> {
    let mut found: Vec<String> = case
        .env
        .iter()
        .filter(|(name, _)| !case.public_env.contains(name))
        .map(|(_, value)| value.clone())
        .chain(case.canaries.iter().cloned())
        .collect();
    let secrets = dir.join("secrets");
    if secrets.is_dir() {
        for entry in std::fs::read_dir(&secrets).unwrap() {
            let text = String::from_utf8_lossy(&std::fs::read(entry.unwrap().path()).unwrap())
                .into_owned();
            found.extend(
                text.lines()
                    .filter(|l| l.len() >= MIN_CANARY_LEN)
                    .map(str::to_string),
            );
            found.push(text.trim_end().to_string());
        }
    }
    found.retain(|c| !c.is_empty());
    for canary in &found {
        assert!(
            canary.len() >= MIN_CANARY_LEN,
            "canary {canary:?} is too short to search for; mark it public_env or make it longer"
        );
    }
    found
}

fn result_validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("schema/result.schema.json")).unwrap(),
    )
    .unwrap();
    jsonschema::validator_for(&schema).expect("result schema compiles")
}

/// A copy of the case's directory to run in, its path, and the case's
/// environment with `{case}` spelled as that path.
fn workspace(
    case: &Case,
    name: &str,
    source: &Path,
) -> (TempDir, String, BTreeMap<String, String>) {
    let work = TempDir::new(name);
    copy_dir(source, work.path());
    let dir = work.path().to_str().unwrap().to_string();
    let env = case
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.replace("{case}", &dir)))
        .collect();
    (work, dir, env)
}

fn run_case(name: &str, source: &Path, validator: &jsonschema::Validator) -> Result<(), String> {
    let case: Case =
        serde_json::from_str(&std::fs::read_to_string(source.join("case.json")).unwrap())
            .map_err(|e| format!("case.json: {e}"))?;
    let (work, dir, env) = workspace(&case, name, source);
    let stdin = case
        .stdin
        .as_ref()
        .map(|file| std::fs::read(source.join(file)).unwrap());
    let args: Vec<&str> = case.args.iter().map(String::as_str).collect();
    let run = run_hostenv(&args, work.path(), &env, stdin.as_deref());
    let actual = normalise(run.json(), &dir);

    let canaries = canaries(&case, source);
    assert_no_leak(&format!("stdout of case {name}"), &run.stdout, &canaries);
    assert_no_leak(&format!("stderr of case {name}"), &run.stderr, &canaries);
    if run.stderr.trim().is_empty() {
        return Err("stderr has no human summary".into());
    }
    if let Some(error) = validator.iter_errors(&actual).next() {
        return Err(format!(
            "result does not match schema/result.schema.json: {error}"
        ));
    }
    if actual["exitCode"] != run.code {
        return Err(format!(
            "exit code {} but result says {}",
            run.code, actual["exitCode"]
        ));
    }

    let expected_path = source.join("expected.json");
    if std::env::var_os("HOSTENV_BLESS").is_some() {
        let mut text = serde_json::to_string_pretty(&actual).unwrap();
        text.push('\n');
        std::fs::write(&expected_path, text).unwrap();
    }
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(&expected_path).map_err(|e| format!("expected.json: {e}"))?,
    )
    .map_err(|e| format!("expected.json: {e}"))?;
    if expected != actual {
        return Err(format!(
            "{}",
            pretty_assertions::Comparison::new(&expected, &actual)
        ));
    }
    let expected_files = source.join("expected-files");
    for relative in files_below(&expected_files) {
        let want = std::fs::read(expected_files.join(&relative)).unwrap();
        let got = std::fs::read(work.path().join(&relative))
            .map_err(|e| format!("{relative:?} was not written: {e}"))?;
        if want != got {
            return Err(format!(
                "{relative:?} differs:\n{}",
                pretty_assertions::Comparison::new(
                    &String::from_utf8_lossy(&want),
                    &String::from_utf8_lossy(&got)
                )
            ));
        }
    }
    Ok(())
}

/// Every file under `dir`, as paths relative to it (none when it does not exist).
fn files_below(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![std::path::PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(dir.join(&relative)) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = relative.join(entry.file_name());
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

#[test]
fn json_driven_cases() {
    let root = repo_root().join("tests/cases");
    let mut names: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert!(
        names.len() >= 30,
        "expected at least 30 cases, found {}",
        names.len()
    );
    let validator = result_validator();
    let mut failures = Vec::new();
    for name in &names {
        if let Err(why) = run_case(name, &root.join(name), &validator) {
            failures.push(format!("case {name}: {why}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        names.len(),
        failures.join("\n\n")
    );
}

/// `check` is the test stage's promise that `deploy` will not reject the
/// request before its first connection: every Deploy or Rotation case that
/// `check` rejects is rejected by `deploy` with the same error, and no host
/// is contacted (the cases' hosts do not resolve).
#[test]
fn deploy_rejects_what_check_rejects() {
    let root = repo_root().join("tests/cases");
    let mut compared = 0;
    for entry in std::fs::read_dir(&root).unwrap() {
        let source = entry.unwrap().path();
        let name = source.file_name().unwrap().to_string_lossy().into_owned();
        let case: Case =
            serde_json::from_str(&std::fs::read_to_string(source.join("case.json")).unwrap())
                .unwrap();
        let expected: Value =
            serde_json::from_str(&std::fs::read_to_string(source.join("expected.json")).unwrap())
                .unwrap();
        let Ok(request) = std::fs::read_to_string(source.join("request.json")) else {
            continue;
        };
        let kind = serde_json::from_str::<Value>(&request)
            .ok()
            .and_then(|r| r["kind"].as_str().map(str::to_string));
        let rejected = expected["exitCode"] == 2;
        if case.args != default_args() || case.stdin.is_some() || !rejected {
            continue;
        }
        if !matches!(kind.as_deref(), Some("Deploy" | "Rotation")) {
            continue;
        }
        let (work, dir, env) = workspace(&case, &name, &source);
        let run = run_hostenv(
            &["deploy", "--request", "request.json"],
            work.path(),
            &env,
            None,
        );
        let deployed = normalise(run.json(), &dir);
        assert_eq!(run.code, 2, "case {name}: deploy exit {}", run.code);
        assert_eq!(
            deployed["error"], expected["error"],
            "case {name}: deploy and check reject differently"
        );
        compared += 1;
    }
    assert!(compared >= 30, "only {compared} rejected cases compared");
}
