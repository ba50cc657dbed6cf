//! The command line: subcommands, and turning an action's outcome into the one
//! JSON document on stdout, a short summary on stderr, and the exit code.

use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};

use crate::commands::{build_env, check};
use crate::deploy;
use crate::deploy::RunOptions;
use crate::protocol::error::{Error, Result};
use crate::protocol::exit::Exit;
use crate::protocol::intake;
use crate::protocol::report::{wire_name, Action, BackupListing, HostReport, Report};
use crate::protocol::request::{Deployment, Request, API_VERSION};
use crate::protocol::schema;
use crate::settings::catalog::Catalog;
use crate::settings::secret::EnvLookup;
use crate::settings::Settings;

#[derive(Debug, Parser)]
#[command(
    name = "hostenv",
    version,
    about = "Deploy-time secrets onto servers: check, render and install a service's .env",
    long_about = "Reads one JSON request (stdin or --request FILE) and prints one JSON result on stdout.\n\
                  Exit codes: 0 success, 1 a host failed, 2 request rejected, 3 a host needs a person, 4 differences found."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate, resolve and render in memory; touches no host (Deploy, Rotation, BuildEnv).
    Check(CheckArgs),
    /// Connect and read every host; report what a deploy would change, writing nothing (Deploy, Rotation).
    Plan(PlanArgs),
    /// Report which hosts no longer hold what the request would write; exit 4 if any (Deploy, Rotation).
    Drift(RequestArgs),
    /// List each host's backups: number, time, and the keys each would add, remove or change against the current file (names and fingerprints, never values); writes nothing (Deploy, Rotation).
    Backups(RequestArgs),
    /// Put back the newest backup (or `--to N`, see `backups`) on every host or on none, restart, verify (Deploy, Rotation); a backup that would change a key another service shares is refused unless that service is in the request (roll a rotation back as one).
    Rollback(RollbackArgs),
    /// Install the rendered .env on every host, restart, verify, roll back what fails (Deploy, Rotation).
    Deploy(DeployArgs),
    /// Write the console's build-time .env for Vite (BuildEnv).
    BuildEnv(RequestArgs),
    /// Check a service repository: contracts hold placeholders, no .env is tracked, credential maps match.
    Lint {
        /// The repository (or a directory in it) to check.
        #[arg(default_value = ".")]
        path: PathBuf,
        /// A credential map (resources/io/hostenv/credentials/<service>.json) to check against its contract; repeatable.
        #[arg(long = "credentials", value_name = "FILE")]
        credentials: Vec<PathBuf>,
        /// Also write the findings as JUnit XML to FILE.
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// Leave out everything below DIR (relative to PATH), such as a test suite's deliberately broken fixtures; repeatable.
        #[arg(long = "exclude", value_name = "DIR")]
        exclude: Vec<String>,
    },
    /// Install the host program and each service's configuration on every host, as root (Deploy, Rotation).
    HostInstall {
        #[command(flatten)]
        request: RequestArgs,
        /// Print each service's configuration file instead, for configuration management.
        #[arg(long)]
        print: bool,
    },
    /// Print the exact sudo rules a non-root deploy user needs for a Deploy or Rotation request.
    Sudoers {
        #[command(flatten)]
        request: RequestFile,
        /// The deploy user (default: the request's `ssh.user`, else `deploy`).
        #[arg(long)]
        user: Option<String>,
    },
    /// Print the JSON Schema of requests, results, the version document or a service catalog.
    Schema {
        #[arg(value_enum)]
        which: SchemaKind,
    },
    /// Print the version and the supported apiVersions.
    Version {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct RequestFile {
    /// Read the request from FILE instead of stdin.
    #[arg(long, value_name = "FILE")]
    pub request: Option<PathBuf>,
    /// The service catalog: FILE instead of the built-in one (the Jenkins steps pass the library's `io/hostenv/catalog.json`).
    #[arg(long, value_name = "FILE")]
    pub catalog: Option<PathBuf>,
}

impl RequestFile {
    /// The catalog the run uses: `--catalog FILE`, else the built-in one.
    fn catalog(&self) -> Result<Catalog> {
        match &self.catalog {
            Some(path) => Catalog::read(path),
            None => Ok(Catalog::builtin()),
        }
    }
}

/// What every action that prints a result takes.
#[derive(Debug, clap::Args)]
pub struct RequestArgs {
    #[command(flatten)]
    pub file: RequestFile,
    /// Also write the result as JUnit XML to FILE (one testcase per host).
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub common: RequestArgs,
    /// The SSH credentials are not bound in this run (a test stage): check which
    /// `ssh` sources are set, not the variables they name.
    #[arg(long)]
    pub ssh_unbound: bool,
    /// No credential is bound in this run (a build that may run untrusted
    /// code): check the request, the contract and every source's shape and
    /// name, reading no secret (implies --ssh-unbound).
    #[arg(long)]
    pub secrets_unbound: bool,
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub common: RequestArgs,
    /// Add `planDigest`: an HMAC under the key in the environment variable NAME.
    #[arg(long, value_name = "NAME")]
    pub plan_key_env: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    #[command(flatten)]
    pub common: RequestArgs,
    /// The NAME of the environment variable holding the plan digest's HMAC key.
    #[arg(long, value_name = "NAME")]
    pub plan_key_env: Option<String>,
    /// Refuse, touching nothing, unless the plan digest is still DIGEST.
    #[arg(long, value_name = "DIGEST", requires = "plan_key_env")]
    pub expect_plan: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub common: RequestArgs,
    /// Put back the Nth newest backup (default 1, the newest).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub to: Option<u32>,
}

/// The flags only some actions take, gathered for the run.
#[derive(Default)]
struct RunFlags<'a> {
    plan_key_env: Option<&'a str>,
    expect_plan: Option<&'a str>,
    to: Option<u32>,
    ssh_unbound: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SchemaKind {
    Request,
    Result,
    /// `hostenv version --json`.
    Version,
    /// A service catalog (`--catalog FILE`).
    Catalog,
}

/// What the process prints on stdout and exits with.
pub struct Outcome {
    pub stdout: String,
    pub exit_code: i32,
}

/// Parses the arguments and runs; a usage error is answered with a result document too.
pub fn main_with_args(
    args: impl IntoIterator<Item = std::ffi::OsString>,
    env: &dyn EnvLookup,
) -> Outcome {
    let args: Vec<std::ffi::OsString> = args.into_iter().collect();
    // The action the arguments name, for a result written before they are parsed.
    let typed = args
        .iter()
        .skip(1)
        .map(|arg| arg.to_string_lossy())
        .find(|arg| !arg.starts_with('-'))
        .and_then(|word| Action::named(&word));
    if let Err(error) = crate::host::protect_process() {
        let mut report = Report::of(typed);
        report.fail(&Error::Internal(format!(
            "cannot keep secrets out of core dumps (prctl, setrlimit): {error}"
        )));
        return Outcome {
            stdout: to_json(&report),
            exit_code: report.exit_code,
        };
    }
    match Cli::try_parse_from(args) {
        Ok(cli) => run(cli, env),
        Err(error) if !error.use_stderr() => Outcome {
            stdout: error.to_string(),
            exit_code: Exit::Ok.code(),
        },
        Err(error) => {
            eprint!("{error}");
            let usage = Error::Usage(usage_message(&error.to_string()));
            let mut report = Report::of(typed);
            report.fail(&usage);
            Outcome {
                stdout: to_json(&report),
                exit_code: Exit::Rejected.code(),
            }
        }
    }
}

/// clap's message without its usage and help trailer, on one line: "the
/// following required arguments were not provided: --request <FILE>", not just
/// its first line.
fn usage_message(text: &str) -> String {
    text.lines()
        .take_while(|line| !line.starts_with("Usage:") && !line.starts_with("For more information"))
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
        .trim_start_matches("error: ")
        .to_string()
}

pub fn run(cli: Cli, env: &dyn EnvLookup) -> Outcome {
    match cli.command {
        Command::Check(args) => {
            let flags = RunFlags {
                ssh_unbound: args.ssh_unbound || args.secrets_unbound,
                ..RunFlags::default()
            };
            if args.secrets_unbound {
                let names_only = crate::settings::secret::NamesOnly(env);
                return run_action(Action::Check, &args.common, flags, &names_only);
            }
            run_action(Action::Check, &args.common, flags, env)
        }
        Command::Plan(args) => {
            let flags = RunFlags {
                plan_key_env: args.plan_key_env.as_deref(),
                ..RunFlags::default()
            };
            run_action(Action::Plan, &args.common, flags, env)
        }
        Command::Drift(args) => run_action(Action::Drift, &args, RunFlags::default(), env),
        Command::Backups(args) => run_action(Action::Backups, &args, RunFlags::default(), env),
        Command::Rollback(args) => {
            let flags = RunFlags {
                to: args.to,
                ..RunFlags::default()
            };
            run_action(Action::Rollback, &args.common, flags, env)
        }
        Command::Deploy(args) => {
            let flags = RunFlags {
                plan_key_env: args.plan_key_env.as_deref(),
                expect_plan: args.expect_plan.as_deref(),
                ..RunFlags::default()
            };
            run_action(Action::Deploy, &args.common, flags, env)
        }
        Command::BuildEnv(args) => run_action(Action::BuildEnv, &args, RunFlags::default(), env),
        Command::Lint {
            path,
            credentials,
            junit,
            exclude,
        } => lint(&path, &credentials, &exclude, junit.as_deref()),
        Command::HostInstall { request, print } if print => host_configs(&request.file),
        Command::HostInstall { request, .. } => {
            run_action(Action::HostInstall, &request, RunFlags::default(), env)
        }
        Command::Sudoers { request, user } => sudoers(&request, user.as_deref()),
        Command::Schema { which } => {
            let schema = match which {
                SchemaKind::Request => schema::request_schema(),
                SchemaKind::Result => schema::result_schema(),
                SchemaKind::Version => schema::version_schema(),
                SchemaKind::Catalog => crate::settings::catalog::schema(),
            };
            Outcome {
                stdout: pretty(&schema),
                exit_code: Exit::Ok.code(),
            }
        }
        Command::Version { json } => Outcome {
            stdout: if json {
                pretty(&serde_json::json!(crate::protocol::report::VersionReport {
                    api_version: API_VERSION,
                    kind: "Version",
                    version: env!("CARGO_PKG_VERSION"),
                    api_versions: vec![API_VERSION],
                    host_protocol: crate::host::PROTOCOL,
                    catalog_digest: crate::settings::catalog::builtin_digest(),
                    test_features: test_features(),
                }))
            } else {
                format!("hostenv {}\n", env!("CARGO_PKG_VERSION"))
            },
            exit_code: Exit::Ok.code(),
        },
    }
}

/// `hostenv lint`: findings in the result, exit 4 when there are any.
fn lint(
    path: &std::path::Path,
    credentials: &[PathBuf],
    excluded: &[String],
    junit: Option<&std::path::Path>,
) -> Outcome {
    let started = Instant::now();
    let mut report = Report::new(Action::Lint);
    if let Some(path) = junit {
        if let Err(error) = prepare_output(path, "--junit") {
            report.fail(&error);
            return finish(report, started, None);
        }
    }
    if let Err(error) = crate::commands::lint::run(path, credentials, excluded, &mut report) {
        report.fail(&error);
    }
    finish(report, started, junit)
}

fn test_features() -> Vec<&'static str> {
    let mut features = Vec::new();
    if cfg!(feature = "fault-injection") {
        features.push("fault-injection");
    }
    features
}

/// The sudo rules one deployment needs.
fn deployment_rules(
    deployment: &Deployment,
    at: &str,
    catalog: &Catalog,
    user: Option<&str>,
) -> Result<String> {
    let settings = Settings::from_request(deployment, at, catalog)?;
    let user = user
        .map(str::to_string)
        .or_else(|| deployment.ssh.as_ref().and_then(|s| s.user.clone()))
        .unwrap_or_else(|| "deploy".to_string());
    // The name starts each rule: sudoers syntax in it would be a rule of its own.
    let user = crate::settings::names::Account::parse(&user).ok_or_else(|| {
        Error::Usage(format!(
            "`--user` must be a user name (letters, digits, `.`, `_`, `-`), not `{}`",
            user.escape_debug()
        ))
    })?;
    Ok(crate::commands::sudoers::rules(&settings, &user))
}

/// One service's `/etc/hostenv/<service>.conf`, as `host-install` would write it.
fn deployment_config(deployment: &Deployment, at: &str, catalog: &Catalog) -> Result<String> {
    let settings = Settings::from_request(deployment, at, catalog)?;
    Ok(format!(
        "# {}/{}.conf\n{}",
        crate::host::CONFIG_DIR,
        settings.service,
        crate::transport::provision::expected_config(&settings).render(&settings.service)
    ))
}

/// `sudoers` and `host-install --print`: text per deployment on stdout.
fn sudoers(args: &RequestFile, user: Option<&str>) -> Outcome {
    per_deployment(args, Action::Sudoers, |d, at, catalog| {
        deployment_rules(d, at, catalog, user)
    })
}

fn host_configs(args: &RequestFile) -> Outcome {
    per_deployment(args, Action::HostInstall, deployment_config)
}

fn per_deployment(
    args: &RequestFile,
    action: Action,
    text: impl Fn(&Deployment, &str, &Catalog) -> Result<String>,
) -> Outcome {
    let name = wire_name(&action);
    let rules = args.catalog().and_then(|catalog| {
        let request = intake::read_request(args.request.as_deref())
            .and_then(|bytes| intake::parse_request(&bytes))?;
        match request {
            Request::Deploy(deployment) => text(&deployment, "", &catalog),
            // One block per deployment: each service has its own paths and units.
            Request::Rotation(rotation) => rotation
                .deployments
                .iter()
                .enumerate()
                .map(|(index, d)| text(d, &format!("/deployments/{index}"), &catalog))
                .collect::<Result<Vec<String>>>()
                .map(|blocks| blocks.join("\n")),
            other => Err(Error::WrongKind {
                action: name.into(),
                kind: other.kind().name().into(),
            }),
        }
    });
    match rules {
        Ok(rules) => Outcome {
            stdout: rules,
            exit_code: Exit::Ok.code(),
        },
        Err(error) => {
            let mut report = Report::new(action);
            report.fail(&error);
            eprintln!("hostenv {name}: {error}");
            Outcome {
                stdout: to_json(&report),
                exit_code: report.exit_code,
            }
        }
    }
}

fn run_action(action: Action, args: &RequestArgs, flags: RunFlags, env: &dyn EnvLookup) -> Outcome {
    let started = Instant::now();
    let mut report = Report::new(action);
    if let Some(path) = args.junit.as_deref() {
        if let Err(error) = prepare_output(path, "--junit") {
            report.fail(&error);
            return finish(report, started, None);
        }
    }
    let result = args.file.catalog().and_then(|catalog| {
        let bytes = intake::read_request(args.file.request.as_deref())?;
        let mut request = intake::parse_request(&bytes)?;
        let options = run_options(&flags, &bytes, env)?;
        login_users(&mut request, env, options.ssh_unbound)?;
        dispatch(action, &request, env, &catalog, &options, &mut report)
    });
    if let Err(error) = result {
        report.fail(&error);
    }
    finish(report, started, args.junit.as_deref())
}

/// Every deployment's `ssh.userEnv` read into its `ssh.user`.
fn login_users(request: &mut Request, env: &dyn EnvLookup, unbound: bool) -> Result<()> {
    use crate::settings::ssh::resolve_user_env;
    match request {
        Request::Deploy(deployment) => resolve_user_env(deployment, "", env, unbound),
        Request::Rotation(rotation) => {
            for (index, deployment) in rotation.deployments.iter_mut().enumerate() {
                let at = format!("/deployments/{index}");
                resolve_user_env(deployment, &at, env, unbound)?;
            }
            Ok(())
        }
        Request::BuildEnv(_) => Ok(()),
    }
}

/// Before anything else: an output file's directory is made if missing, and
/// a path that cannot be written there refuses the run (exit 2), so no host
/// is touched by a run whose report would be lost.
fn prepare_output(path: &std::path::Path, flag: &'static str) -> Result<()> {
    let unwritable = |reason: String| Error::OutputUnwritable {
        flag,
        path: path.display().to_string(),
        reason,
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => std::path::Path::new("."),
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| unwritable(format!("its directory cannot be made: {e}")))?;
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => return Err(unwritable("it is a directory".into())),
        Ok(_) => rustix::fs::access(path, rustix::fs::Access::WRITE_OK)
            .map_err(|e| unwritable(std::io::Error::from(e).to_string()))?,
        Err(_) => rustix::fs::access(
            dir,
            rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
        )
        .map_err(|e| unwritable(format!("its directory: {}", std::io::Error::from(e))))?,
    }
    Ok(())
}

/// Writes the JUnit file if asked, the summary to stderr, the result to stdout.
/// A JUnit file that cannot be written now is reported in `outputErrors`:
/// the hosts' outcome and the exit code stay what the hosts did.
fn finish(mut report: Report, started: Instant, junit: Option<&std::path::Path>) -> Outcome {
    report.duration_ms = started.elapsed().as_millis() as u64;
    if let Some(path) = junit {
        if let Err(error) = std::fs::write(path, crate::commands::junit::render(&report)) {
            eprintln!(
                "hostenv: cannot write the JUnit file `{}`: {error}",
                path.display()
            );
            report.output_errors.get_or_insert_with(Vec::new).push(
                crate::protocol::report::OutputError {
                    path: path.display().to_string(),
                    message: error.to_string(),
                },
            );
        }
    }
    eprint!("{}", human_summary(&report));
    Outcome {
        stdout: to_json(&report),
        exit_code: report.exit_code,
    }
}

/// The digest flags, with the key read from the environment.
fn run_options(flags: &RunFlags, bytes: &[u8], env: &dyn EnvLookup) -> Result<RunOptions> {
    let plan_key = match flags.plan_key_env {
        Some(name) => Some(
            crate::settings::secret::from_env(env, name, false)
                .map_err(|problem| Error::Usage(format!("--plan-key-env: {}", problem.message)))?,
        ),
        None => None,
    };
    Ok(RunOptions {
        plan_key,
        expect_plan: flags.expect_plan.map(str::to_string),
        request: serde_json::from_slice(bytes).unwrap_or_default(),
        rollback_to: flags.to.unwrap_or(1),
        ssh_unbound: flags.ssh_unbound,
    })
}

fn dispatch(
    action: Action,
    request: &Request,
    env: &dyn EnvLookup,
    catalog: &Catalog,
    options: &RunOptions,
    report: &mut Report,
) -> Result<()> {
    match (action, request) {
        (Action::Check, Request::Deploy(deployment)) => {
            check::check_deploy(deployment, env, catalog, options, report)
        }
        (Action::Check, Request::Rotation(rotation)) => {
            check::check_rotation(rotation, env, catalog, options, report)
        }
        (Action::Check, Request::BuildEnv(build)) => {
            build_env::prepare(build, env, report).map(|_| ())
        }
        (action, Request::Deploy(deployment)) if reaches_hosts(action) => {
            deploy::run(action, deployment, env, catalog, options, report)
        }
        (action, Request::Rotation(rotation)) if reaches_hosts(action) => {
            deploy::run_rotation(action, rotation, env, catalog, options, report)
        }
        (Action::BuildEnv, Request::BuildEnv(build)) => {
            let rendered = build_env::prepare(build, env, report)?;
            build_env::write(&rendered, report)
        }
        (action, request) => Err(Error::WrongKind {
            action: wire_name(&action).to_string(),
            kind: request.kind().name().to_string(),
        }),
    }
}

/// `backups` in the CI log: one line for the current file and one per
/// backup, saying what putting it back would change. Names only.
fn listing_lines(prefix: &str, listing: &BackupListing) -> String {
    let mut out = match &listing.current {
        Some(current) => format!("{prefix}   {:<10} written {}\n", "now", current.written_at),
        None => format!("{prefix}   {:<10} no file\n", "now"),
    };
    if listing.kept.is_empty() {
        out.push_str(&format!("{prefix}   no backups\n"));
    }
    for backup in &listing.kept {
        let keys = &backup.keys;
        let mut changes: Vec<String> = [
            ("adds", &keys.added),
            ("removes", &keys.removed),
            ("changes", &keys.changed),
        ]
        .iter()
        .filter(|(_, names)| !names.is_empty())
        .map(|(verb, names)| format!("{verb} {}", names.join(", ")))
        .collect();
        if keys.unnamed > 0 {
            changes.push(format!(
                "{} names that are no key names differ",
                keys.unnamed
            ));
        }
        let what = if changes.is_empty() {
            "the same keys and values".to_string()
        } else {
            changes.join("; ")
        };
        out.push_str(&format!(
            "{prefix}   {:<10} written {}: {what}\n",
            format!("backup {}", backup.number),
            backup.written_at
        ));
    }
    out
}

/// The actions `deploy/` runs: each connects to the request's hosts.
fn reaches_hosts(action: Action) -> bool {
    matches!(
        action,
        Action::Plan
            | Action::Drift
            | Action::Backups
            | Action::Deploy
            | Action::Rollback
            | Action::HostInstall
    )
}

/// A few lines for the CI log: what was checked, or why not. Names only, never values.
fn human_summary(report: &Report) -> String {
    let mut out = String::new();
    let action = report.action.as_ref().map_or("hostenv", wire_name);
    let subject = report
        .service
        .clone()
        .or_else(|| {
            report.deployments.as_ref().map(|d| {
                d.iter()
                    .map(|d| d.service.as_str())
                    .collect::<Vec<_>>()
                    .join(" + ")
            })
        })
        .or_else(|| report.output.as_ref().map(|o| o.path.clone()))
        .unwrap_or_default();
    let mut hosts: Vec<(String, &HostReport)> =
        report.hosts.iter().map(|h| (h.host.clone(), h)).collect();
    if let Some(deployments) = &report.deployments {
        hosts.extend(deployments.iter().flat_map(|d| {
            d.hosts
                .iter()
                .map(|h| (format!("{} {}", d.service, h.host), h))
        }));
    }
    for (host, entry) in &hosts {
        out.push_str(&format!(
            "hostenv {action}: {host}: {}\n",
            wire_name(&entry.status)
        ));
        if let Some(listing) = &entry.backups {
            out.push_str(&listing_lines(
                &format!("hostenv {action}: {host}:"),
                listing,
            ));
        }
    }
    if let Some(output) = &report.output {
        let verb = if output.written {
            "wrote"
        } else {
            "would write"
        };
        out.push_str(&format!(
            "hostenv {action}: {verb} `{}` ({} keys)\n",
            output.path,
            output.keys.len()
        ));
    }
    let contracts = report
        .contract
        .iter()
        .chain(report.deployments.iter().flatten().map(|d| &d.contract));
    for contract in contracts {
        for key in contract.keys.iter().filter(|k| k.status.is_problem()) {
            let host = key
                .host
                .as_ref()
                .map(|h| format!(" on `{h}`"))
                .unwrap_or_default();
            out.push_str(&format!(
                "hostenv {action}: key `{}`{host}: {}\n",
                key.name,
                key.message
                    .clone()
                    .unwrap_or_else(|| wire_name(&key.status).to_string())
            ));
        }
    }
    for finding in report.findings.iter().flatten() {
        let place = match finding.line {
            Some(line) => format!("{}:{line}", finding.file),
            None => finding.file.clone(),
        };
        out.push_str(&format!("hostenv lint: {place}: {}\n", finding.message));
    }
    let head = format!("hostenv {action} {subject}");
    match &report.error {
        None => out.push_str(&format!("{}: ok\n", head.trim_end())),
        Some(error) => out.push_str(&format!("{}: {}\n", head.trim_end(), error.message)),
    }
    out
}

fn to_json(report: &Report) -> String {
    pretty(&serde_json::to_value(report).unwrap_or_default())
}

fn pretty(value: &serde_json::Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}
