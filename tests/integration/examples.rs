//! The shipped examples are what a newcomer copies first: every example
//! request passes `check` with the stand-in credentials of
//! `examples/example.env` (as `scripts/example.sh` runs it), and every
//! credential id that an example or a documentation page names for a key is
//! the id the library's credential maps bind to that key.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::common::{repo_root, run_hostenv};

fn example_env() -> BTreeMap<String, String> {
    std::fs::read_to_string(repo_root().join("examples/example.env"))
        .unwrap()
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The request files directly in `examples/` and in `examples/*/` (not brand files or pipelines).
fn example_requests() -> Vec<std::path::PathBuf> {
    let root = repo_root().join("examples");
    let mut found = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() && dir == root {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "json") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

#[test]
fn every_example_request_passes_check() {
    let env = example_env();
    let mut checked = 0;
    for path in example_requests() {
        let request: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // The Bitbucket requests name Bitbucket's variables (tests/integration/bitbucket.rs
        // checks them); the quickstart's request is run by tests/integration/quickstart.rs.
        let dir = path.parent().unwrap();
        if dir.ends_with("deploy") || dir.ends_with("quickstart") {
            continue;
        }
        let Some(kind) = request["kind"].as_str() else {
            continue;
        };
        let relative = path.strip_prefix(repo_root()).unwrap().to_str().unwrap();
        assert!(
            matches!(kind, "Deploy" | "Rotation" | "BuildEnv"),
            "{relative}: {kind}"
        );
        let run = run_hostenv(&["check", "--request", relative], &repo_root(), &env, None);
        assert_eq!(run.code, 0, "{relative}:\n{}\n{}", run.stdout, run.stderr);
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} example requests");
}

/// Every (key, credential id) a credential map binds, in any environment.
fn mapped_credentials() -> BTreeSet<(String, String)> {
    let dir = repo_root().join("resources/io/hostenv/credentials");
    let mut pairs = BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let map: Value =
            serde_json::from_str(&std::fs::read_to_string(entry.path()).unwrap()).unwrap();
        for environment in map["environments"].as_object().unwrap().values() {
            for credential in environment["credentials"].as_array().unwrap() {
                let id = credential["id"].as_str().unwrap().to_string();
                for field in ["key", "usernameKey", "passwordKey"] {
                    if let Some(key) = credential[field].as_str() {
                        pairs.insert((key.to_string(), id.clone()));
                    }
                }
            }
        }
    }
    pairs
}

#[test]
fn credential_ids_are_the_credential_maps_ids() {
    let mapped = mapped_credentials();
    // `"KEY": {... "credentialId": "ID" ...}` in a request or a page's JSON.
    let named =
        regex::Regex::new(r#""([A-Z][A-Z0-9_]*)":\s*\{[^{}]*"credentialId":\s*"([^"]+)""#).unwrap();
    let root = repo_root();
    let mut files: Vec<std::path::PathBuf> = example_requests();
    files.push(root.join("README.md"));
    files.push(root.join("Jenkinsfile.example"));
    if let Ok(docs) = std::fs::read_dir(root.join("docs")) {
        files.extend(docs.flatten().map(|e| e.path()));
    }
    let mut seen = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for found in named.captures_iter(&text) {
            let pair = (found[1].to_string(), found[2].to_string());
            assert!(
                mapped.contains(&pair),
                "{} names credential `{}` for `{}`, which no credential map binds to that key",
                file.display(),
                pair.1,
                pair.0
            );
            seen += 1;
        }
    }
    assert!(seen >= 10, "only {seen} credential ids found");
}

/// The README's main job (`scripts/example.sh` ends with it): three local
/// hosts, a deploy and a rotation, every one exit 0. It runs as a program of
/// its own (its host program found the way a user's build finds it).
#[test]
fn the_main_job_runs_on_the_local_hosts() {
    let _addresses = crate::testbed::hold_addresses();
    crate::testbed::static_host_program();
    let output = std::process::Command::new(env!("CARGO"))
        .args(["run", "--quiet", "--locked", "--example", "local_deploy"])
        .current_dir(repo_root())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let results: Vec<Value> = serde_json::Deserializer::from_str(&stdout)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(results.len(), 3, "{stdout}");
    for result in &results {
        assert_eq!(
            (&result["ok"], &result["exitCode"]),
            (&Value::Bool(true), &Value::from(0)),
            "{result:#}"
        );
    }
    assert!(stderr.contains("voxdialler.service: active"), "{stderr}");
}

/// The keys of one entry of the secrets table.
fn entry_keys(entry: &Value) -> Vec<&str> {
    entry["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect()
}

/// The platform's secrets follow one table (`docs/secrets.json`, the
/// source document's): every contract declares each secret (alternatives as a
/// `one-of` rule, a conditional one as `required-when`), every environment of
/// every credential map and every example request binds each secret, exactly
/// one of each group, the conditional one when its setting says so, and the
/// catalog shares exactly the table's shared keys. A secret added to a
/// service is added everywhere, or this names where it is missing.
#[test]
fn the_platforms_data_follows_its_secrets_table() {
    let root = repo_root();
    let read = |path: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(root.join(path)).unwrap())
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    let table = read("docs/secrets.json");
    let mut missing: Vec<String> = Vec::new();
    // Does a set of bound keys (and literal settings) meet one table entry?
    let meets = |entry: &Value,
                 bound: &BTreeSet<String>,
                 settings: &BTreeMap<String, String>|
     -> Option<String> {
        let keys = entry_keys(entry);
        if let Some(when) = entry["when"].as_str() {
            let (setting, value) = when.split_once('=').unwrap();
            if settings.get(setting).map(String::as_str) != Some(value) {
                return None;
            }
        }
        let given = keys.iter().filter(|k| bound.contains(**k)).count();
        match (keys.len(), given) {
            (1, 1) => None,
            (1, _) => Some(format!("`{}` has no source", keys[0])),
            (_, 1) => None,
            (_, n) => Some(format!(
                "{n} of {} have sources, not exactly one",
                keys.join(", ")
            )),
        }
    };
    for (service, entries) in table["services"].as_object().unwrap() {
        let entries = entries.as_array().unwrap();
        // The contract: every key, and the rules that say alternatives and conditions.
        let contract_path = format!("examples/{service}/.env.example");
        let contract = std::fs::read_to_string(root.join(&contract_path)).unwrap();
        let declared: BTreeSet<&str> = contract
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .filter_map(|l| l.trim_start().trim_start_matches("export ").split_once('='))
            .map(|(k, _)| k.trim())
            .collect();
        let rules: Vec<&str> = contract
            .lines()
            .filter_map(|l| l.strip_prefix("# hostenv: "))
            .collect();
        for entry in entries {
            let keys = entry_keys(entry);
            for key in &keys {
                if !declared.contains(key) {
                    missing.push(format!("{contract_path}: `{key}` is not declared"));
                }
            }
            if keys.len() > 1 && !rules.contains(&format!("one-of {}", keys.join(" ")).as_str()) {
                missing.push(format!(
                    "{contract_path}: no `one-of {}` rule",
                    keys.join(" ")
                ));
            }
            if let Some(when) = entry["when"].as_str() {
                let rule = format!("required-when {when} {}", keys.join(" "));
                if !rules.contains(&rule.as_str()) {
                    missing.push(format!("{contract_path}: no `{rule}` rule"));
                }
            }
        }
        // Every environment of the library's credential map.
        let map_path = format!("resources/io/hostenv/credentials/{service}.json");
        let map = read(&map_path);
        for (environment, sources) in map["environments"].as_object().unwrap() {
            let mut bound = BTreeSet::new();
            for credential in sources["credentials"].as_array().unwrap() {
                for field in ["key", "usernameKey", "passwordKey"] {
                    if let Some(key) = credential[field].as_str() {
                        bound.insert(key.to_string());
                    }
                }
            }
            let settings: BTreeMap<String, String> = sources["values"]
                .as_object()
                .map(|v| {
                    v.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default();
            for entry in entries {
                if let Some(problem) = meets(entry, &bound, &settings) {
                    missing.push(format!("{map_path} environment `{environment}`: {problem}"));
                }
            }
        }
    }
    // The example requests: each deployment of a service in the table.
    for path in example_requests() {
        let request: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let deployments: Vec<&Value> = match request["kind"].as_str() {
            Some("Deploy") => vec![&request],
            Some("Rotation") => request["deployments"].as_array().unwrap().iter().collect(),
            _ => continue,
        };
        let relative = path.strip_prefix(&root).unwrap().display().to_string();
        for deployment in deployments {
            let service = deployment["service"].as_str().unwrap();
            let Some(entries) = table["services"][service].as_array() else {
                continue;
            };
            let env = deployment["env"].as_object().unwrap();
            let bound: BTreeSet<String> = env
                .iter()
                .filter(|(_, source)| source.get("value").is_none())
                .map(|(key, _)| key.clone())
                .collect();
            let settings: BTreeMap<String, String> = env
                .iter()
                .filter_map(|(key, source)| {
                    Some((key.clone(), source["value"].as_str()?.to_string()))
                })
                .collect();
            for entry in entries {
                if let Some(problem) = meets(entry, &bound, &settings) {
                    missing.push(format!("{relative} ({service}): {problem}"));
                }
            }
        }
    }
    // The catalog shares exactly the table's shared keys.
    let catalog = read("resources/io/hostenv/catalog.json");
    if catalog["shared"] != table["shared"] {
        missing.push(format!(
            "resources/io/hostenv/catalog.json: shared {} is not the table's {}",
            catalog["shared"], table["shared"]
        ));
    }
    assert!(missing.is_empty(), "{missing:#?}");
}
