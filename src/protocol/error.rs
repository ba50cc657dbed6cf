//! The one error type. Every variant names what was wrong (field, key, path,
//! line) and never a value: a value may be a secret.

use crate::protocol::exit::Exit;
use crate::protocol::request::API_VERSION;
use schemars::JsonSchema;
use serde::Serialize;

/// Stable identifiers for every error hostenv reports, in `error.kind`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema, strum::IntoStaticStr, strum::EnumIter,
)]
#[serde(rename_all = "camelCase")]
#[strum(serialize_all = "camelCase")]
pub enum ErrorKind {
    /// The command line was not understood.
    Usage,
    /// The request could not be read (file missing, not UTF-8, I/O error).
    RequestUnreadable,
    /// The request is larger than 1 MiB.
    RequestTooLarge,
    /// The request is not well-formed JSON.
    InvalidJson,
    /// `apiVersion` is missing or not one this binary speaks.
    UnsupportedApiVersion,
    /// `kind` is missing or not one of Deploy, Rotation, BuildEnv.
    UnknownKind,
    /// The request is of a kind this action does not take.
    WrongKind,
    /// The request does not match the schema: a wrong type, an unknown or missing field.
    InvalidRequest,
    /// A key's source does not name exactly one of `value`, `secretEnv`, `secretFileEnv`.
    InvalidSource,
    /// `service` is not a plain name.
    InvalidServiceName,
    /// A host name, port or user cannot be used safely.
    InvalidHost,
    /// A systemd unit or instance name is invalid.
    InvalidUnitName,
    /// A path that must be absolute and plain is not.
    InvalidPath,
    /// `target.mode` is not an octal file mode.
    InvalidMode,
    /// `target.mode` would let others read the file.
    InsecureMode,
    /// A user or group name is invalid.
    InvalidName,
    /// A verify URL is not a usable http URL template.
    InvalidUrl,
    /// A setting is out of range or contradicts another.
    InvalidSetting,
    /// A service outside the catalog lacks `target`, `restart` or `verify`.
    ServiceDefaultsMissing,
    /// The service catalog given with `--catalog` cannot be used: unreadable,
    /// over 1 MiB, not JSON, not the catalog schema, or a setting no deploy
    /// could use; the message names the file and the field.
    CatalogInvalid,
    /// The `.env.example` contract cannot be read.
    ContractUnreadable,
    /// The `.env.example` contract has a syntax error.
    ContractInvalid,
    /// One or more keys have problems; each is listed in `contract.keys`.
    KeyProblems,
    /// The values would overflow a process environment, or the rendered file
    /// is larger than the oldest systemd the hosts may run reads; the message
    /// names the size, the limit and the keys whose values take the most room.
    FileTooLarge,
    /// A whole-file `envFile` source cannot be used.
    EnvFileInvalid,
    /// A key listed in `shared` resolves to different values across deployments.
    SharedKeyMismatch,
    /// `VITE_*` variables are set in the build environment and would override the file.
    BuildEnvOverride,
    /// A `.env.local` / `.env.<mode>` file beside the output would override it.
    OverridingEnvFile,
    /// The brand file given in `from` cannot be used.
    BrandFileInvalid,
    /// The output file could not be written.
    OutputWriteFailed,
    /// An output file the run would write (`--junit`) cannot be written
    /// there; refused before any host.
    OutputUnwritable,
    /// A bug in hostenv.
    Internal,
    /// Some hosts did not end as the action means them to; each host's own error says why.
    HostsFailed,
    /// The TCP connection or SSH handshake failed or timed out.
    ConnectFailed,
    /// The host offered a key that no known_hosts entry records (policy `strict`).
    HostKeyUnknown,
    /// The host offered a key other than the one known_hosts records for it.
    HostKeyChanged,
    /// The SSH credentials were refused, or could not be loaded.
    AuthFailed,
    /// The SSH certificate offered with the key is expired, not yet valid, or
    /// not for the login user; it was not offered.
    CertificateUnusable,
    /// The SSH connection failed or timed out during a step.
    ConnectionLost,
    /// `sudo -n` refused a command: the login user lacks the right.
    SudoRefused,
    /// The host has no host program (`/usr/local/sbin/hostenv-host`) or no
    /// configuration for the service, and the login user cannot install them.
    HostProgramMissing,
    /// The host program is another version, its install is unsafe, or the
    /// service's configuration on the host differs from the request.
    HostProgramMismatch,
    /// The host program cannot run there: not a static build, or it failed
    /// to start on the host (the message gives the loader's words); nothing
    /// of it was left on the host.
    HostProgramUnusable,
    /// A command on the host failed.
    RemoteCommandFailed,
    /// A host sent more than hostenv reads from it there (the message names
    /// the bound): its answers are not read further.
    HostAnswerTooLarge,
    /// The target was replaced by someone else while the switch put the new
    /// file in place: the host holds neither the old file nor the new one.
    TargetReplaced,
    /// The host's current file cannot be read or used.
    CurrentFileInvalid,
    /// The new file would change the value of a key another service shares.
    SharedKeyChange,
    /// The host's systemd would drop a value of the new file, or is older than
    /// `target.systemdMin`; nothing was written.
    SystemdUnsupported,
    /// A templated unit has no instances on the host.
    NoInstances,
    /// `systemctl restart` failed.
    RestartFailed,
    /// A unit hit systemd's start limit.
    StartLimitHit,
    /// A health check did not pass before its deadline.
    HealthCheckFailed,
    /// The run's `deadlineMs` passed.
    DeadlineExceeded,
    /// `--expect-plan` did not match: the request or a host changed since the plan.
    PlanMismatch,
    /// `rollback`: the host has no such backup.
    NoBackup,
    /// Another run held the host's lock for longer than `rollout.lockWaitMs`.
    Locked,
    /// The host was not attempted (the canary failed, or `maxFailed` was exceeded, or another
    /// host of a Rotation failed first).
    NotAttempted,
    /// Another host of the Rotation failed, so this host was put back.
    RotationAborted,
    /// An overlap rotation needs one old value of the key on every verifier host, and there was not one.
    OverlapUnavailable,
    /// `purgeBackupsOf` could not read or remove the backups; the new file is in place.
    PurgeFailed,
    /// `lint`: the path is not a directory in a git work tree.
    LintPathInvalid,
    /// `lint` found problems; each is listed in `findings` (exit 4).
    LintFindings,
    /// `plan`: a deploy would change hosts; each is `planned` (exit 4).
    ChangesPending,
    /// `drift`: hosts differ from the request, or a shared key does not hold one
    /// value everywhere; each such host is `drifted` (exit 4).
    DriftFound,
}

/// What went wrong on one host: a stable kind and words that never hold a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostError {
    pub kind: ErrorKind,
    pub message: String,
}

impl HostError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> HostError {
        HostError {
            kind,
            message: message.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error("cannot read the request from {from}: {reason}")]
    RequestUnreadable { from: String, reason: String },
    #[error("the request is {size} bytes; the limit is {limit} bytes")]
    RequestTooLarge { size: u64, limit: u64 },
    #[error("the request is not valid JSON: {reason} at line {line}, column {column}")]
    InvalidJson {
        reason: &'static str,
        line: usize,
        column: usize,
    },
    /// `found`: the value as the message may show it (`echo`), None when missing.
    #[error("{}", match found {
        Some(found) => format!("unsupported apiVersion {found}; this hostenv speaks `{API_VERSION}`"),
        None => format!("`apiVersion` is missing; this hostenv speaks `{API_VERSION}`"),
    })]
    UnsupportedApiVersion { found: Option<String> },
    #[error("{}; expected `Deploy`, `Rotation` or `BuildEnv`", match found {
        Some(found) => format!("unknown kind {found}"),
        None => "`kind` is missing".to_string(),
    })]
    UnknownKind { found: Option<String> },
    #[error("`hostenv {action}` does not take a `{kind}` request")]
    WrongKind { action: String, kind: String },
    #[error("{}", at_field(field, message))]
    Invalid {
        kind: ErrorKind,
        field: String,
        message: String,
    },
    #[error("service `{service}` is not in the catalog, so the request must set {missing}")]
    ServiceDefaultsMissing { service: String, missing: String },
    #[error("cannot read the contract `{path}`: {reason}")]
    ContractUnreadable { path: String, reason: String },
    #[error("contract `{path}` line {line}: {reason}")]
    ContractInvalid {
        path: String,
        line: usize,
        reason: String,
    },
    /// Every key with a problem (its name, its host when it has one, its
    /// status's wire name); `within` names
    /// a Rotation's deployment (` in `service``) or is empty.
    #[error("{}", key_problems(problems, within))]
    KeyProblems {
        problems: Vec<(String, Option<String>, &'static str)>,
        within: String,
    },
    #[error("`{field}` line {line}: {reason}")]
    EnvFileInvalid {
        field: String,
        line: usize,
        reason: String,
    },
    #[error("shared key `{key}` resolves to different values in {services}")]
    SharedKeyMismatch { key: String, services: String },
    #[error("{names} set in the build environment would override the file Vite reads; unset them for the build")]
    BuildEnvOverride { names: String },
    #[error("`{path}` exists and would override the generated file in Vite's mode `{mode}`")]
    OverridingEnvFile { path: String, mode: String },
    #[error("brand file `{path}`: {reason}")]
    BrandFileInvalid { path: String, reason: String },
    #[error("cannot write `{path}`: {reason}")]
    OutputWriteFailed { path: String, reason: String },
    #[error("{flag} `{path}` cannot be written: {reason}; nothing was done")]
    OutputUnwritable {
        flag: &'static str,
        path: String,
        reason: String,
    },
    #[error("catalog `{origin}`{}: {reason}", if at.is_empty() { String::new() } else { format!(" at `{at}`") })]
    CatalogInvalid {
        origin: String,
        at: String,
        reason: String,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

fn key_problems(problems: &[(String, Option<String>, &'static str)], within: &str) -> String {
    let listed: Vec<String> = problems
        .iter()
        .map(|(name, host, status)| match host {
            Some(host) => format!("`{name}` on `{host}` ({status})"),
            None => format!("`{name}` ({status})"),
        })
        .collect();
    let noun = if problems.len() == 1 {
        "key has a problem"
    } else {
        "keys have problems"
    };
    format!(
        "{} {noun}{within}: {}; see `contract.keys`",
        problems.len(),
        listed.join(", ")
    )
}

fn at_field(field: &str, message: &str) -> String {
    if field.is_empty() {
        message.to_string()
    } else {
        format!("`{field}`: {message}")
    }
}

impl Error {
    /// A request problem found by semantic validation, at a JSON pointer.
    pub fn invalid(kind: ErrorKind, field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Invalid {
            kind,
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Usage(_) => ErrorKind::Usage,
            Error::RequestUnreadable { .. } => ErrorKind::RequestUnreadable,
            Error::RequestTooLarge { .. } => ErrorKind::RequestTooLarge,
            Error::InvalidJson { .. } => ErrorKind::InvalidJson,
            Error::UnsupportedApiVersion { .. } => ErrorKind::UnsupportedApiVersion,
            Error::UnknownKind { .. } => ErrorKind::UnknownKind,
            Error::WrongKind { .. } => ErrorKind::WrongKind,
            Error::Invalid { kind, .. } => *kind,
            Error::ServiceDefaultsMissing { .. } => ErrorKind::ServiceDefaultsMissing,
            Error::ContractUnreadable { .. } => ErrorKind::ContractUnreadable,
            Error::ContractInvalid { .. } => ErrorKind::ContractInvalid,
            Error::KeyProblems { .. } => ErrorKind::KeyProblems,
            Error::EnvFileInvalid { .. } => ErrorKind::EnvFileInvalid,
            Error::SharedKeyMismatch { .. } => ErrorKind::SharedKeyMismatch,
            Error::BuildEnvOverride { .. } => ErrorKind::BuildEnvOverride,
            Error::OverridingEnvFile { .. } => ErrorKind::OverridingEnvFile,
            Error::BrandFileInvalid { .. } => ErrorKind::BrandFileInvalid,
            Error::OutputWriteFailed { .. } => ErrorKind::OutputWriteFailed,
            Error::OutputUnwritable { .. } => ErrorKind::OutputUnwritable,
            Error::CatalogInvalid { .. } => ErrorKind::CatalogInvalid,
            Error::Internal(_) => ErrorKind::Internal,
        }
    }

    /// The JSON pointer of the offending request field, where there is one.
    pub fn field(&self) -> Option<String> {
        match self {
            Error::Invalid { field, .. } | Error::EnvFileInvalid { field, .. } => {
                Some(field.clone())
            }
            Error::ServiceDefaultsMissing { .. } => Some("/service".into()),
            Error::ContractUnreadable { .. } | Error::ContractInvalid { .. } => {
                Some("/contract".into())
            }
            Error::BrandFileInvalid { .. } => Some("/from".into()),
            Error::OutputWriteFailed { .. } | Error::OverridingEnvFile { .. } => {
                Some("/output".into())
            }
            _ => None,
        }
    }

    /// Everything but a failed write is found before any host is contacted
    /// or any file written, so it is a rejection (failed hosts are an
    /// outcome, not an error: `deploy` reports them).
    pub fn exit(&self) -> Exit {
        match self {
            Error::OutputWriteFailed { .. } => Exit::Failed,
            _ => Exit::Rejected,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
