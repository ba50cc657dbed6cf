//! Protocol types in: the only place that defines what a request may say.
//!
//! `apiVersion` and `kind` form an envelope checked before anything else, so the
//! three body types (`Deployment`, `Rotation`, `BuildEnv`) carry neither; a
//! Rotation's deployments are the same `Deployment` type as a Deploy.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

/// The one protocol version this binary speaks.
pub const API_VERSION: &str = "hostenv/v1";
/// Requests larger than this are refused before parsing.
pub const MAX_REQUEST_BYTES: u64 = 1024 * 1024;

/// The kinds of request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Deploy,
    Rotation,
    BuildEnv,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Deploy, Kind::Rotation, Kind::BuildEnv];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Deploy => "Deploy",
            Kind::Rotation => "Rotation",
            Kind::BuildEnv => "BuildEnv",
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.name() == name)
    }
}

/// A parsed, schema-valid request.
#[derive(Debug, Clone)]
pub enum Request {
    Deploy(Box<Deployment>),
    Rotation(Rotation),
    BuildEnv(BuildEnv),
}

impl Request {
    pub fn kind(&self) -> Kind {
        match self {
            Request::Deploy(_) => Kind::Deploy,
            Request::Rotation(_) => Kind::Rotation,
            Request::BuildEnv(_) => Kind::BuildEnv,
        }
    }
}

/// Deploy one service's `.env` to its hosts (`kind: Deploy`), or one deployment of a Rotation.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Deployment {
    /// The service: a catalog entry (`voxbridge`, `voxcore`, `voxdialler`) whose target, restart and
    /// verify settings are the defaults, or any other plain name, which must then set all three.
    pub service: String,
    /// Path of the service's `.env.example`, relative to the working directory: every key it
    /// declares needs a source unless listed in `optional`.
    pub contract: String,
    /// The hosts to deploy to, as names or objects.
    #[schemars(length(min = 1))]
    pub hosts: Vec<HostSpec>,
    /// A source for each key. Exactly one of `env` / `envFile`.
    #[serde(default)]
    pub env: Option<BTreeMap<String, Source>>,
    /// A whole `.env` file (a Jenkins secret file) instead of `env`; every value in it is secret.
    #[serde(default)]
    pub env_file: Option<EnvFileSource>,
    /// Contract keys that may be left without a source; they are then left out of the file.
    #[serde(default)]
    pub optional: Vec<String>,
    /// How to reach the hosts.
    #[serde(default)]
    pub ssh: Option<Ssh>,
    /// Where the file goes on each host; overrides the catalog field by field.
    #[serde(default)]
    pub target: Option<Target>,
    /// Which units restart after the file changes; overrides the catalog field by field.
    #[serde(default)]
    pub restart: Option<Restart>,
    /// Health checks after the restart; replaces the catalog's list.
    #[serde(default)]
    pub verify: Option<Vec<Verify>>,
    /// How many hosts change at once.
    #[serde(default)]
    pub rollout: Option<Rollout>,
    /// Put the previous file back on a host whose restart or verification fails (default true).
    #[serde(default)]
    pub rollback_on_failure: Option<bool>,
    /// Allow a single-service Deploy to change a key the catalog marks as shared (default false;
    /// rotate shared keys with a Rotation instead).
    #[serde(default)]
    pub allow_shared_change: Option<bool>,
    /// Keys whose old values must not live on in backups (a leaked secret): after a successful
    /// verify, every backup on the hosts holding another value for one of them is removed.
    #[serde(default)]
    pub purge_backups_of: Vec<String>,
    /// The environment name (e.g. `production`): recorded in the result and audit, part of the lock name.
    #[serde(default)]
    pub environment: Option<String>,
    /// Bound on the whole run, in milliseconds.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub deadline_ms: Option<u64>,
    /// Who and what started the run, for the audit trail.
    #[serde(default)]
    pub audit: Option<Audit>,
}

/// Where one key's value comes from: exactly one of `value`, `secretEnv`, `secretFileEnv`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    /// A literal, non-secret value. It is shown in results as it is, so a literal that looks
    /// like a credential is refused.
    #[serde(default)]
    pub value: Option<String>,
    /// The NAME of the environment variable that holds the secret (bound by the CI).
    #[serde(default)]
    pub secret_env: Option<String>,
    /// How the `secretEnv` variable is encoded: `base64` (RFC 4648 standard alphabet, padding
    /// optional, whitespace ignored) for values that cannot hold newlines.
    #[serde(default)]
    pub encoding: Option<Encoding>,
    /// The NAME of the environment variable holding the path of a file whose content is the
    /// secret: a regular file of at most 1 MiB, UTF-8 without NUL; one trailing newline is dropped.
    #[serde(default)]
    pub secret_file_env: Option<String>,
    /// The CI credential id feeding this key; only recorded.
    #[serde(default)]
    pub credential_id: Option<String>,
}

/// Encodings of a `secretEnv` variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Encoding {
    /// RFC 4648 standard alphabet.
    Base64,
}

/// A whole `.env` file shipped as one secret.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvFileSource {
    /// The NAME of the environment variable holding the file's path.
    pub secret_file_env: String,
    /// The CI credential id of the file; only recorded.
    #[serde(default)]
    pub credential_id: Option<String>,
}

/// A host: its name, or an object with per-host settings.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum HostSpec {
    /// A host name or address.
    Name(String),
    /// A host with its own settings.
    Entry(HostEntry),
}

/// A host with its own settings.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostEntry {
    /// Host name or address.
    pub host: String,
    /// SSH port (default `ssh.port`, else 22).
    #[serde(default)]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// SSH login user (default `ssh.user`, else root).
    #[serde(default)]
    pub user: Option<String>,
    /// Sources for this host only: they override or add to the top-level ones.
    #[serde(default)]
    pub env: Option<BTreeMap<String, Source>>,
    /// A whole `.env` for this host, replacing the top-level `env` / `envFile`.
    #[serde(default)]
    pub env_file: Option<EnvFileSource>,
    /// Instances of a templated unit (`voxcore@{instance}.service`) on this host; discovered when absent.
    #[serde(default)]
    pub instances: Option<Vec<String>>,
}

impl HostSpec {
    pub fn name(&self) -> &str {
        match self {
            HostSpec::Name(name) => name,
            HostSpec::Entry(entry) => &entry.host,
        }
    }

    pub fn entry(&self) -> Option<&HostEntry> {
        match self {
            HostSpec::Name(_) => None,
            HostSpec::Entry(entry) => Some(entry),
        }
    }
}

/// SSH settings shared by every host.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ssh {
    /// Login user (default: the user `userEnv` names, else root).
    #[serde(default)]
    pub user: Option<String>,
    /// The NAME of an environment variable holding the login user, used when `user` is not set
    /// (Jenkins binds an `sshUserPrivateKey` credential's username so).
    #[serde(default)]
    pub user_env: Option<String>,
    /// Port (default 22).
    #[serde(default)]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// A known_hosts file (hashed and `[host]:port` entries work).
    #[serde(default)]
    pub known_hosts: Option<String>,
    /// The NAME of an environment variable holding base64 known_hosts content (Bitbucket).
    #[serde(default)]
    pub known_hosts_env: Option<String>,
    /// The NAME of an environment variable holding the path of a known_hosts file (a Jenkins
    /// secret file credential).
    #[serde(default)]
    pub known_hosts_file_env: Option<String>,
    /// `strict` (default): only known keys; `acceptNew`: record a key for a host with no entry at all.
    #[serde(default)]
    pub host_key_policy: Option<HostKeyPolicy>,
    /// The NAME of an environment variable holding a private key file path (Jenkins `sshUserPrivateKey`).
    #[serde(default)]
    pub identity_file_env: Option<String>,
    /// The NAME of an environment variable holding base64 private key content (Bitbucket).
    #[serde(default)]
    pub identity_env: Option<String>,
    /// The NAME of an environment variable holding the key's passphrase.
    #[serde(default)]
    pub passphrase_env: Option<String>,
    /// Authenticate with the ssh-agent at `SSH_AUTH_SOCK`.
    #[serde(default)]
    pub agent: Option<bool>,
    /// The NAME of an environment variable holding the path of an OpenSSH user
    /// certificate for the key (default: `<key>-cert.pub` beside an identity
    /// file, when there is one, as OpenSSH does).
    #[serde(default)]
    pub certificate_file_env: Option<String>,
    /// The NAME of an environment variable holding a base64 OpenSSH user
    /// certificate (the `-cert.pub` file's content; Bitbucket).
    #[serde(default)]
    pub certificate_env: Option<String>,
    /// `auto` (default): `sudo -n` when the login user is not root; `always`; `never`.
    #[serde(default)]
    pub sudo: Option<SudoMode>,
    /// Reach the hosts through this bastion (a direct-tcpip tunnel).
    #[serde(default)]
    pub jump: Option<Jump>,
    /// TCP connect and handshake timeout in milliseconds (default 10000).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub connect_timeout_ms: Option<u64>,
    /// Timeout of each SSH read or write in milliseconds (default 30000).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub io_timeout_ms: Option<u64>,
}

/// A bastion host. Fields left out are taken from `ssh`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Jump {
    /// The bastion's host name or address.
    pub host: String,
    /// Its SSH port (default 22).
    #[serde(default)]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// The login user on the bastion (default `ssh.user`).
    #[serde(default)]
    pub user: Option<String>,
    /// The NAME of the variable holding the bastion key's path (default: `ssh`'s key).
    #[serde(default)]
    pub identity_file_env: Option<String>,
    /// The NAME of the variable holding the bastion key as base64.
    #[serde(default)]
    pub identity_env: Option<String>,
    /// The NAME of the variable holding the bastion key's passphrase.
    #[serde(default)]
    pub passphrase_env: Option<String>,
    /// Authenticate to the bastion with the ssh-agent.
    #[serde(default)]
    pub agent: Option<bool>,
    /// The NAME of the variable holding the path of the bastion key's certificate.
    #[serde(default)]
    pub certificate_file_env: Option<String>,
    /// The NAME of the variable holding the bastion key's certificate as base64.
    #[serde(default)]
    pub certificate_env: Option<String>,
    /// known_hosts for the bastion (default `ssh.knownHosts`).
    #[serde(default)]
    pub known_hosts: Option<String>,
    /// The NAME of the variable holding base64 known_hosts content for the bastion.
    #[serde(default)]
    pub known_hosts_env: Option<String>,
}

/// How a health check reaches the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum VerifyVia {
    /// From the machine hostenv runs on (default).
    Direct,
    /// Through the host's own SSH session (direct-tcpip), for ports the CI cannot reach.
    Ssh,
}

/// Host key policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum HostKeyPolicy {
    /// Only keys already in known_hosts.
    Strict,
    /// Record the key of a host that has no entry at all; a changed key is still refused.
    AcceptNew,
}

/// When to use sudo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SudoMode {
    Auto,
    Always,
    Never,
}

/// The target file on each host.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Target {
    /// Absolute path of the `.env` on the host.
    #[serde(default)]
    pub path: Option<String>,
    /// Owner of the file (the service user).
    #[serde(default)]
    pub owner: Option<String>,
    /// Group of the file (default: the owner).
    #[serde(default)]
    pub group: Option<String>,
    /// `0600` (default) or `0640`; anything readable by others is refused.
    #[serde(default)]
    pub mode: Option<String>,
    /// How many previous versions to keep (default 5; at least 1, which a rollback uses).
    #[serde(default)]
    #[schemars(range(min = 1, max = 100))]
    pub backups: Option<u32>,
    /// hostenv's root-owned 0700 directory on the host for backups and the audit log
    /// (default `/var/lib/hostenv/<service>`).
    #[serde(default)]
    pub state_dir: Option<String>,
    /// The oldest systemd version the hosts run (default: any from 219). Values
    /// a version from this one on would drop or read differently are refused
    /// up front instead of on each host; from 247 on, values may hold a newline
    /// after a backslash. A host running an older version fails before staging.
    #[serde(default)]
    #[schemars(range(min = 219, max = 999))]
    pub systemd_min: Option<u32>,
}

/// The units to restart.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Restart {
    /// systemd units; a template (`name@.service`) restarts its instances.
    #[serde(default)]
    pub units: Option<Vec<String>>,
    /// Restart even when the file did not change.
    #[serde(default)]
    pub force: Option<bool>,
    /// Bound on each restart in milliseconds (default 60000).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub timeout_ms: Option<u64>,
}

/// One HTTP health check.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Verify {
    /// URL template (plain `http://`): `{host}` is the host's name, `{instance}` a unit instance (checked per instance).
    pub url: String,
    /// The status that counts as healthy (default 200).
    #[serde(default)]
    #[schemars(range(min = 100, max = 599))]
    pub expect_status: Option<u16>,
    /// Per-attempt timeout in milliseconds (default 2000).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub timeout_ms: Option<u64>,
    /// Pause between attempts in milliseconds (default 500).
    #[serde(default)]
    pub interval_ms: Option<u64>,
    /// Give up after this many milliseconds (default 30000).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub deadline_ms: Option<u64>,
    /// Consecutive successes needed (default 2).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub consecutive: Option<u32>,
    /// `direct` (default) or `ssh`: through the host's SSH session.
    #[serde(default)]
    pub via: Option<VerifyVia>,
}

/// Rollout control.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rollout {
    /// Hosts worked on at once (default 10).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub parallel: Option<u32>,
    /// Hosts per batch: a count or `"N%"` (default `"100%"`).
    #[serde(default)]
    pub batch: Option<Amount>,
    /// Hosts deployed first, alone (default 0).
    #[serde(default)]
    pub canary: Option<u32>,
    /// Failed hosts tolerated before no further batch starts: a count or `"N%"` (default 0).
    #[serde(default)]
    pub max_failed: Option<Amount>,
    /// How long to wait for a host lock another run holds, in milliseconds (default 60000).
    #[serde(default)]
    #[schemars(range(min = 1000))]
    pub lock_wait_ms: Option<u64>,
}

/// A count of hosts or a percentage such as `"25%"`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Amount {
    /// A number of hosts.
    Count(u32),
    /// A percentage of the hosts, such as `"25%"`, rounded up, at least 1.
    Percent(String),
}

/// Audit fields recorded on each host.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Audit {
    /// The CI build URL, at most 1,024 characters.
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub build_url: Option<String>,
    /// Who or what ran the deploy, at most 256 characters.
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub by: Option<String>,
}

/// Rotate secrets across several services in one window (`kind: Rotation`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rotation {
    /// Keys that must resolve to the same value in every deployment that has them.
    #[serde(default)]
    pub shared: Vec<String>,
    /// The deployments, each as a Deploy without `apiVersion` / `kind`, in switch order.
    #[schemars(length(min = 1))]
    pub deployments: Vec<Deployment>,
    /// Shared keys rotated in three phases for a verifier that accepts two values: the
    /// deployments whose contract declares `<KEY>_PREVIOUS` get the new value and keep the old
    /// one there, then the others switch, then `<KEY>_PREVIOUS` is dropped.
    #[serde(default)]
    pub overlap: Vec<String>,
}

/// The console's build-time `.env`, read by Vite (`kind: BuildEnv`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BuildEnv {
    /// Path of the console's `.env.example`.
    pub contract: String,
    /// A brand `.env` (dotenv grammar) that provides values; `env` entries override it.
    #[serde(default)]
    pub from: Option<String>,
    /// Literal values. Secret sources are refused: these values are baked into a public bundle.
    #[serde(default)]
    pub env: BTreeMap<String, Source>,
    /// Contract keys that may be left without a value.
    #[serde(default)]
    pub optional: Vec<String>,
    /// Where to write the file (default `.env`).
    #[serde(default)]
    pub output: Option<String>,
    /// The Vite mode of the build (default `production`): decides which `.env.<mode>` files would override the output.
    #[serde(default)]
    pub mode: Option<String>,
}
