//! `hostenv lint` on real git repositories laid out like the platform's:
//! `<service>/.env.example` per service, the console with a committed brand
//! file, and the library's credential maps from `resources/io/hostenv/credentials/`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use pretty_assertions::assert_eq;
use serde_json::{json, Value};

use crate::common::{assert_no_leak, repo_root, run_hostenv, Run, TempDir};

const SERVICES: [&str; 3] = ["voxbridge", "voxcore", "voxdialler"];
/// Values that look like credentials; no form of them may reach the output.
const LEAKED_TOKEN: &str = "ghp_R3alT0kenAbcdefghijklmnopqrstuvwxyz12";
const LEAKED_URI: &str = "mongodb://admin:Hunter2-real@db.internal:27017";

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .status()
        .expect("git runs");
    assert!(status.success(), "git {args:?}");
}

/// A clean platform repository: contracts from examples/, `.env` ignored, the
/// console's brand file committed and named by its BuildEnv request.
fn platform_repo(label: &str) -> TempDir {
    let repo = TempDir::new(label);
    let dir = repo.path();
    git(dir, &["init", "-q"]);
    for service in SERVICES {
        std::fs::create_dir_all(dir.join(service)).unwrap();
        std::fs::copy(
            repo_root().join(format!("examples/{service}/.env.example")),
            dir.join(service).join(".env.example"),
        )
        .unwrap();
    }
    std::fs::create_dir_all(dir.join("console/brands/ori")).unwrap();
    std::fs::write(
        dir.join("console/.env.example"),
        "VITE_API_URL=https://api.example\nVITE_BRAND_NAME=Brand\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("console/brands/ori/.env"),
        "VITE_API_URL=https://api.ori.example\nVITE_BRAND_NAME=Ori\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("console/build-env.json"),
        json!({"apiVersion": "hostenv/v1", "kind": "BuildEnv", "contract": "console/.env.example",
               "from": "console/brands/ori/.env", "output": "console/.env"})
        .to_string(),
    )
    .unwrap();
    std::fs::write(dir.join(".gitignore"), ".env\n").unwrap();
    git(dir, &["add", "-A"]);
    git(dir, &["add", "-f", "console/brands/ori/.env"]);
    repo
}

fn lint(dir: &Path, maps: &[&str]) -> Run {
    let mut args = vec!["lint".to_string(), dir.display().to_string()];
    for map in maps {
        args.push("--credentials".into());
        args.push(
            repo_root()
                .join(format!("resources/io/hostenv/credentials/{map}.json"))
                .display()
                .to_string(),
        );
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = run_hostenv(&args, dir, &BTreeMap::new(), None);
    let canaries = [LEAKED_TOKEN.to_string(), LEAKED_URI.to_string()];
    assert_no_leak("stdout", &run.stdout, &canaries);
    assert_no_leak("stderr", &run.stderr, &canaries);
    run
}

/// Each finding as `kind file:line key`.
fn findings(result: &Value) -> Vec<String> {
    result["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let line = f["line"]
                .as_u64()
                .map(|l| format!(":{l}"))
                .unwrap_or_default();
            let key = f["key"]
                .as_str()
                .map(|k| format!(" {k}"))
                .unwrap_or_default();
            format!(
                "{} {}{line}{key}",
                f["kind"].as_str().unwrap(),
                f["file"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn a_clean_repository_passes_with_the_library_credential_maps() {
    let repo = platform_repo("lint-clean");
    let run = lint(repo.path(), &SERVICES);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let result = run.json();
    assert_eq!(result["findings"], json!([]));
    assert_eq!(result["error"], Value::Null);
}

#[test]
fn every_finding_names_its_file_line_and_key_never_the_value() {
    let repo = platform_repo("lint-findings");
    let dir = repo.path();
    // A real-looking token and a URI with a password as placeholders.
    std::fs::write(
        dir.join("voxcore/.env.example"),
        format!("VOXCORE_SECRET=change-me\nOPENAI_API_KEY={LEAKED_TOKEN}\nMINIO_ACCESS_KEY=\nMINIO_SECRET_KEY=\nLOG_LEVEL=info\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("voxdialler/.env.example"),
        format!("VOXCORE_SECRET=change-me\nLIVEKIT_API_KEY=\nLIVEKIT_API_SECRET=\nMONGODB_URI=\"{LEAKED_URI}\"\nLOG_LEVEL=info\nLOG_LEVEL=debug\n"),
    )
    .unwrap();
    // A committed .env, and the brand file with a credential in it.
    std::fs::write(
        dir.join("voxbridge/.env"),
        format!("JWT_SECRET={LEAKED_TOKEN}\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("console/brands/ori/.env"),
        format!("VITE_API_URL=https://api.ori.example\nVITE_SENTRY_TOKEN={LEAKED_TOKEN}\n"),
    )
    .unwrap();
    git(
        dir,
        &[
            "add",
            "-f",
            "voxbridge/.env",
            "console/brands/ori/.env",
            "voxcore",
            "voxdialler",
        ],
    );
    let run = lint(dir, &[]);
    assert_eq!(run.code, 4, "{}", run.stdout);
    let result = run.json();
    assert_eq!(
        findings(&result),
        [
            "secretInContract voxcore/.env.example:2 OPENAI_API_KEY",
            "contractInvalid voxdialler/.env.example:6",
            "secretInBrandFile console/brands/ori/.env:2 VITE_SENTRY_TOKEN",
            "envFileTracked voxbridge/.env",
        ]
    );
    assert_eq!(result["error"]["kind"], "lintFindings");
    assert!(
        run.stderr.contains("hostenv lint: voxcore/.env.example:2:"),
        "{}",
        run.stderr
    );

    // Once the duplicate is gone, the URI's password is found too.
    std::fs::write(
        dir.join("voxdialler/.env.example"),
        format!("VOXCORE_SECRET=change-me\nLIVEKIT_API_KEY=\nLIVEKIT_API_SECRET=\nMONGODB_URI=\"{LEAKED_URI}\"\nLOG_LEVEL=info\n"),
    )
    .unwrap();
    let result = lint(dir, &[]).json();
    assert!(findings(&result)
        .contains(&"secretInContract voxdialler/.env.example:4 MONGODB_URI".to_string()));
}

#[test]
fn env_must_be_ignored_where_a_service_keeps_it() {
    let repo = platform_repo("lint-ignore");
    let dir = repo.path();
    std::fs::write(dir.join(".gitignore"), "voxbridge/.env\n").unwrap();
    let result = lint(dir, &[]).json();
    assert_eq!(
        findings(&result),
        [
            "envFileNotIgnored .gitignore",
            "envFileNotIgnored .gitignore",
            "envFileNotIgnored .gitignore",
            "envFileNotIgnored .gitignore",
        ]
    );
    let messages: Vec<&str> = result["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["message"].as_str().unwrap())
        .collect();
    for env in [
        "`.env`",
        "`console/.env`",
        "`voxcore/.env`",
        "`voxdialler/.env`",
    ] {
        assert!(
            messages.iter().any(|m| m.starts_with(env)),
            "{env}: {messages:?}"
        );
    }
}

#[test]
fn a_credential_map_must_cover_the_contract_exactly() {
    let repo = platform_repo("lint-map");
    let dir = repo.path();
    // A key the map does not feed, and a map key the contract no longer has.
    std::fs::write(
        dir.join("voxbridge/.env.example"),
        "JWT_SECRET=change-me\nMONGODB_URI=\nMONGODB_DB=voxbridge\nSENTRY_DSN=\nLOG_LEVEL=info\nOTEL_API_KEY=\n",
    )
    .unwrap();
    let run = lint(dir, &["voxbridge"]);
    assert_eq!(run.code, 4, "{}", run.stdout);
    let map = repo_root().join("resources/io/hostenv/credentials/voxbridge.json");
    let map = map.display();
    assert_eq!(
        findings(&run.json()),
        [
            "keyWithoutSource voxbridge/.env.example:4 SENTRY_DSN".to_string(),
            format!("sourceNotInContract {map} REDIS_URL"),
            "keyWithoutSource voxbridge/.env.example:4 SENTRY_DSN".to_string(),
            format!("sourceNotInContract {map} REDIS_URL"),
        ],
        "once per environment (production, staging)"
    );
}

#[test]
fn a_directory_outside_git_is_rejected() {
    let dir = TempDir::new("lint-no-git");
    let run = run_hostenv(&["lint", "."], dir.path(), &BTreeMap::new(), None);
    assert_eq!(run.code, 2, "{}", run.stdout);
    assert_eq!(run.json()["error"]["kind"], "lintPathInvalid");
}

/// This repository lints clean with exactly the exclusions CONTRIBUTING.md
/// documents (fixtures that are broken on purpose), and without them the
/// fixtures are found: the exclusions hide nothing else.
#[test]
fn this_repository_lints_clean_with_its_documented_exclusions() {
    let page = std::fs::read_to_string(repo_root().join("CONTRIBUTING.md")).unwrap();
    let line = page
        .lines()
        .find(|line| line.starts_with("hostenv lint . --exclude"))
        .expect("CONTRIBUTING.md documents the repository's lint line");
    let args: Vec<&str> = line.split_whitespace().skip(1).collect();
    let run = run_hostenv(&args, &repo_root(), &BTreeMap::new(), None);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(run.json()["findings"], serde_json::json!([]));
    let everything = run_hostenv(&["lint", "."], &repo_root(), &BTreeMap::new(), None);
    assert_eq!(everything.code, 4, "{}", everything.stdout);
    let result = everything.json();
    let files: Vec<&str> = result["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["file"].as_str().unwrap())
        .collect();
    assert!(
        files
            .iter()
            .all(|f| f.starts_with("tests/cases/") || f.starts_with("fuzz/corpus/")),
        "{files:?}"
    );
}

/// A credential map is held to its contract's rules: an environment that
/// binds both speech-to-text providers, or neither language model, is named;
/// a rule that names a key the contract lacks fails the contract, naming its line.
#[test]
fn credential_maps_are_held_to_the_contracts_rules() {
    let repo = platform_repo("lint-rules");
    let mut map: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("resources/io/hostenv/credentials/voxcore.json"))
            .unwrap(),
    )
    .unwrap();
    let production = &mut map["environments"]["production"]["credentials"];
    production
        .as_array_mut()
        .unwrap()
        .push(json!({"id": "voxcore-soniox-api-key", "key": "SONIOX_API_KEY", "type": "string"}));
    let staging = &mut map["environments"]["staging"]["credentials"];
    staging
        .as_array_mut()
        .unwrap()
        .retain(|c| c["key"] != "OPENAI_API_KEY");
    let path = repo.path().join("voxcore-map.json");
    std::fs::write(&path, map.to_string()).unwrap();
    let run = run_hostenv(
        &["lint", ".", "--credentials", path.to_str().unwrap()],
        repo.path(),
        &BTreeMap::new(),
        None,
    );
    assert_eq!(run.code, 4, "{}", run.stdout);
    let found: Vec<String> = findings(&run.json());
    let rules: Vec<&String> = found
        .iter()
        .filter(|f| f.starts_with("ruleUnmet"))
        .collect();
    assert_eq!(rules.len(), 2, "{found:#?}");
    let text = run.stdout.clone();
    assert!(
        text.contains(
            "environment `production`: exactly one of `SONIOX_API_KEY`, `DEEPGRAM_API_KEY`"
        ),
        "{text}"
    );
    assert!(
        text.contains("environment `staging`: exactly one of `OPENAI_API_KEY`, `GOOGLE_API_KEY`"),
        "{text}"
    );

    // A rule about a key the contract lacks: the contract is invalid at that line.
    let contract = repo.path().join("voxcore/.env.example");
    let text = std::fs::read_to_string(&contract).unwrap();
    std::fs::write(&contract, format!("{text}# hostenv: bool NO_SUCH_KEY\n")).unwrap();
    let lines = text.lines().count() + 1;
    let run = run_hostenv(&["lint", "."], repo.path(), &BTreeMap::new(), None);
    let found = findings(&run.json());
    assert!(
        found.contains(&format!("contractInvalid voxcore/.env.example:{lines}")),
        "{found:#?}"
    );
}
