//! `hostenv lint [PATH]`: keeps a service repository honest before anything is
//! deployed. Source control holds `.env.example` contracts with placeholders,
//! never a real `.env`:
//!
//! - every `.env.example` parses, has no duplicate keys, and holds placeholders
//!   that do not look like credentials (the one detector, detect.rs);
//! - no `.env` (or `.env.local`, `.env.production`...) is tracked by git, and
//!   `.env` is ignored beside every contract and at the top — except a brand file
//!   a BuildEnv request names as its `from`, which is scanned for credentials;
//! - with `--credentials MAP`, in every environment of the map, every contract key
//!   has a source and no source names a key the contract lacks.
//!
//! Findings name files, lines and keys, never a value. Exit 0 clean, 4 findings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use crate::prepare::contract::{self, Contract};
use crate::prepare::detect::credential_reason;
use crate::prepare::rules;
use crate::protocol::error::{Error, ErrorKind, Result};
use crate::protocol::exit::Exit;
use crate::protocol::report::{Finding, FindingKind, Report};

/// Which credential feeds which key, per environment: the file the Jenkins
/// library loads from `resources/io/hostenv/credentials/<service>.json`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialMap {
    /// Read by the Jenkins library; named here so that a misspelt field is refused.
    #[allow(dead_code)]
    pub service: String,
    /// The service's contract, relative to the repository.
    pub contract: String,
    pub environments: BTreeMap<String, EnvironmentMap>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvironmentMap {
    /// The `sshUserPrivateKey` credential the deploy logs in with (the
    /// Jenkins library's; named here so that a misspelt field is refused).
    #[serde(default)]
    #[allow(dead_code)]
    pub ssh_credential: Option<String>,
    /// The SSH settings the Jenkins library reads from the map (lint only
    /// names them, so that a misspelt one is refused): an OpenSSH user
    /// certificate credential, the login user, the hosts' keys as a file on
    /// the agent or as a secret file credential.
    #[serde(default)]
    #[allow(dead_code)]
    pub ssh_certificate: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    pub ssh_user: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    pub known_hosts: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    pub known_hosts_credential: Option<String>,
    #[serde(default)]
    pub credentials: Vec<CredentialSource>,
    /// Literal values.
    #[serde(default)]
    pub values: BTreeMap<String, String>,
    #[serde(default)]
    pub optional: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialSource {
    /// The Jenkins credential's id and type, for the library's binding; lint
    /// reads which keys a credential feeds.
    #[allow(dead_code)]
    pub id: String,
    #[serde(rename = "type")]
    #[allow(dead_code)]
    pub kind: String,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub username_key: Option<String>,
    #[serde(default)]
    pub password_key: Option<String>,
}

impl EnvironmentMap {
    /// Every contract key this environment gives a source.
    fn keys(&self) -> Vec<&str> {
        self.credentials
            .iter()
            .flat_map(|c| [&c.key, &c.username_key, &c.password_key])
            .filter_map(|k| k.as_deref())
            .chain(self.values.keys().map(String::as_str))
            .collect()
    }
}

/// Runs every check on the repository at `root`; findings go on the report.
pub fn run(
    root: &Path,
    credential_maps: &[PathBuf],
    excluded: &[String],
    report: &mut Report,
) -> Result<()> {
    let mut repo = Repository::open(root)?;
    // `--exclude DIR`: what is below it is not looked at (a test suite's
    // deliberately broken fixtures); the caller names and documents why.
    let inside = |file: &String| {
        excluded.iter().any(|dir| {
            let dir = dir.trim_end_matches('/');
            file == dir || file.starts_with(&format!("{dir}/"))
        })
    };
    repo.files.retain(|file| !inside(file));
    repo.tracked.retain(|file| !inside(file));
    let mut findings = Vec::new();
    let contracts: Vec<&String> = repo
        .files
        .iter()
        .filter(|f| file_name(f).ends_with(".env.example"))
        .collect();
    for path in &contracts {
        findings.extend(check_contract(root, path));
    }
    let brand_files = brand_files(root, &repo.files);
    for path in repo.tracked.iter().filter(|f| is_env_file(f)) {
        if brand_files.contains(path) {
            findings.extend(check_brand_file(root, path));
        } else {
            findings.push(Finding {
                kind: FindingKind::EnvFileTracked,
                file: path.clone(),
                line: None,
                key: None,
                message: format!(
                    "`{path}` is tracked by git; real values belong in the credential store (`git rm --cached {path}`, and rotate what it held)"
                ),
            });
        }
    }
    let mut dirs: Vec<String> = vec![String::new()];
    for path in &contracts {
        let dir = parent(path);
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    for dir in dirs {
        let env = if dir.is_empty() {
            ".env".to_string()
        } else {
            format!("{dir}/.env")
        };
        if !brand_files.contains(&env) && !repo.ignores(&env) {
            findings.push(Finding {
                kind: FindingKind::EnvFileNotIgnored,
                file: ".gitignore".into(),
                line: None,
                key: None,
                message: format!("`{env}` is not ignored by git; add `.env` to `.gitignore`"),
            });
        }
    }
    for map in credential_maps {
        findings.extend(check_credential_map(root, map));
    }
    if !findings.is_empty() {
        report.set_outcome(
            Exit::Differences,
            Some(crate::protocol::report::ErrorReport {
                kind: ErrorKind::LintFindings,
                message: format!(
                    "{} finding{}: {}",
                    findings.len(),
                    if findings.len() == 1 { "" } else { "s" },
                    findings
                        .iter()
                        .map(|f| match f.line {
                            Some(line) => format!("{}:{line}", f.file),
                            None => f.file.clone(),
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                field: None,
            }),
        );
    }
    report.findings = Some(findings);
    Ok(())
}

/// The files git knows of below the linted directory.
struct Repository {
    root: PathBuf,
    /// Tracked files.
    tracked: Vec<String>,
    /// Tracked files and untracked ones git does not ignore.
    files: Vec<String>,
}

impl Repository {
    fn open(root: &Path) -> Result<Repository> {
        let not_a_repository = |reason: String| {
            Error::invalid(
                ErrorKind::LintPathInvalid,
                "",
                format!("`{}` {reason}", root.display()),
            )
        };
        if !root.is_dir() {
            return Err(not_a_repository("is not a directory".into()));
        }
        let list = |extra: &[&str]| -> Result<Vec<String>> {
            let output = git(root, &[&["ls-files", "-z", "--cached"], extra].concat())
                .map_err(|e| not_a_repository(format!("cannot be listed with git: {e}")))?;
            Ok(output
                .split('\0')
                .filter(|f| !f.is_empty())
                .map(str::to_string)
                .collect())
        };
        let tracked = list(&[])?;
        let mut files = list(&["--others", "--exclude-standard"])?;
        files.sort();
        files.dedup();
        Ok(Repository {
            root: root.to_path_buf(),
            tracked,
            files,
        })
    }

    /// Whether git would ignore `path` (tracked or not).
    fn ignores(&self, path: &str) -> bool {
        git(
            &self.root,
            &["check-ignore", "-q", "--no-index", "--", path],
        )
        .is_ok()
    }
}

/// Runs git in `dir`; its stdout, or why it failed.
fn git(dir: &Path, args: &[&str]) -> std::result::Result<String, String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .map_err(|e| format!("git could not run ({e})"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(stderr.lines().next().unwrap_or("git failed").to_string());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn parent(path: &str) -> String {
    path.rsplit_once('/')
        .map(|(dir, _)| dir.to_string())
        .unwrap_or_default()
}

/// `.env` and its variants (`.env.local`, `.env.production`...), but not the
/// contract or other templates.
fn is_env_file(path: &str) -> bool {
    let name = file_name(path);
    (name == ".env" || name.starts_with(".env."))
        && ![".example", ".sample", ".template"]
            .iter()
            .any(|suffix| name.ends_with(suffix))
}

fn check_contract(root: &Path, path: &str) -> Vec<Finding> {
    let text = match std::fs::read_to_string(root.join(path)) {
        Ok(text) => text,
        Err(error) => {
            return vec![Finding {
                kind: FindingKind::ContractInvalid,
                file: path.to_string(),
                line: None,
                key: None,
                message: format!("`{path}` cannot be read: {error}"),
            }]
        }
    };
    let contract = match contract::parse(path, &text) {
        Ok(contract) => contract,
        Err(Error::ContractInvalid { line, reason, .. }) => {
            return vec![Finding {
                kind: FindingKind::ContractInvalid,
                file: path.to_string(),
                line: Some(line),
                key: None,
                message: reason,
            }]
        }
        Err(other) => {
            return vec![Finding {
                kind: FindingKind::ContractInvalid,
                file: path.to_string(),
                line: None,
                key: None,
                message: other.to_string(),
            }]
        }
    };
    contract
        .keys
        .iter()
        .filter_map(|key| {
            let reason = credential_reason(&placeholder_value(&key.placeholder))?;
            Some(Finding {
                kind: FindingKind::SecretInContract,
                file: path.to_string(),
                line: Some(key.line),
                key: Some(key.name.clone()),
                message: format!(
                    "the placeholder of `{}` looks like a real credential ({reason}); a contract holds placeholders only",
                    key.name
                ),
            })
        })
        .collect()
}

/// A placeholder without its quotes, or without a trailing `# comment` when unquoted.
fn placeholder_value(placeholder: &str) -> String {
    let text = placeholder.trim();
    for quote in ['"', '\''] {
        if let Some(inner) = text.strip_prefix(quote) {
            return inner
                .rsplit_once(quote)
                .map_or(inner, |(v, _)| v)
                .to_string();
        }
    }
    text.split(" #").next().unwrap_or(text).trim().to_string()
}

/// Files that BuildEnv requests in the repository name as `from`, relative to
/// the linted directory: brand files the platform commits on purpose.
fn brand_files(root: &Path, files: &[String]) -> Vec<String> {
    files
        .iter()
        .filter(|f| f.ends_with(".json"))
        .filter_map(|f| {
            let text = std::fs::read_to_string(root.join(f)).ok()?;
            let request: serde_json::Value = serde_json::from_str(&text).ok()?;
            if request.get("kind")?.as_str()? != "BuildEnv" {
                return None;
            }
            let from = request.get("from")?.as_str()?;
            Some(from.trim_start_matches("./").to_string())
        })
        .collect()
}

fn check_brand_file(root: &Path, path: &str) -> Vec<Finding> {
    let full = root.join(path);
    let assignments = match crate::commands::build_env::read_brand_file(&full.to_string_lossy()) {
        Ok(assignments) => assignments,
        Err(error) => {
            return vec![Finding {
                kind: FindingKind::BrandFileInvalid,
                file: path.to_string(),
                line: None,
                key: None,
                message: error.to_string().replace(&*full.to_string_lossy(), path),
            }]
        }
    };
    assignments
        .iter()
        .filter_map(|a| {
            let reason = credential_reason(&a.value)?;
            Some(Finding {
                kind: FindingKind::SecretInBrandFile,
                file: path.to_string(),
                line: Some(a.line),
                key: Some(a.key.clone()),
                message: format!(
                    "`{}` looks like a credential ({reason}); brand files are built into a public bundle",
                    a.key
                ),
            })
        })
        .collect()
}

fn check_credential_map(root: &Path, map_path: &Path) -> Vec<Finding> {
    let file = map_path.display().to_string();
    let invalid = |message: String| {
        vec![Finding {
            kind: FindingKind::CredentialMapInvalid,
            file: file.clone(),
            line: None,
            key: None,
            message,
        }]
    };
    let map: CredentialMap = match std::fs::read_to_string(map_path)
        .map_err(|e| e.to_string())
        .and_then(|text| serde_json::from_str(&text).map_err(|e| e.to_string()))
    {
        Ok(map) => map,
        Err(reason) => return invalid(format!("the credential map cannot be read: {reason}")),
    };
    let contract_path = root.join(&map.contract);
    let contract: Contract = match contract::load(&contract_path.to_string_lossy()) {
        Ok(contract) => contract,
        Err(error) => {
            return invalid(format!(
                "its contract `{}` cannot be used: {error}",
                map.contract
            ))
        }
    };
    let mut findings = Vec::new();
    for (environment, sources) in &map.environments {
        let given = sources.keys();
        for key in &contract.keys {
            // A key a rule governs needs a source only as the rule says (checked below).
            if !given.contains(&key.name.as_str())
                && !sources.optional.contains(&key.name)
                && !contract.ruled(&key.name)
            {
                findings.push(Finding {
                    kind: FindingKind::KeyWithoutSource,
                    file: map.contract.clone(),
                    line: Some(key.line),
                    key: Some(key.name.clone()),
                    message: format!(
                        "`{}` has no source in environment `{environment}` of `{file}`",
                        key.name
                    ),
                });
            }
        }
        // The rules this environment's sources can be held to without the
        // secrets: which keys have a source (the presence rules; kinds and
        // `required-when` wait for a run that reads the values).
        let value = |key: &str| {
            sources
                .values
                .get(key)
                .map(String::as_str)
                .or_else(|| given.contains(&key).then_some("set"))
        };
        for unmet in rules::check(&contract.rules, &value, false) {
            findings.push(Finding {
                kind: FindingKind::RuleUnmet,
                file: file.clone(),
                line: None,
                key: Some(unmet.key.clone()),
                message: format!("environment `{environment}`: {}", unmet.message),
            });
        }
        for key in given.iter().filter(|k| !contract.has(k)) {
            findings.push(Finding {
                kind: FindingKind::SourceNotInContract,
                file: file.clone(),
                line: None,
                key: Some(key.to_string()),
                message: format!(
                    "environment `{environment}` gives `{key}` a source, but `{}` does not declare it",
                    map.contract
                ),
            });
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_files_but_not_templates() {
        for path in [".env", "deploy/x/.env", ".env.local", ".env.production"] {
            assert!(is_env_file(path), "{path}");
        }
        for path in [
            ".env.example",
            "a/.env.sample",
            ".env.template",
            "env",
            "x.env",
        ] {
            assert!(!is_env_file(path), "{path}");
        }
    }

    #[test]
    fn placeholders_lose_quotes_and_comments() {
        assert_eq!(placeholder_value("\"a b\" # c"), "a b");
        assert_eq!(placeholder_value("'x'"), "x");
        assert_eq!(placeholder_value("info # trailing"), "info");
        assert_eq!(placeholder_value(""), "");
    }
}
