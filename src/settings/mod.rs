//! A deployment's effective settings: the request merged over the catalog's
//! defaults, every name and path checked before anything uses it. Names that
//! later reach a remote command line (hosts, users, units, paths) are held to
//! plain character sets here, so no quoting mistake downstream can inject.

pub mod catalog;
pub mod certificate;
pub mod known_hosts;
pub mod names;
pub mod rollout;
pub mod secret;
pub mod ssh;

use std::collections::BTreeMap;

use crate::settings::catalog::Catalog;
use names::{
    is_valid_key_name, AbsolutePath, Account, EnvironmentName, HostName, ServiceName, Unit,
};
// The host program checks the same names again; one definition serves both.
use crate::host::config::is_instance_name;
use crate::protocol::error::{Error, ErrorKind, Result};
use crate::protocol::request::{Deployment, EnvFileSource, Source, Verify};
use crate::protocol::schema::escape_pointer_token;

pub const DEFAULT_USER: &str = "root";
pub const DEFAULT_PORT: u16 = 22;
pub const DEFAULT_BACKUPS: u32 = 5;
pub const DEFAULT_RESTART_TIMEOUT_MS: u64 = 60_000;
pub const DEFAULT_MODE: u32 = 0o600;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub service: ServiceName,
    pub hosts: Vec<HostSettings>,
    pub target: TargetSettings,
    pub restart: RestartSettings,
    pub verify: Vec<VerifySettings>,
    pub environment: Option<EnvironmentName>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSettings {
    pub name: HostName,
    pub port: u16,
    pub user: Account,
    pub instances: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSettings {
    pub path: AbsolutePath,
    pub owner: Account,
    pub group: Account,
    pub mode: u32,
    pub backups: u32,
    pub state_dir: AbsolutePath,
    /// `target.systemdMin`: the oldest systemd the hosts run, when the request says.
    pub systemd_min: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartSettings {
    pub units: Vec<Unit>,
    pub force: bool,
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifySettings {
    pub url: String,
    pub via_ssh: bool,
    pub expect_status: u16,
    pub timeout_ms: u64,
    pub interval_ms: u64,
    pub deadline_ms: u64,
    pub consecutive: u32,
}

impl Settings {
    /// Validates `deployment` (found at JSON pointer `at`) and merges it over the catalog.
    pub fn from_request(deployment: &Deployment, at: &str, catalog: &Catalog) -> Result<Settings> {
        let service = service_named(&deployment.service, &format!("{at}/service"))?;
        check_sources(deployment, at)?;
        let defaults = catalog.service(&deployment.service);
        let requested_target = deployment.target.clone().unwrap_or_default();
        let requested_restart = deployment.restart.clone().unwrap_or_default();
        let default_target = defaults.map(|d| d.target.clone()).unwrap_or_default();
        let default_restart = defaults.map(|d| d.restart.clone()).unwrap_or_default();

        let path = requested_target.path.or(default_target.path);
        let owner = requested_target.owner.or(default_target.owner);
        let units = requested_restart.units.or(default_restart.units);
        let verify = deployment
            .verify
            .clone()
            .or_else(|| defaults.map(|d| d.verify.clone()));
        let missing: Vec<&str> = [
            ("`target.path`", path.is_none()),
            ("`target.owner`", owner.is_none()),
            ("`restart.units`", units.is_none()),
            ("`verify`", verify.is_none()),
        ]
        .into_iter()
        .filter_map(|(name, absent)| absent.then_some(name))
        .collect();
        if !missing.is_empty() {
            return Err(Error::ServiceDefaultsMissing {
                service: deployment.service.clone(),
                missing: missing.join(", "),
            });
        }
        let (path, owner, units, verify) = (
            path.unwrap_or_default(),
            owner.unwrap_or_default(),
            units.unwrap_or_default(),
            verify.unwrap_or_default(),
        );
        let group = requested_target
            .group
            .or(default_target.group)
            .unwrap_or_else(|| owner.clone());
        let state_dir = requested_target
            .state_dir
            .or(default_target.state_dir)
            .unwrap_or_else(|| format!("/var/lib/hostenv/{}", deployment.service));
        let mode = match requested_target.mode.or(default_target.mode) {
            Some(mode) => parse_mode(&mode, &format!("{at}/target/mode"))?,
            None => DEFAULT_MODE,
        };
        let path = path_named(&path, &format!("{at}/target/path"))?;
        let state_dir = path_named(&state_dir, &format!("{at}/target/stateDir"))?;
        let owner = account_named(&owner, &format!("{at}/target/owner"))?;
        let group = account_named(&group, &format!("{at}/target/group"))?;
        if units.is_empty() {
            return Err(Error::invalid(
                ErrorKind::InvalidSetting,
                format!("{at}/restart/units"),
                "at least one unit is needed",
            ));
        }
        let units = units
            .iter()
            .enumerate()
            .map(|(index, unit)| unit_named(unit, &format!("{at}/restart/units/{index}")))
            .collect::<Result<Vec<Unit>>>()?;
        let templated = units.iter().any(Unit::is_template);
        let verify = verify
            .iter()
            .enumerate()
            .map(|(index, check)| {
                verify_settings(check, templated, &format!("{at}/verify/{index}"))
            })
            .collect::<Result<Vec<_>>>()?;
        let environment = deployment
            .environment
            .as_deref()
            .map(|name| environment_named(name, &format!("{at}/environment")))
            .transpose()?;
        let hosts = host_settings(deployment, at, templated)?;
        Ok(Settings {
            service,
            hosts,
            target: TargetSettings {
                path,
                owner,
                group,
                mode,
                backups: requested_target
                    .backups
                    .or(default_target.backups)
                    .unwrap_or(DEFAULT_BACKUPS),
                state_dir,
                systemd_min: requested_target.systemd_min.or(default_target.systemd_min),
            },
            restart: RestartSettings {
                units,
                force: requested_restart
                    .force
                    .or(default_restart.force)
                    .unwrap_or(false),
                timeout_ms: requested_restart
                    .timeout_ms
                    .or(default_restart.timeout_ms)
                    .unwrap_or(DEFAULT_RESTART_TIMEOUT_MS),
            },
            verify,
            environment,
        })
    }
}

/// Everything a deployment's run derives from its request before its first
/// connection, in one step: the settings, how its hosts are reached, how
/// they are taken. `deploy` builds it once per deployment; `check` rejects
/// what it would reject.
pub struct RunSettings {
    pub settings: Settings,
    pub ssh: ssh::SshConfig,
    pub rollout: rollout::Rollout,
}

impl RunSettings {
    /// `settings` when `prepare` built them already, else from the request.
    pub fn derive(
        deployment: &Deployment,
        at: &str,
        settings: Option<Settings>,
        catalog: &Catalog,
        env: &dyn secret::EnvLookup,
    ) -> Result<RunSettings> {
        let settings = match settings {
            Some(settings) => settings,
            None => Settings::from_request(deployment, at, catalog)?,
        };
        let ssh = ssh::SshConfig::from_request(deployment.ssh.as_ref(), at, env)?;
        let rollout = rollout::Rollout::from_request(deployment, at, settings.hosts.len())?;
        Ok(RunSettings {
            settings,
            ssh,
            rollout,
        })
    }
}

fn host_settings(deployment: &Deployment, at: &str, templated: bool) -> Result<Vec<HostSettings>> {
    let ssh = deployment.ssh.clone().unwrap_or_default();
    let default_user = ssh.user.unwrap_or_else(|| DEFAULT_USER.to_string());
    let default_user = account_named(&default_user, &format!("{at}/ssh/user"))?;
    if let Some(jump) = &ssh.jump {
        host_named(&jump.host, &format!("{at}/ssh/jump/host"))?;
        if let Some(user) = &jump.user {
            account_named(user, &format!("{at}/ssh/jump/user"))?;
        }
    }
    let mut seen: BTreeMap<(String, u16), usize> = BTreeMap::new();
    let mut hosts = Vec::new();
    for (index, spec) in deployment.hosts.iter().enumerate() {
        let here = match spec.entry() {
            Some(_) => format!("{at}/hosts/{index}/host"),
            None => format!("{at}/hosts/{index}"),
        };
        let name = host_named(spec.name(), &here)?;
        let entry = spec.entry();
        let port = entry
            .and_then(|e| e.port)
            .or(ssh.port)
            .unwrap_or(DEFAULT_PORT);
        let user = match entry.and_then(|e| e.user.clone()) {
            Some(user) => account_named(&user, &format!("{at}/hosts/{index}/user"))?,
            None => default_user.clone(),
        };
        if let Some(first) = seen.insert((spec.name().to_string(), port), index) {
            return Err(Error::invalid(
                ErrorKind::InvalidHost,
                here,
                format!(
                    "host `{}` is listed twice (first at index {first})",
                    spec.name()
                ),
            ));
        }
        let instances = entry.and_then(|e| e.instances.clone());
        if let Some(instances) = &instances {
            if !templated {
                return Err(Error::invalid(
                    ErrorKind::InvalidSetting,
                    format!("{at}/hosts/{index}/instances"),
                    "instances need a templated unit (`name@.service`) in `restart.units`",
                ));
            }
            for (i, instance) in instances.iter().enumerate() {
                check_instance_name(instance, &format!("{at}/hosts/{index}/instances/{i}"))?;
            }
        }
        hosts.push(HostSettings {
            name,
            port,
            user,
            instances,
        });
    }
    Ok(hosts)
}

/// Source shapes the schema cannot express: exactly one kind per key, valid key names.
fn check_sources(deployment: &Deployment, at: &str) -> Result<()> {
    match (&deployment.env, &deployment.env_file) {
        (Some(_), Some(_)) => {
            return Err(Error::invalid(
                ErrorKind::InvalidSource,
                format!("{at}/envFile"),
                "give exactly one of `env` and `envFile`, not both",
            ))
        }
        (None, None) => {
            return Err(Error::invalid(
                ErrorKind::InvalidSource,
                format!("{at}/env"),
                "give exactly one of `env` and `envFile`",
            ))
        }
        _ => {}
    }
    if let Some(env) = &deployment.env {
        check_source_map(env, &format!("{at}/env"))?;
    }
    if let Some(file) = &deployment.env_file {
        check_env_file_source(file, &format!("{at}/envFile"))?;
    }
    for (index, spec) in deployment.hosts.iter().enumerate() {
        if let Some(entry) = spec.entry() {
            if let Some(env) = &entry.env {
                check_source_map(env, &format!("{at}/hosts/{index}/env"))?;
            }
            if let Some(file) = &entry.env_file {
                check_env_file_source(file, &format!("{at}/hosts/{index}/envFile"))?;
            }
        }
    }
    check_key_names(
        &deployment.optional,
        &format!("{at}/optional"),
        ErrorKind::InvalidSource,
    )
}

/// Every name of a list such as `optional` or `shared` must be a variable name.
pub fn check_key_names(names: &[String], at: &str, kind: ErrorKind) -> Result<()> {
    for (index, name) in names.iter().enumerate() {
        if !is_valid_key_name(name) {
            return Err(Error::invalid(
                kind,
                format!("{at}/{index}"),
                format!("`{name}` is not a valid variable name"),
            ));
        }
    }
    Ok(())
}

pub fn check_source_map(env: &BTreeMap<String, Source>, at: &str) -> Result<()> {
    for (key, source) in env {
        let here = format!("{at}/{}", escape_pointer_token(key));
        if !is_valid_key_name(key) {
            return Err(Error::invalid(
                ErrorKind::InvalidSource,
                here,
                "not a valid variable name (letters, digits, `_`; not starting with a digit)",
            ));
        }
        check_source(source, &here)?;
    }
    Ok(())
}

fn check_source(source: &Source, here: &str) -> Result<()> {
    let kinds = [
        source.value.is_some(),
        source.secret_env.is_some(),
        source.secret_file_env.is_some(),
    ];
    if kinds.iter().filter(|given| **given).count() != 1 {
        return Err(Error::invalid(
            ErrorKind::InvalidSource,
            here,
            "give exactly one of `value`, `secretEnv`, `secretFileEnv`",
        ));
    }
    if source.encoding.is_some() && source.secret_env.is_none() {
        return Err(Error::invalid(
            ErrorKind::InvalidSource,
            format!("{here}/encoding"),
            "`encoding` applies to `secretEnv` only",
        ));
    }
    for (name, field) in [
        (&source.secret_env, "secretEnv"),
        (&source.secret_file_env, "secretFileEnv"),
    ] {
        if let Some(name) = name {
            check_env_var_name(name, &format!("{here}/{field}"))?;
        }
    }
    Ok(())
}

fn check_env_file_source(source: &EnvFileSource, here: &str) -> Result<()> {
    check_env_var_name(&source.secret_file_env, &format!("{here}/secretFileEnv"))
}

fn check_env_var_name(name: &str, here: &str) -> Result<()> {
    if is_valid_key_name(name) {
        Ok(())
    } else {
        Err(Error::invalid(
            ErrorKind::InvalidSource,
            here,
            "must name an environment variable (letters, digits, `_`)",
        ))
    }
}

fn verify_settings(check: &Verify, templated: bool, at: &str) -> Result<VerifySettings> {
    check_url_template(&check.url, templated, &format!("{at}/url"))?;
    Ok(VerifySettings {
        url: check.url.clone(),
        via_ssh: check.via == Some(crate::protocol::request::VerifyVia::Ssh),
        expect_status: check.expect_status.unwrap_or(200),
        timeout_ms: check.timeout_ms.unwrap_or(2_000),
        interval_ms: check.interval_ms.unwrap_or(500),
        deadline_ms: check.deadline_ms.unwrap_or(30_000),
        consecutive: check.consecutive.unwrap_or(2),
    })
}

fn check_url_template(url: &str, templated: bool, here: &str) -> Result<()> {
    let invalid = |why: &str| Error::invalid(ErrorKind::InvalidUrl, here, why.to_string());
    if url.starts_with("https://") {
        return Err(invalid(
            "health checks speak plain HTTP only for now; use an `http://` URL",
        ));
    }
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| invalid("must start with `http://`"))?;
    if rest.is_empty() || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            "must be a URL without spaces or control characters",
        ));
    }
    let mut remaining = url;
    while let Some(open) = remaining.find('{') {
        let close = remaining[open..]
            .find('}')
            .ok_or_else(|| invalid("has a `{` without a closing `}`"))?;
        match &remaining[open + 1..open + close] {
            "host" => {}
            "instance" if templated => {}
            "instance" => {
                return Err(invalid(
                    "uses `{instance}` but `restart.units` has no templated unit",
                ))
            }
            _ => return Err(invalid("placeholders are `{host}` and `{instance}` only")),
        }
        remaining = &remaining[open + close + 1..];
    }
    if remaining.contains('}') {
        return Err(invalid("has a `}` without an opening `{`"));
    }
    Ok(())
}

/// Octal mode: `0600` or `0640`. Others must never read a secrets file.
pub fn parse_mode(text: &str, here: &str) -> Result<u32> {
    let digits = text.strip_prefix('0').unwrap_or(text);
    let mode = (digits.len() == 3 && digits.chars().all(|c| ('0'..='7').contains(&c)))
        .then(|| u32::from_str_radix(digits, 8).ok())
        .flatten()
        .ok_or_else(|| {
            Error::invalid(
                ErrorKind::InvalidMode,
                here,
                "must be an octal mode: `0600` or `0640`",
            )
        })?;
    if mode & 0o007 != 0 {
        return Err(Error::invalid(
            ErrorKind::InsecureMode,
            here,
            format!("`{text}` lets other users see the file; use `0600` or `0640`"),
        ));
    }
    if mode != 0o600 && mode != 0o640 {
        return Err(Error::invalid(
            ErrorKind::InvalidMode,
            here,
            format!("`{text}` is not allowed; use `0600` or `0640`"),
        ));
    }
    Ok(mode)
}

fn service_named(name: &str, here: &str) -> Result<ServiceName> {
    ServiceName::parse(name).ok_or_else(|| {
        Error::invalid(
            ErrorKind::InvalidServiceName,
            here,
            "must be a plain name (letters, digits, `.`, `_`, `-`; no `/` or `..`)",
        )
    })
}

/// A DNS name, an IPv4 address or an IPv6 literal.
pub fn host_named(host: &str, here: &str) -> Result<HostName> {
    HostName::parse(host).ok_or_else(|| {
        Error::invalid(
            ErrorKind::InvalidHost,
            here,
            "must be a host name or IP address (letters, digits, `.`, `-`, `:`; no spaces or shell characters)",
        )
    })
}

/// POSIX-portable user and group names.
pub fn account_named(name: &str, here: &str) -> Result<Account> {
    Account::parse(name).ok_or_else(|| {
        Error::invalid(
            ErrorKind::InvalidName,
            here,
            "must be a user or group name (a letter or `_`, then letters, digits, `.`, `_`, `-`)",
        )
    })
}

fn environment_named(name: &str, here: &str) -> Result<EnvironmentName> {
    EnvironmentName::parse(name).ok_or_else(|| {
        Error::invalid(
            ErrorKind::InvalidName,
            here,
            "must be a plain environment name (letters, digits, `.`, `_`, `-`)",
        )
    })
}

/// Absolute, no `..`, no empty components, and only characters that need no
/// quoting anywhere.
fn path_named(path: &str, here: &str) -> Result<AbsolutePath> {
    AbsolutePath::parse(path).ok_or_else(|| {
        Error::invalid(
            ErrorKind::InvalidPath,
            here,
            "must be an absolute path to a file of at most 240 characters, without `..` or characters other than letters, digits and `/._-@+`",
        )
    })
}

/// `name.service`, `name@instance.service` or a template `name@.service`.
fn unit_named(unit: &str, here: &str) -> Result<Unit> {
    Unit::parse(unit).ok_or_else(|| {
        Error::invalid(
            ErrorKind::InvalidUnitName,
            here,
            "must be a systemd unit name such as `name.service` or `name@.service`",
        )
    })
}

fn check_instance_name(instance: &str, here: &str) -> Result<()> {
    if is_instance_name(instance) {
        Ok(())
    } else {
        Err(Error::invalid(
            ErrorKind::InvalidUnitName,
            here,
            "must be a unit instance name systemd passes on unchanged: letters, digits, `_` and dots between them (no `-`, which `%I` turns into `/`, and no `:`)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(result: Result<impl std::fmt::Debug>) -> ErrorKind {
        result.unwrap_err().kind()
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0600", "/m").unwrap(), 0o600);
        assert_eq!(parse_mode("640", "/m").unwrap(), 0o640);
        assert_eq!(kind(parse_mode("0644", "/m")), ErrorKind::InsecureMode);
        assert_eq!(kind(parse_mode("0604", "/m")), ErrorKind::InsecureMode);
        assert_eq!(kind(parse_mode("0700", "/m")), ErrorKind::InvalidMode);
        assert_eq!(kind(parse_mode("rw-------", "/m")), ErrorKind::InvalidMode);
        assert_eq!(kind(parse_mode("0o600", "/m")), ErrorKind::InvalidMode);
    }

    #[test]
    fn names_that_would_reach_a_shell_are_refused() {
        for host in [
            "a b",
            "a;b",
            "$(x)",
            "`x`",
            "-oProxyCommand=x",
            "a'b",
            "a\nb",
            "",
        ] {
            assert_eq!(
                kind(host_named(host, "/h").map(|_| ())),
                ErrorKind::InvalidHost,
                "{host:?}"
            );
        }
        for host in ["api-1.internal", "10.0.0.5", "::1", "fe80::1", "127.77.0.2"] {
            assert!(host_named(host, "/h").is_ok(), "{host}");
        }
        for unit in [
            "x",
            "x.service;rm",
            "-x.service",
            "a b.service",
            "x@$(id).service",
            "../x.service",
        ] {
            assert_eq!(
                kind(unit_named(unit, "/u").map(|_| ())),
                ErrorKind::InvalidUnitName,
                "{unit}"
            );
        }
        for unit in [
            "voxbridge.service",
            "voxcore@.service",
            "voxcore@sock1.service",
            "multi-user.target",
        ] {
            assert!(unit_named(unit, "/u").is_ok(), "{unit}");
        }
        for path in [
            "relative/.env",
            "/opt/../etc/shadow",
            "/opt/x y/.env",
            "/opt/",
            "/opt//x",
            "/",
        ] {
            assert_eq!(
                kind(path_named(path, "/p").map(|_| ())),
                ErrorKind::InvalidPath,
                "{path}"
            );
        }
        for service in ["../etc", "a/b", "", ".hidden", "a..b"] {
            assert_eq!(
                kind(service_named(service, "/s").map(|_| ())),
                ErrorKind::InvalidServiceName
            );
        }
    }

    #[test]
    fn url_templates() {
        assert!(check_url_template("http://{host}:8080/health", false, "/v").is_ok());
        assert!(check_url_template("http://{host}:9000/w/{instance}", true, "/v").is_ok());
        for url in [
            "ftp://x",
            "http://{host}:{port}/",
            "http://{instance}/",
            "http://a b",
            "http://{host",
        ] {
            assert_eq!(
                kind(check_url_template(url, false, "/v")),
                ErrorKind::InvalidUrl,
                "{url}"
            );
        }
    }
}
