//! Resolution: every contract key of every host gets a value, or a problem
//! status, and every problem of the request is found in the same run.
//!
//! Sources come in scopes: the top level (`env` or `envFile`), then per host
//! a whole-file replacement (`hosts[].envFile`) and overrides (`hosts[].env`).
//! Each scope's sources are resolved once; a host's file is its merge.

use std::collections::BTreeMap;

use crate::prepare::contract::Contract;
use crate::prepare::detect::credential_reason;
use crate::prepare::rules;
use crate::protocol::error::{Error, ErrorKind, Result};
use crate::protocol::report::{KeyReport, KeyStatus, SourceKind};
use crate::protocol::request::{Deployment, Encoding, EnvFileSource, Source};
use crate::render::systemd;
use crate::settings::secret::{self, EnvLookup, ExposeSecret, Problem, SecretString};

/// The file one host gets, rendered and read back.
pub struct HostFile {
    pub host: String,
    /// Keys in file (contract) order, each with its value.
    pub values: Vec<(String, SecretString)>,
    /// Keys whose source is specific to this host.
    pub host_keys: Vec<String>,
    /// The exact bytes to install.
    pub text: SecretString,
}

pub struct Resolution {
    /// Every key report, grouped by key in contract order.
    pub keys: Vec<KeyReport>,
    /// One file per host, in request order; empty when any key has a problem
    /// or its secrets were not read.
    pub files: Vec<HostFile>,
    /// A names-only check (no secret read): the keys each host's file would
    /// have, in request order; empty otherwise.
    pub unread: Vec<HostKeys>,
}

/// The keys of one host's file, without their values.
pub struct HostKeys {
    pub host: String,
    pub keys: Vec<String>,
    pub host_keys: Vec<String>,
}

impl Resolution {
    pub fn problems(&self) -> Vec<&KeyReport> {
        self.keys.iter().filter(|k| k.status.is_problem()).collect()
    }
}

/// A resolved value, or the report explaining why there is none.
struct Resolved {
    report: KeyReport,
    value: Option<SecretString>,
}

/// One scope's sources, resolved.
#[derive(Default)]
struct Scope {
    entries: BTreeMap<String, Resolved>,
}

impl Scope {
    fn get(&self, key: &str) -> Option<&Resolved> {
        self.entries.get(key)
    }
}

/// Every key of every host, for hosts of systemd `min` or later (`target.systemdMin`).
pub fn resolve(
    deployment: &Deployment,
    at: &str,
    contract: &Contract,
    env: &dyn EnvLookup,
    min: Option<u32>,
) -> Result<Resolution> {
    if !env.binds_secrets() {
        refuse_unread_env_files(deployment, at)?;
    }
    let top = match (&deployment.env, &deployment.env_file) {
        (Some(sources), _) => source_scope(sources, None, contract, env, min),
        (None, Some(file)) => {
            env_file_scope(file, &format!("{at}/envFile"), None, contract, env, min)?
        }
        (None, None) => Scope::default(),
    };
    let mut host_scopes = Vec::new();
    for (index, spec) in deployment.hosts.iter().enumerate() {
        let host = spec.name().to_string();
        let entry = spec.entry();
        let file = match entry.and_then(|e| e.env_file.as_ref()) {
            Some(file) => Some(env_file_scope(
                file,
                &format!("{at}/hosts/{index}/envFile"),
                Some(&host),
                contract,
                env,
                min,
            )?),
            None => None,
        };
        let overrides = entry
            .and_then(|e| e.env.as_ref())
            .map(|sources| source_scope(sources, Some(&host), contract, env, min))
            .unwrap_or_default();
        host_scopes.push((host, file, overrides));
    }

    let mut keys: Vec<KeyReport> = Vec::new();
    keys.extend(top.entries.values().map(|r| r.report.clone()));
    for (_, file, overrides) in &host_scopes {
        if let Some(file) = file {
            keys.extend(file.entries.values().map(|r| r.report.clone()));
        }
        keys.extend(overrides.entries.values().map(|r| r.report.clone()));
    }
    for name in &deployment.optional {
        if !contract.has(name) {
            keys.push(bare_report(
                name,
                None,
                KeyStatus::NotInContract,
                Some(not_in_contract(name)),
            ));
        }
    }

    let (mut files, mut unread) = (Vec::new(), Vec::new());
    for key in contract.names() {
        let lacking: Vec<&str> = host_scopes
            .iter()
            .filter(|(_, file, overrides)| {
                let base = file.as_ref().unwrap_or(&top);
                base.get(key).is_none() && overrides.get(key).is_none()
            })
            .map(|(host, _, _)| host.as_str())
            .collect();
        // A key a rule governs needs a value only as the rule says.
        let optional = deployment.optional.iter().any(|name| name == key) || contract.ruled(key);
        let everywhere = lacking.len() == host_scopes.len();
        let (status, message) = if optional {
            (KeyStatus::Omitted, None)
        } else {
            (
                KeyStatus::Missing,
                Some(format!(
                    "`{key}` is in the contract but has no source and is not listed in `optional`"
                )),
            )
        };
        if everywhere {
            if top.get(key).is_none() {
                keys.push(bare_report(key, None, status, message));
            }
        } else {
            for host in lacking {
                keys.push(bare_report(key, Some(host), status, message.clone()));
            }
        }
    }
    keys.sort_by_key(|report| contract.position(&report.name));

    let mut unmet: Vec<(String, rules::Unmet)> = Vec::new();
    if keys.iter().all(|k| !k.status.is_problem()) {
        for (host, file, overrides) in &host_scopes {
            let base = file.as_ref().unwrap_or(&top);
            let mut values = Vec::new();
            let mut host_keys = Vec::new();
            let mut names = Vec::new();
            for key in contract.names() {
                let (resolved, host_specific) = match overrides.get(key) {
                    Some(resolved) => (Some(resolved), true),
                    None => (base.get(key), file.is_some()),
                };
                let Some(resolved) = resolved.filter(|r| r.report.status != KeyStatus::Omitted)
                else {
                    continue;
                };
                names.push(key.to_string());
                if host_specific {
                    host_keys.push(key.to_string());
                }
                if let Some(value) = &resolved.value {
                    values.push((key.to_string(), value.clone()));
                }
            }
            let found = if env.binds_secrets() {
                let value = |key: &str| {
                    values
                        .iter()
                        .find(|(k, _)| k == key)
                        .map(|(_, v)| v.expose_secret())
                };
                rules::check(&contract.rules, &value, true)
            } else {
                let value = |key: &str| names.iter().any(|n| n == key).then_some("set");
                rules::check(&contract.rules, &value, false)
            };
            unmet.extend(found.into_iter().map(|u| (host.clone(), u)));
            if !env.binds_secrets() {
                unread.push(HostKeys {
                    host: host.clone(),
                    keys: names,
                    host_keys,
                });
                continue;
            }
            let text = render_checked(&values, min)?;
            files.push(HostFile {
                host: host.clone(),
                values,
                host_keys,
                text,
            });
        }
    }
    if !unmet.is_empty() {
        report_unmet(&mut keys, unmet, host_scopes.len());
        keys.sort_by_key(|report| contract.position(&report.name));
        files.clear();
        unread.clear();
    }
    Ok(Resolution {
        keys,
        files,
        unread,
    })
}

/// The contract's rules that a host's values do not meet, as key statuses:
/// a failure on every host on the key's own entry, one on some hosts on an
/// entry per host.
fn report_unmet(keys: &mut Vec<KeyReport>, unmet: Vec<(String, rules::Unmet)>, hosts: usize) {
    let mut by_failure: BTreeMap<(String, bool, String), Vec<String>> = BTreeMap::new();
    for (host, found) in unmet {
        by_failure
            .entry((found.key, found.wrong_kind, found.message))
            .or_default()
            .push(host);
    }
    for ((key, wrong_kind, message), on) in by_failure {
        let status = if wrong_kind {
            KeyStatus::WrongKind
        } else {
            KeyStatus::RuleUnmet
        };
        let hosts_named: Vec<Option<String>> = if on.len() == hosts {
            vec![None]
        } else {
            on.into_iter().map(Some).collect()
        };
        for host in hosts_named {
            match keys.iter_mut().find(|k| k.name == key && k.host == host) {
                Some(entry) => {
                    entry.status = status;
                    entry.message = Some(message.clone());
                    entry.value = None;
                }
                None => keys.push(bare_report(
                    &key,
                    host.as_deref(),
                    status,
                    Some(message.clone()),
                )),
            }
        }
    }
}

/// A names-only check cannot read a whole file's keys without its secrets.
fn refuse_unread_env_files(deployment: &Deployment, at: &str) -> Result<()> {
    let host_file = deployment
        .hosts
        .iter()
        .position(|spec| spec.entry().is_some_and(|e| e.env_file.is_some()));
    let field = match (deployment.env_file.is_some(), host_file) {
        (true, _) => format!("{at}/envFile"),
        (false, Some(index)) => format!("{at}/hosts/{index}/envFile"),
        (false, None) => return Ok(()),
    };
    Err(Error::invalid(
        ErrorKind::InvalidSource,
        field,
        "a whole-file `envFile` names its keys only in the file: check it with the file bound, not with `--secrets-unbound`",
    ))
}

/// Renders, then reads back with the independent reader: the bytes are used only
/// if they give exactly the values that went in.
/// Renders for hosts of systemd `min` or later, then reads back with the
/// independent reader of every grammar generation those hosts may have: the
/// bytes are used only if each gives exactly the values that went in (less
/// those that generation drops, which are refused per host once its version
/// is known).
pub fn render_checked(values: &[(String, SecretString)], min: Option<u32>) -> Result<SecretString> {
    let text = systemd::render_for(
        values.iter().map(|(k, v)| (k.as_str(), v.expose_secret())),
        min,
    );
    let environment =
        systemd::environment_bytes(values.iter().map(|(k, v)| (k.as_str(), v.expose_secret())));
    if environment > systemd::MAX_ENVIRONMENT_BYTES {
        return Err(too_large(
            values,
            format!(
                "its values would take {environment} bytes of the service's environment, more than the {} a process may hold \
                 (Linux: a quarter of the 8 MiB stack, less room for the unit's own variables); the unit would fail to start on every host",
                systemd::MAX_ENVIRONMENT_BYTES
            ),
        ));
    }
    let version = min.unwrap_or(systemd::OLDEST);
    let limit = systemd::max_file_bytes(version).min(MAX_RENDERED);
    if text.len() as u64 > limit {
        let why = if limit == MAX_RENDERED {
            format!("the host program takes at most {MAX_RENDERED} bytes")
        } else {
            format!(
                "systemd v{version}{} reads at most {limit} bytes; if every host runs a newer systemd, say so with `target.systemdMin`",
                if min.is_some() { "" } else { " (the oldest a host may run, with no `target.systemdMin`)" }
            )
        };
        return Err(too_large(
            values,
            format!("the rendered file would be {} bytes: {why}", text.len()),
        ));
    }
    for generation in systemd::Generation::from(min.unwrap_or(systemd::OLDEST)) {
        let parsed = systemd::parse_as(&text, generation);
        let expected = values
            .iter()
            .filter(|(_, value)| generation.drops(value.expose_secret()).is_none());
        let mut read = parsed.assignments.iter();
        let mismatch = expected.clone().find(|(key, value)| {
            read.next()
                .is_none_or(|read| read.key != *key || read.value != value.expose_secret())
        });
        let complete = parsed.lines_without_assignment.is_empty()
            && parsed.assignments.len() == expected.count();
        if mismatch.is_some() || !complete {
            let key = mismatch.map(|(key, _)| key.clone()).unwrap_or_default();
            return Err(Error::Internal(format!(
                "the rendered file does not read back exactly on systemd v{} (first difference at key `{key}`)",
                generation.since()
            )));
        }
    }
    Ok(SecretString::from(text))
}

/// The largest file a host takes: the host program's limit, and less than
/// the 4 MiB that systemd v248 refuses to read.
pub const MAX_RENDERED: u64 = crate::host::MAX_FILE_BYTES - 1;

/// A file too large for the hosts, saying why and naming the keys that take the most room.
fn too_large(values: &[(String, SecretString)], why: String) -> Error {
    let mut by_size: Vec<&(String, SecretString)> = values.iter().collect();
    by_size.sort_by_key(|(key, value)| std::cmp::Reverse(key.len() + value.expose_secret().len()));
    let largest: Vec<String> = by_size
        .iter()
        .take(3)
        .map(|(key, _)| format!("`{key}`"))
        .collect();
    Error::invalid(
        ErrorKind::FileTooLarge,
        "/env",
        format!(
            "{why}; the values taking the most room are those of {}",
            largest.join(", ")
        ),
    )
}

fn not_in_contract(name: &str) -> String {
    format!("`{name}` is not in the contract; add it to the `.env.example` in the same change as its source")
}

fn bare_report(
    name: &str,
    host: Option<&str>,
    status: KeyStatus,
    message: Option<String>,
) -> KeyReport {
    KeyReport {
        name: name.to_string(),
        host: host.map(str::to_string),
        source: SourceKind::None,
        env: None,
        credential_id: None,
        value: None,
        status,
        message,
    }
}

fn source_scope(
    sources: &BTreeMap<String, Source>,
    host: Option<&str>,
    contract: &Contract,
    env: &dyn EnvLookup,
    min: Option<u32>,
) -> Scope {
    let mut scope = Scope::default();
    for (key, source) in sources {
        scope.entries.insert(
            key.clone(),
            resolve_source(key, source, host, contract, env, min),
        );
    }
    scope
}

fn resolve_source(
    key: &str,
    source: &Source,
    host: Option<&str>,
    contract: &Contract,
    env: &dyn EnvLookup,
    min: Option<u32>,
) -> Resolved {
    let (kind, env_name) = match (&source.value, &source.secret_env, &source.secret_file_env) {
        (Some(_), _, _) => (SourceKind::Value, None),
        (_, Some(name), _) => (SourceKind::SecretEnv, Some(name.clone())),
        (_, _, Some(name)) => (SourceKind::SecretFileEnv, Some(name.clone())),
        _ => (SourceKind::None, None),
    };
    let mut report = KeyReport {
        name: key.to_string(),
        host: host.map(str::to_string),
        source: kind,
        env: env_name,
        credential_id: source.credential_id.clone(),
        value: None,
        status: KeyStatus::Ok,
        message: None,
    };
    let outcome = if !contract.has(key) {
        Err(Problem::new(KeyStatus::NotInContract, not_in_contract(key)))
    } else {
        read_source(key, source, env, min)
    };
    match outcome {
        Ok(value) => {
            if kind == SourceKind::Value {
                report.value = Some(value.expose_secret().to_string());
            }
            Resolved {
                report,
                value: Some(value),
            }
        }
        Err(problem) => {
            report.status = problem.status;
            report.message = Some(problem.message);
            Resolved {
                report,
                value: None,
            }
        }
    }
}

fn read_source(
    key: &str,
    source: &Source,
    env: &dyn EnvLookup,
    min: Option<u32>,
) -> Result<SecretString, Problem> {
    let value = if let Some(literal) = &source.value {
        if let Some(reason) = credential_reason(literal) {
            return Err(Problem::new(
                KeyStatus::LooksLikeSecret,
                format!("the literal value looks like a credential ({reason}); bind it with `secretEnv` instead"),
            ));
        }
        SecretString::from(literal.clone())
    } else if !env.binds_secrets() {
        return Err(Problem::new(
            KeyStatus::Unbound,
            "named, not read: this check binds no secret",
        ));
    } else if let Some(name) = &source.secret_env {
        secret::from_env(env, name, source.encoding == Some(Encoding::Base64))?
    } else if let Some(name) = &source.secret_file_env {
        secret::from_file_env(env, name)?
    } else {
        return Err(Problem::new(KeyStatus::Missing, "no source"));
    };
    check_representable(key, value, min)
}

fn check_representable(
    key: &str,
    value: SecretString,
    min: Option<u32>,
) -> Result<SecretString, Problem> {
    match systemd::check_for(key, value.expose_secret(), min) {
        Ok(()) => Ok(value),
        Err(unfit @ systemd::Unfit::TooLong { .. }) => {
            Err(Problem::new(KeyStatus::TooLong, unfit.describe()))
        }
        Err(unfit) => Err(Problem::new(KeyStatus::Unrepresentable, unfit.describe())),
    }
}

/// A whole `.env` shipped as one secret file, parsed in systemd's grammar.
fn env_file_scope(
    file: &EnvFileSource,
    field: &str,
    host: Option<&str>,
    contract: &Contract,
    env: &dyn EnvLookup,
    min: Option<u32>,
) -> Result<Scope> {
    let variable = &file.secret_file_env;
    let fail = |line: usize, reason: String| Error::EnvFileInvalid {
        field: field.to_string(),
        line,
        reason,
    };
    let path = secret::file_path_from_env(env, variable).map_err(|p| fail(0, p.message))?;
    let text = SecretString::from(
        secret::read_secret_file(&path, variable).map_err(|p| fail(0, p.message))?,
    );
    let parsed = systemd::parse(text.expose_secret());
    if let Some(line) = parsed.lines_without_assignment.first() {
        return Err(fail(
            *line,
            "the line has no `=` (systemd would ignore it)".into(),
        ));
    }
    // A key name from a secret file is shown only when it cannot be a fragment
    // of a secret: a contract key, or a name that does not look like one.
    let shown = |name: &str, line: usize| {
        if contract.has(name)
            || (crate::settings::names::is_valid_key_name(name)
                && credential_reason(name).is_none())
        {
            name.to_string()
        } else {
            format!("(envFile line {line})")
        }
    };
    let mut scope = Scope::default();
    let mut first_line: BTreeMap<String, usize> = BTreeMap::new();
    for assignment in parsed.assignments {
        let name = shown(&assignment.key, assignment.line);
        if !crate::settings::names::is_valid_key_name(&assignment.key) {
            return Err(fail(
                assignment.line,
                "the key is not a valid variable name".into(),
            ));
        }
        if let Some(first) = first_line.insert(assignment.key.clone(), assignment.line) {
            return Err(fail(
                assignment.line,
                format!("`{name}` is set twice (first at line {first})"),
            ));
        }
        let mut report = KeyReport {
            name: name.clone(),
            host: host.map(str::to_string),
            source: crate::protocol::report::SourceKind::EnvFile,
            env: Some(variable.clone()),
            credential_id: file.credential_id.clone(),
            value: None,
            status: KeyStatus::Ok,
            message: None,
        };
        let value = SecretString::from(assignment.value);
        let outcome = if !contract.has(&assignment.key) {
            Err(Problem::new(
                KeyStatus::NotInContract,
                format!(
                    "{} (line {} of the env file)",
                    not_in_contract(&name),
                    assignment.line
                ),
            ))
        } else if value.expose_secret().is_empty() {
            Err(Problem::new(
                KeyStatus::Empty,
                format!(
                    "line {} of the env file sets an empty value",
                    assignment.line
                ),
            ))
        } else {
            check_representable(&assignment.key, value, min)
        };
        let value = match outcome {
            Ok(value) => Some(value),
            Err(problem) => {
                report.status = problem.status;
                report.message = Some(problem.message);
                None
            }
        };
        scope
            .entries
            .insert(assignment.key, Resolved { report, value });
    }
    Ok(scope)
}
