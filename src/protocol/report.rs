//! Protocol types out: the one JSON document every action prints.

use schemars::JsonSchema;
use serde::Serialize;

use crate::protocol::error::{Error, ErrorKind};
use crate::protocol::exit::Exit;
use crate::protocol::request::API_VERSION;

/// The name a unit enum value has on the wire (`rolledBack`, `healthCheckFailed`...):
/// strum's name, which `wire_names_are_serdes` keeps serde's.
pub fn wire_name<'a, T>(value: &'a T) -> &'static str
where
    &'static str: From<&'a T>,
{
    value.into()
}

/// The action that produced a result.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema, strum::IntoStaticStr, strum::EnumIter,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum Action {
    /// Validate, resolve and render in memory.
    Check,
    /// Report what a deploy would change on each host.
    Plan,
    /// The whole deploy.
    Deploy,
    /// Restore the previous version.
    Rollback,
    /// Compare the hosts with what the request would write.
    Drift,
    /// List each host's backups against its current file; writes nothing.
    Backups,
    /// Write a build-time `.env` (console).
    BuildEnv,
    /// Check a service repository's hygiene.
    Lint,
    /// Install the host program and the services' configuration on the hosts.
    HostInstall,
    /// Print the sudo rules a non-root deploy user needs (a result only when it fails).
    Sudoers,
    /// Print the version (a result only for a usage error).
    Version,
    /// Print a JSON schema (a result only for a usage error).
    Schema,
}

impl Action {
    /// The action a command-line word names (`deploy`, `build-env`, ...).
    pub fn named(word: &str) -> Option<Action> {
        use strum::IntoEnumIterator;
        Action::iter().find(|action| wire_name(action) == word)
    }
}

/// The result document: exactly one on stdout for every run, also on failure.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
// Open to fields a later v1 release adds: a consumer validating with this
// schema keeps accepting them (docs/protocol.md, "Within v1").
#[schemars(title = "hostenv result")]
pub struct Report {
    /// Always `hostenv/v1`.
    #[schemars(schema_with = "api_version_schema")]
    pub api_version: &'static str,
    /// Always `Result`.
    #[schemars(schema_with = "result_kind_schema")]
    pub kind: &'static str,
    /// The action that ran; absent only for a usage error whose arguments
    /// named no action (a bare `hostenv`, or an unknown word).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    /// True exactly when `exitCode` is 0. Whenever it is false, `error` says
    /// why: a rejection, `hostsFailed`, or for exit 4 what differs
    /// (`changesPending`, `driftFound`, `lintFindings`).
    pub ok: bool,
    /// The process exit code: 0 ok, 1 a host failed, 2 rejected, 3 a host needs a person, 4 differences found.
    pub exit_code: i32,
    /// Wall time of the run in milliseconds.
    pub duration_ms: u64,
    /// The service of a Deploy request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The request's `environment`, when it set one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// The contract and the status of every key (Deploy, BuildEnv).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contract: Option<ContractReport>,
    /// One entry per host, in request order. Empty for a rejected request.
    pub hosts: Vec<HostReport>,
    /// Per deployment of a Rotation, in request order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployments: Option<Vec<DeploymentReport>>,
    /// How the keys in a Rotation's `shared` list resolved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared: Option<Vec<SharedKeyReport>>,
    /// `plan --plan-key-env`: the HMAC of everything the deploy depends on, for `deploy --expect-plan`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan_digest: Option<String>,
    /// The file `build-env` wrote (or, for `check`, would write).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputReport>,
    /// `lint`: every problem found in the repository, with file and line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub findings: Option<Vec<Finding>>,
    /// Output files the run could not write once it had run (`--junit`):
    /// the hosts' outcome, `ok` and `exitCode` stand as the hosts left them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_errors: Option<Vec<OutputError>>,
    /// Host counts by status.
    pub summary: Summary,
    /// Why the action did not succeed; null when `ok` is true.
    pub error: Option<ErrorReport>,
}

/// `hostenv version --json`: what a pipeline checks before it runs a binary.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "hostenv version")]
pub struct VersionReport {
    /// Always `hostenv/v1`.
    #[schemars(schema_with = "api_version_schema")]
    pub api_version: &'static str,
    /// Always `Version`.
    #[schemars(schema_with = "version_kind_schema")]
    pub kind: &'static str,
    /// hostenv's own version, as `hostenv version` prints it.
    pub version: &'static str,
    /// The request `apiVersion`s this binary takes.
    pub api_versions: Vec<&'static str>,
    /// The protocol the host program on each host must speak (`hostenv-host version`).
    pub host_protocol: u32,
    /// `sha256:` of the embedded service catalog (resources/io/hostenv/catalog.json).
    pub catalog_digest: String,
    /// Test-only features compiled in; empty in every build for use.
    pub test_features: Vec<&'static str>,
}

fn version_kind_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "const": "Version" })
}

fn api_version_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "const": API_VERSION })
}

fn result_kind_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "const": "Result" })
}

/// The contract a request was checked against.
#[derive(Debug, Default, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContractReport {
    /// Path of the `.env.example` as the request gave it.
    pub path: String,
    /// Every key of the contract, then any key the request sources that the contract lacks.
    /// Per-host sources get their own entry with `host` set.
    pub keys: Vec<KeyReport>,
}

/// Where a key's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SourceKind {
    /// A literal in the request.
    Value,
    /// An environment variable holding the secret.
    SecretEnv,
    /// An environment variable holding the path of a file with the secret.
    SecretFileEnv,
    /// A whole `.env` file (Jenkins secret file).
    EnvFile,
    /// The BuildEnv brand file named by `from`.
    BrandFile,
    /// No source.
    None,
}

/// The state of one key.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema, strum::IntoStaticStr, strum::EnumIter,
)]
#[serde(rename_all = "camelCase")]
#[strum(serialize_all = "camelCase")]
pub enum KeyStatus {
    /// Resolved and representable.
    Ok,
    /// Listed in `optional` and given no source: left out of the file.
    Omitted,
    /// A secret source that `check --secrets-unbound` names without reading:
    /// its variable's name is checked, its value is not bound.
    Unbound,
    /// In the contract, not in `optional`, and given no source.
    Missing,
    /// The named environment variable is not set.
    Unset,
    /// The value is empty (an empty literal is allowed; an empty secret is not).
    Empty,
    /// `encoding: base64` but the variable is not valid base64.
    BadBase64,
    /// The file named by `secretFileEnv` cannot be read, is not a regular file, is over 1 MiB, or holds NUL.
    Unreadable,
    /// The request gives a source for a key the contract does not declare.
    NotInContract,
    /// The value cannot be written faithfully (NUL, invalid UTF-8, or a character the file grammar cannot carry).
    Unrepresentable,
    /// `KEY=VALUE` is longer than 131,071 bytes.
    TooLong,
    /// A literal `value` looks like a credential.
    LooksLikeSecret,
    /// A secret source where only literals are allowed (BuildEnv).
    SecretNotAllowed,
    /// A rule of the contract is not met: exactly one (or at least one) of a
    /// group must have a value, or a key must have one when another has a
    /// certain value; the message names the rule and its line.
    RuleUnmet,
    /// The value is not of the kind the contract states (a URL of certain
    /// schemes, an integer in a range, a boolean, one of a list of words);
    /// the message says what it must be, never what it is.
    WrongKind,
}

impl KeyStatus {
    pub fn is_problem(self) -> bool {
        !matches!(
            self,
            KeyStatus::Ok | KeyStatus::Omitted | KeyStatus::Unbound
        )
    }
}

/// One key and how it resolved. Never a secret value.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyReport {
    /// The variable name.
    pub name: String,
    /// Set when this entry is a per-host source (`hosts[].env` / `hosts[].envFile`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Where the value comes from.
    pub source: SourceKind,
    /// The environment variable named by `secretEnv` / `secretFileEnv`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// The credential id, as recorded in the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_id: Option<String>,
    /// The literal value, for `value` sources that passed every check; never for secrets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The outcome.
    pub status: KeyStatus,
    /// What is wrong, in words, for a problem status. Never the value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What happened on one host.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema, strum::IntoStaticStr, strum::EnumIter,
)]
#[serde(rename_all = "camelCase")]
#[strum(serialize_all = "camelCase")]
pub enum HostStatus {
    /// `check`: the host's file rendered; no host was contacted.
    Checked,
    /// The new file is installed, the units restarted and verified.
    Deployed,
    /// The host already had the file; nothing was written.
    Unchanged,
    /// `plan`: a deploy would change this host.
    Planned,
    /// `drift`: the host holds what the request would write.
    InSync,
    /// `drift`: the host differs from what the request would write.
    Drifted,
    /// `backups`: the host's backups were read; `backups` lists them.
    Listed,
    /// `rollback`: the backup asked for is back, its units restarted and verified.
    Restored,
    /// `deploy`: restart or verification failed, and the file from before the
    /// run is back and healthy (a failure: exit 1).
    RolledBack,
    /// Verification failed and so did the rollback: needs a person.
    RollbackFailed,
    /// Verification failed; the new file was left in place (`rollbackOnFailure: false`).
    Unhealthy,
    /// Switched, but the outcome could not be confirmed: needs a person.
    Unknown,
    /// Nothing was changed on this host.
    Failed,
    /// Not attempted; the error says why.
    Skipped,
}

/// The per-host entry of a result.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostReport {
    /// The host as the request named it.
    pub host: String,
    /// The outcome on this host.
    pub status: HostStatus,
    /// Whether the host's file was changed by this run.
    pub changed: bool,
    /// The file this host gets: key names and size, never content.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rendered: Option<RenderedReport>,
    /// Key names added, removed and changed against the host's current file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys: Option<KeyChanges>,
    /// The units of this host and whether they were restarted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub units: Vec<UnitReport>,
    /// Health checks, in order (those of a rollback included).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckReport>,
    /// Each step taken on the host, with its outcome and duration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepReport>,
    /// What a rollback did, when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackAction>,
    /// `purgeBackupsOf`: how many backups holding an old value were removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backups_purged: Option<u32>,
    /// `backups`: the backups the host keeps, against its current file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backups: Option<BackupListing>,
    /// The host's systemd version, as read before anything was written: it
    /// decides which values the host keeps (docs/concepts.md, the rendered host file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub systemd_version: Option<u32>,
    /// The environment whose run last put this host's file in place, when
    /// it is another than this run's: two environments write the same file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_environment: Option<String>,
    /// The connection to the host failed partway: what a new connection then
    /// read at the target. Without it the host is `unknown` once the run had
    /// asked for a change; with it, `failed` only if the file is as before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_back: Option<ReadBack>,
    /// Why this host did not succeed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorReport>,
}

impl HostReport {
    /// Every text a host could have put in the report, as one plain line
    /// (`protocol::text`): the error's message, the checks' last errors.
    pub fn make_plain(&mut self) {
        if let Some(error) = &mut self.error {
            error.message = crate::protocol::text::plain(&error.message);
        }
        for check in &mut self.checks {
            if let Some(error) = &mut check.last_error {
                *error = crate::protocol::text::plain(error);
            }
        }
    }

    pub fn new(host: &str, status: HostStatus) -> HostReport {
        HostReport {
            host: host.to_string(),
            status,
            changed: false,
            rendered: None,
            keys: None,
            units: Vec::new(),
            checks: Vec::new(),
            steps: Vec::new(),
            rollback: None,
            backups_purged: None,
            backups: None,
            systemd_version: None,
            previous_environment: None,
            read_back: None,
            error: None,
        }
    }
}

/// Key names that differ between the host's current file and the new one. Never values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyChanges {
    /// Keys the new file adds.
    pub added: Vec<String>,
    /// Keys the new file no longer has.
    pub removed: Vec<String>,
    /// Keys whose value changes.
    pub changed: Vec<String>,
    /// How many keys keep their value.
    pub unchanged: usize,
    /// How many keys of the host's file have names that are no key names
    /// (the file was edited by hand); they are removed, and never shown.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unnamed: usize,
}

/// `backups`: what one host keeps, compared with its current file. Key
/// names, times and fingerprints, never values: a fingerprint is keyed with
/// a random key made for this run, so equal fingerprints within one result
/// mean equal values, and mean nothing outside it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupListing {
    /// The file at the target now; absent when there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<ListedFile>,
    /// Each backup, the newest (1) first: the `N` of `rollback --to N`.
    pub kept: Vec<ListedBackup>,
}

/// The current file of a `backups` listing.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListedFile {
    /// When the file was written at the target (its modification time, UTC).
    pub written_at: String,
    /// Fingerprints of its values for the keys some backup changes or removes.
    pub fingerprints: std::collections::BTreeMap<String, String>,
}

/// One backup of a `backups` listing.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListedBackup {
    /// 1 for the newest: what `rollback --to N` takes.
    pub number: u32,
    /// When this file was written at the target, before a later one replaced
    /// it (its modification time, UTC).
    pub written_at: String,
    /// What putting it back would do to the current file: the keys it adds,
    /// removes and changes.
    pub keys: KeyChanges,
    /// Fingerprints of its values for the keys it adds or changes.
    pub fingerprints: std::collections::BTreeMap<String, String>,
}

fn is_zero(count: &usize) -> bool {
    *count == 0
}

/// One unit on a host.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UnitReport {
    /// The unit, with its instance for templates.
    pub unit: String,
    /// Whether this run restarted it (the last restart, for a rollback).
    pub restarted: bool,
    /// `plan`: whether a deploy would restart it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub will_restart: bool,
}

fn is_false(value: &bool) -> bool {
    !value
}

/// One health check.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckReport {
    /// The URL polled.
    pub url: String,
    /// Whether it answered the expected status enough times in a row.
    pub ok: bool,
    /// Requests made.
    pub attempts: u32,
    /// The last HTTP status received.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    /// Why the last request got no answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Time taken in milliseconds.
    pub ms: u64,
}

/// One step on a host.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepReport {
    /// connect, read, units, stage, switch, restart, verify, rollback.
    pub name: String,
    /// Whether it succeeded.
    pub ok: bool,
    /// Duration in milliseconds.
    pub ms: u64,
}

/// What a rollback put back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RollbackAction {
    /// The previous file is back in place.
    RestoredPrevious,
    /// There was no previous file, so the new one was removed.
    RemovedNewFile,
}

/// What the target held when read again over a new connection, after the
/// run's channel to the host failed partway.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema, strum::IntoStaticStr, strum::EnumIter,
)]
#[serde(rename_all = "camelCase")]
#[strum(serialize_all = "camelCase")]
pub enum ReadBack {
    /// The file the host held before the run (bytes, owner, mode): nothing changed.
    AsBefore,
    /// The run's new file: it was switched in, its units not confirmed.
    NewFile,
    /// Neither: something else changed the target.
    Other,
    /// The host could not be reached or read again.
    NotRead,
}

/// The shape of a rendered file.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RenderedReport {
    /// The target path on the host.
    pub path: String,
    /// The keys written, in file order.
    pub keys: Vec<String>,
    /// Keys whose source is specific to this host.
    pub host_keys: Vec<String>,
    /// Size of the file in bytes; absent when its secrets were not read
    /// (`check --secrets-unbound`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<usize>,
}

/// One deployment of a Rotation.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentReport {
    /// The deployment's service.
    pub service: String,
    /// Its contract and key statuses.
    pub contract: ContractReport,
    /// Its hosts, in request order.
    pub hosts: Vec<HostReport>,
    /// Its host counts by status.
    pub summary: Summary,
}

/// A key a Rotation declares as shared.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SharedKeyReport {
    /// The key name.
    pub key: String,
    /// Services of the Rotation whose file carries the key.
    pub services: Vec<String>,
    /// True when every deployment resolves the key to the same value (`check`, `plan`), or
    /// every host read holds the same value (`drift`, and the read-back after `deploy` and
    /// `rollback`).
    pub identical: bool,
    /// Where hosts were read: the hosts grouped by the value they hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holders: Option<Vec<SharedValueGroup>>,
}

/// Hosts holding one value of a shared key.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SharedValueGroup {
    /// HMAC-SHA256 of the value under a random key made for this run (16 hex digits), or null
    /// for hosts whose file lacks the key. It compares hosts within one result and means
    /// nothing outside it.
    pub fingerprint: Option<String>,
    /// Whether this is the value the request resolves the key to.
    pub expected: bool,
    /// The hosts holding it.
    pub hosts: Vec<SharedHolder>,
}

/// One host of one deployment.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SharedHolder {
    pub service: String,
    pub host: String,
}

/// An output file that could not be written after the run.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutputError {
    /// The path as given (`--junit FILE`).
    pub path: String,
    /// Why it could not be written.
    pub message: String,
}

/// The file `build-env` writes.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutputReport {
    /// The output path as the request gave it.
    pub path: String,
    /// Whether the file was written by this run (false for `check`, and when identical bytes were already there).
    pub written: bool,
    /// Keys in file order.
    pub keys: Vec<String>,
    /// Size in bytes.
    pub bytes: usize,
}

/// Host counts by status.
#[derive(Debug, Default, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// All hosts.
    pub hosts: usize,
    /// Hosts with status `checked`.
    pub checked: usize,
    /// Hosts with status `deployed`.
    pub deployed: usize,
    /// Hosts with status `unchanged`.
    pub unchanged: usize,
    /// Hosts with status `planned`.
    pub planned: usize,
    /// Hosts with status `inSync`.
    pub in_sync: usize,
    /// Hosts with status `drifted`.
    pub drifted: usize,
    /// Hosts with status `listed`.
    pub listed: usize,
    /// Hosts with status `restored`.
    pub restored: usize,
    /// Hosts with status `rolledBack`.
    pub rolled_back: usize,
    /// Hosts with status `rollbackFailed`.
    pub rollback_failed: usize,
    /// Hosts with status `unhealthy`.
    pub unhealthy: usize,
    /// Hosts with status `unknown`.
    pub unknown: usize,
    /// Hosts with status `failed`.
    pub failed: usize,
    /// Hosts with status `skipped`.
    pub skipped: usize,
}

impl Summary {
    pub fn of(hosts: &[HostReport]) -> Summary {
        let mut summary = Summary {
            hosts: hosts.len(),
            ..Summary::default()
        };
        for host in hosts {
            *summary.count_for(host.status) += 1;
        }
        summary
    }

    pub fn add(&mut self, other: &Summary) {
        self.hosts += other.hosts;
        self.checked += other.checked;
        self.deployed += other.deployed;
        self.unchanged += other.unchanged;
        self.planned += other.planned;
        self.in_sync += other.in_sync;
        self.drifted += other.drifted;
        self.listed += other.listed;
        self.restored += other.restored;
        self.rolled_back += other.rolled_back;
        self.rollback_failed += other.rollback_failed;
        self.unhealthy += other.unhealthy;
        self.unknown += other.unknown;
        self.failed += other.failed;
        self.skipped += other.skipped;
    }

    fn count_for(&mut self, status: HostStatus) -> &mut usize {
        match status {
            HostStatus::Checked => &mut self.checked,
            HostStatus::Deployed => &mut self.deployed,
            HostStatus::Unchanged => &mut self.unchanged,
            HostStatus::Planned => &mut self.planned,
            HostStatus::InSync => &mut self.in_sync,
            HostStatus::Drifted => &mut self.drifted,
            HostStatus::Listed => &mut self.listed,
            HostStatus::Restored => &mut self.restored,
            HostStatus::RolledBack => &mut self.rolled_back,
            HostStatus::RollbackFailed => &mut self.rollback_failed,
            HostStatus::Unhealthy => &mut self.unhealthy,
            HostStatus::Unknown => &mut self.unknown,
            HostStatus::Failed => &mut self.failed,
            HostStatus::Skipped => &mut self.skipped,
        }
    }
}

/// An error, with a stable kind and a message that never holds a secret.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorReport {
    /// Stable identifier.
    pub kind: ErrorKind,
    /// Human-readable; names fields, keys, paths and lines, never values.
    pub message: String,
    /// JSON pointer of the offending request field, where there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl From<&Error> for ErrorReport {
    fn from(error: &Error) -> Self {
        ErrorReport {
            kind: error.kind(),
            message: error.to_string(),
            field: error.field(),
        }
    }
}

impl Report {
    pub fn new(action: Action) -> Report {
        Report::of(Some(action))
    }

    /// A report for `action`, or for no action at all (a usage error that named none).
    pub fn of(action: Option<Action>) -> Report {
        Report {
            api_version: API_VERSION,
            kind: "Result",
            action,
            ok: true,
            exit_code: Exit::Ok.code(),
            duration_ms: 0,
            service: None,
            environment: None,
            contract: None,
            hosts: Vec::new(),
            deployments: None,
            shared: None,
            plan_digest: None,
            output: None,
            findings: None,
            output_errors: None,
            summary: Summary::default(),
            error: None,
        }
    }

    /// Marks the report as failed by `error`; hosts are left out of a rejection.
    pub fn fail(&mut self, error: &Error) {
        if error.exit() == Exit::Rejected {
            self.hosts.clear();
            self.summary = Summary::default();
        }
        self.set_outcome(error.exit(), Some(ErrorReport::from(error)));
    }

    /// The one place that sets `exitCode`, `ok` and `error`: `ok` follows
    /// from the code, and every code but 0 carries an error.
    pub fn set_outcome(&mut self, exit: Exit, error: Option<ErrorReport>) {
        self.exit_code = exit.code();
        self.ok = exit.is_ok();
        self.error = match (exit, error) {
            (Exit::Ok, _) => None,
            (_, Some(error)) => Some(error),
            (exit, None) => Some(ErrorReport {
                kind: ErrorKind::Internal,
                message: format!("hostenv ended with exit {} without saying why", exit.code()),
                field: None,
            }),
        };
    }
}

/// One problem found in the repository.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    /// What is wrong.
    pub kind: FindingKind,
    /// The file, relative to the linted directory.
    pub file: String,
    /// The line in that file, where there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// The key concerned, where there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// What is wrong, in words that never quote a value.
    pub message: String,
}

/// Stable identifiers of lint findings.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema, strum::IntoStaticStr, strum::EnumIter,
)]
#[serde(rename_all = "camelCase")]
#[strum(serialize_all = "camelCase")]
pub enum FindingKind {
    /// A `.env.example` does not parse (bad line, bad name, duplicate key, unclosed quote).
    ContractInvalid,
    /// A `.env.example` placeholder looks like a real credential.
    SecretInContract,
    /// A `.env` file is tracked by git.
    EnvFileTracked,
    /// `.env` is not ignored by git where a service would keep it.
    EnvFileNotIgnored,
    /// A brand file (a BuildEnv request's `from`) holds a value that looks like a credential.
    SecretInBrandFile,
    /// A brand file cannot be read in the grammar Vite uses.
    BrandFileInvalid,
    /// A credential map cannot be read or names a contract that cannot be read.
    CredentialMapInvalid,
    /// A contract key has no source in an environment of the credential map.
    KeyWithoutSource,
    /// A credential map gives a source for a key the contract does not declare.
    SourceNotInContract,
    /// An environment of a credential map does not meet a rule of its
    /// contract (a group with no source, or two in a `one-of`; a literal
    /// of the wrong kind).
    RuleUnmet,
}

#[cfg(test)]
mod tests {
    use super::*;
    use strum::IntoEnumIterator;

    /// Every value's wire name is the one its JSON carries.
    fn names_match<T>()
    where
        T: IntoEnumIterator + Serialize + std::fmt::Debug,
        for<'a> &'static str: From<&'a T>,
    {
        for value in T::iter() {
            let json = serde_json::to_value(&value).unwrap();
            assert_eq!(json.as_str(), Some(wire_name(&value)), "{value:?}");
        }
    }

    #[test]
    fn wire_names_are_serdes() {
        names_match::<Action>();
        names_match::<ErrorKind>();
        names_match::<HostStatus>();
        names_match::<ReadBack>();
        names_match::<KeyStatus>();
        names_match::<FindingKind>();
    }
}
