//! `hostenv deploy` against the testbed's real hosts: real sshd, real systemd,
//! real files, real units and real health endpoints (DESIGN.md §6).
//!
//! The testbed comes up once for this test and the scenarios run in order on
//! it, each leaving the hosts as the next one expects. The scenarios live in
//! one file per topic; the table below is their order.

use std::collections::BTreeMap;
use std::process::Command;

use pretty_assertions::assert_eq;
use serde_json::{json, Value};

use crate::common::{assert_no_leak, run_hostenv, Run, TempDir};
use crate::generations::the_reader_reads_as_this_hosts_systemd;
use crate::jenkins::{a_jenkins_admins_first_day, steps_on_the_testbed};
use crate::testbed::{TestHost, Testbed};

pub(crate) mod access;
pub(crate) mod basics;
pub(crate) mod failures;
mod instances;
mod leaks;
mod locks;
mod rollout;

use access::*;
pub(crate) use basics::a_fourth_service;
use basics::*;
use failures::*;
use instances::*;
use leaks::*;
use locks::*;
use rollout::*;

pub(crate) const VOXBRIDGE_CONTRACT: &str =
    "JWT_SECRET=\nMONGODB_URI=\nMONGODB_DB=voxbridge\nREDIS_URL=\nLOG_LEVEL=info\nHEALTH_MODE=ok\n";

/// The secrets a scenario binds, as Jenkins would.
pub(crate) fn secrets(generation: &str) -> BTreeMap<String, String> {
    [
        // A backslash, and blanks, quotes, `#` and `;` after it: the real
        // systemd must read back what the universal spelling says.
        (
            "JWT_SECRET",
            format!("CANARY-jwt-{generation}-\"$quote' \\back\\ slash #;'\"\\"),
        ),
        ("MONGODB_URI", format!("CANARY-mongo-{generation}://u:p@db")),
        (
            "REDIS_URL",
            format!("CANARY-redis-{generation}\nCANARY-redis-line-two-{generation}"),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

pub(crate) fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// One health check that gives up after `deadline_ms`, for scenarios that expect it to fail.
pub(crate) fn quick_verify(deadline_ms: u64) -> Value {
    json!([{"url": "http://{host}:8080/health", "intervalMs": 100, "deadlineMs": deadline_ms, "consecutive": 1}])
}

pub(crate) fn voxbridge_request(
    testbed: &Testbed,
    hosts: &[&TestHost],
    user: &str,
    extra: Value,
) -> Value {
    let mut request = json!({
        "apiVersion": "hostenv/v1",
        "kind": "Deploy",
        "service": "voxbridge",
        "contract": "voxbridge.env.example",
        "hosts": hosts.iter().map(|h| h.addr.clone()).collect::<Vec<_>>(),
        "env": {
            "JWT_SECRET": {"secretEnv": "JWT_SECRET"},
            "MONGODB_URI": {"secretEnv": "MONGODB_URI"},
            "REDIS_URL": {"secretEnv": "REDIS_URL"},
            "MONGODB_DB": {"value": "voxbridge"},
            "LOG_LEVEL": {"value": "info"}
        },
        "optional": ["HEALTH_MODE"],
        "ssh": testbed.ssh_settings(user),
        "verify": [{"url": "http://{host}:8080/health", "intervalMs": 100, "deadlineMs": 8000, "consecutive": 2}],
        "restart": {"timeoutMs": 20000}
    });
    if let (Value::Object(map), Value::Object(extra)) = (&mut request, extra) {
        map.extend(extra);
    }
    request
}

pub(crate) struct Deployer<'a> {
    pub(crate) testbed: &'a Testbed,
    pub(crate) work: TempDir,
}

impl<'a> Deployer<'a> {
    /// A deployer with its own working directory holding the voxbridge contract.
    pub(crate) fn new(testbed: &'a Testbed, label: &str) -> Deployer<'a> {
        let work = TempDir::new(label);
        std::fs::write(
            work.path().join("voxbridge.env.example"),
            VOXBRIDGE_CONTRACT,
        )
        .unwrap();
        Deployer { testbed, work }
    }

    pub(crate) fn run(
        &self,
        action: &str,
        request: &Value,
        secrets: &BTreeMap<String, String>,
    ) -> Run {
        self.run_args(&[action], request, secrets)
    }

    /// Starts a run in the background; the caller waits for it or kills it.
    pub(crate) fn spawn(
        &self,
        action: &str,
        request: &Value,
        secrets: &BTreeMap<String, String>,
    ) -> std::process::Child {
        self.spawn_with(action, request, secrets, &BTreeMap::new())
    }

    /// `spawn` with more environment (the fault-injection knobs).
    pub(crate) fn spawn_with(
        &self,
        action: &str,
        request: &Value,
        secrets: &BTreeMap<String, String>,
        extra: &BTreeMap<String, String>,
    ) -> std::process::Child {
        let program = std::path::Path::new(env!("CARGO_BIN_EXE_hostenv"));
        self.spawn_program(program, &[action], request, secrets, extra)
    }

    /// `spawn_with` for another build of hostenv (the release's static binary).
    pub(crate) fn spawn_program(
        &self,
        program: &std::path::Path,
        args: &[&str],
        request: &Value,
        secrets: &BTreeMap<String, String>,
        extra: &BTreeMap<String, String>,
    ) -> std::process::Child {
        use std::io::Write;
        let mut child = Command::new(program)
            .args(args)
            .current_dir(self.work.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(secrets)
            .envs(extra)
            .env("TESTBED_SSH_KEY", &self.testbed.client_key)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start hostenv");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(request.to_string().as_bytes())
            .unwrap();
        child
    }

    pub(crate) fn run_args(
        &self,
        args: &[&str],
        request: &Value,
        secrets: &BTreeMap<String, String>,
    ) -> Run {
        let mut env = secrets.clone();
        env.insert(
            "TESTBED_SSH_KEY".into(),
            self.testbed.client_key.to_str().unwrap().into(),
        );
        let run = run_hostenv(
            args,
            self.work.path(),
            &env,
            Some(request.to_string().as_bytes()),
        );
        let canaries: Vec<String> = secrets.values().cloned().collect();
        assert_no_leak("stdout", &run.stdout, &canaries);
        assert_no_leak("stderr", &run.stderr, &canaries);
        run
    }
}

pub(crate) fn fingerprint(value: &str) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(value.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)[..16].to_string()
}

pub(crate) fn health(host: &TestHost, port: u16, path: &str) -> Value {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(3)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent
        .get(&format!("http://{}:{port}{path}", host.addr))
        .call()
        .expect("health endpoint answers");
    serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap()
}

pub(crate) fn statuses(result: &Value) -> Vec<String> {
    result["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap().to_string())
        .collect()
}

/// The file on a host: `owner:group mode` and its bytes.
pub(crate) fn file_on(testbed: &Testbed, host: &TestHost, path: &str) -> (String, String) {
    let meta = testbed.sh_ok(host, &format!("stat -c '%U:%G %a' {path}"));
    let bytes = testbed.sh_ok(host, &format!("cat {path}"));
    (meta.trim().to_string(), bytes)
}

/// The file a deploy of `secrets` writes, spelled as every systemd from v219
/// reads it: the part before a backslash in double quotes (only `"`
/// escaped), the rest unquoted with `\`, blanks, quotes, `#` and `;` escaped.
pub(crate) fn expected_voxbridge_file(secrets: &BTreeMap<String, String>) -> String {
    let spelled = |v: &str| {
        let (quoted, rest) = v.split_at(v.find('\\').unwrap_or(v.len()));
        let mut out = format!("\"{}\"", quoted.replace('"', "\\\""));
        for c in rest.chars() {
            if "\\ \t\"'#;".contains(c) {
                out.push('\\');
            }
            out.push(c);
        }
        out
    };
    format!(
        "# Managed by hostenv: edits on this host are overwritten by the next deploy.\n\
         JWT_SECRET={}\nMONGODB_URI={}\nMONGODB_DB=\"voxbridge\"\nREDIS_URL={}\nLOG_LEVEL=\"info\"\n",
        spelled(&secrets["JWT_SECRET"]),
        spelled(&secrets["MONGODB_URI"]),
        spelled(&secrets["REDIS_URL"]),
    )
}

/// The deploy scenarios, in the order they run on one testbed: each leaves
/// the hosts as the next expects (`run_scenarios` settles units between them).
const SCENARIOS: &[Scenario] = &[
    scenario!(first_deploy_installs_and_restarts),
    scenario!(same_request_changes_nothing),
    scenario!(the_hosts_systemd_version_is_known_before_anything_is_written),
    scenario!(failing_health_check_rolls_back),
    scenario!(shared_key_change_is_refused),
    scenario!(a_switched_file_without_restart_converges),
    scenario!(an_old_systemctl_still_tells_when_a_unit_started),
    scenario!(the_reader_reads_as_this_hosts_systemd),
    scenario!(a_missing_variable_fails_the_restart_and_rolls_back),
    scenario!(one_host_down_fails_alone),
    scenario!(wrong_key_and_unknown_or_changed_host_keys_are_refused),
    scenario!(the_deploy_user_works_through_sudo),
    scenario!(a_host_program_other_than_the_pinned_one_is_never_installed),
    scenario!(voxcore_instances_restart_on_two_hosts),
    scenario!(secrets_stay_in_the_target_files),
    scenario!(host_text_is_plain_in_every_output),
    Scenario {
        name: "a_rejected_request_opens_no_connection",
        run: |deployer, _| a_rejected_request_opens_no_connection(deployer),
    },
    scenario!(without_rollback_a_failed_host_is_left_unhealthy),
    scenario!(a_host_without_a_previous_file_gets_the_new_one_removed),
    scenario!(a_start_limit_hit_is_named_and_the_rollback_still_restarts),
    scenario!(the_key_can_come_as_base64_content),
    scenario!(plan_reports_what_a_deploy_then_changes_and_writes_nothing),
    scenario!(a_deploy_refuses_when_the_reviewed_plan_no_longer_holds),
    scenario!(a_service_added_to_the_catalog_deploys_with_the_same_binary),
    scenario!(a_failing_canary_stops_the_rollout),
    scenario!(backups_lists_what_each_backup_would_change),
    scenario!(exceeding_max_failed_stops_further_batches),
    scenario!(slow_batches_keep_the_waiting_hosts_locks),
    scenario!(the_audit_log_records_each_attempt_without_values),
    scenario!(two_runs_on_the_same_hosts_never_interleave),
    scenario!(overlapping_runs_started_together_take_turns),
    scenario!(a_killed_run_leaves_no_lock_behind),
    scenario!(a_silently_dropped_run_loses_its_lock),
    scenario!(instances_restart_one_at_a_time_each_checked_before_the_next),
    scenario!(a_host_behind_a_bastion_with_health_through_ssh),
    scenario!(drift_finds_hosts_changed_by_hand),
    scenario!(rollback_puts_back_a_backup_without_secrets_bound),
    scenario!(a_deploy_purges_backups_holding_a_leaked_value),
    scenario!(steps_on_the_testbed),
    scenario!(a_jenkins_admins_first_day),
    scenario!(shell_in_accepted_fields_never_runs),
];

#[test]
fn deploy_on_the_testbed() {
    let testbed = Testbed::start(3);
    let deployer = Deployer::new(&testbed, "deploy");
    let hosts: Vec<&TestHost> = testbed.hosts.iter().collect();
    let all: Vec<&Scenario> = SCENARIOS
        .iter()
        .chain(crate::faults::SCENARIOS)
        .chain(crate::rotation::SCENARIOS)
        .collect();
    run_scenarios(&deployer, &hosts, &all);
}

/// One scenario of the shared testbed: a name to run it by and to report it
/// under, and the scenario itself.
pub(crate) struct Scenario {
    pub name: &'static str,
    pub run: fn(&Deployer, &[&TestHost]),
}

/// A scenario that takes the deployer and every host, named after its function.
macro_rules! scenario {
    ($run:ident) => {
        Scenario {
            name: stringify!($run),
            run: $run,
        }
    };
}

pub(crate) use scenario;

/// Runs `scenarios` in order, settling the units after each. A failing
/// scenario is reported by name and the rest still run; the test fails at the
/// end naming every one that failed. `HOSTENV_SCENARIO=TEXT` runs only the
/// scenarios whose name contains TEXT, after the first (which every other
/// starts from: the first deploy to every host).
pub(crate) fn run_scenarios(deployer: &Deployer, hosts: &[&TestHost], scenarios: &[&Scenario]) {
    let only = std::env::var("HOSTENV_SCENARIO").ok();
    let chosen: Vec<&Scenario> = scenarios
        .iter()
        .copied()
        .filter(|s| only.as_deref().is_none_or(|text| s.name.contains(text)))
        .collect();
    assert!(!chosen.is_empty(), "no scenario's name contains {only:?}");
    let first = scenarios[0];
    let mut plan = chosen.clone();
    if only.is_some() && chosen[0].name != first.name {
        plan.insert(0, first);
    }
    let mut failed = Vec::new();
    for scenario in &plan {
        eprintln!("scenario: {}", scenario.name);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            (scenario.run)(deployer, hosts)
        }));
        settle(deployer.testbed, hosts);
        if let Err(panic) = outcome {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            let first_line = message.lines().next().unwrap_or_default();
            failed.push(format!("{}: {first_line}", scenario.name));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} scenarios failed (each one's output is above):\n{}",
        failed.len(),
        plan.len(),
        failed.join("\n")
    );
}

/// iptables rules that keep root (hostenv) away from a host's SSH and health
/// ports; the bastion's and the host's own sshd (running as the login user)
/// still get through. Removed on drop.
pub(crate) struct Firewall(Vec<Vec<String>>);

impl Firewall {
    fn close_to_root(addr: &str, ports: &[u16]) -> Firewall {
        Firewall::insert(
            ports
                .iter()
                .map(|port| rule(addr, *port, "REJECT"))
                .collect(),
        )
    }

    /// Silently drops what root sends to `addr:port`: a connection cut
    /// without a word (no reset, no ICMP), noticed only by timeouts.
    pub(crate) fn drop_from_root(addr: &str, port: u16) -> Firewall {
        Firewall::insert(vec![rule(addr, port, "DROP")])
    }

    fn insert(rules: Vec<Vec<String>>) -> Firewall {
        for rule in &rules {
            assert!(Command::new("iptables")
                .arg("-I")
                .arg("OUTPUT")
                .args(rule)
                .status()
                .unwrap()
                .success());
        }
        Firewall(rules)
    }
}

/// An OUTPUT rule for root's packets to `addr:port`.
fn rule(addr: &str, port: u16, target: &str) -> Vec<String> {
    let port = port.to_string();
    [
        "-p",
        "tcp",
        "-d",
        addr,
        "--dport",
        &port,
        "-m",
        "owner",
        "--uid-owner",
        "0",
        "-j",
        target,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

impl Drop for Firewall {
    fn drop(&mut self) {
        for rule in &self.0 {
            let _ = Command::new("iptables")
                .arg("-D")
                .arg("OUTPUT")
                .args(rule)
                .status();
        }
    }
}

/// `execve` traced (arguments and environment) from every host's sshd: every
/// command a run executes there.
pub(crate) struct ExecTrace(Vec<(std::process::Child, std::path::PathBuf)>);

impl ExecTrace {
    pub(crate) fn start(testbed: &Testbed, hosts: &[&TestHost], tag: &str) -> ExecTrace {
        let tracers = hosts
            .iter()
            .map(|host| {
                let sshd = testbed.sshd_pid(host);
                let out = testbed
                    .dir
                    .join(format!("execve-{tag}-{}.trace", host.hostname));
                let child = Command::new("strace")
                    .args([
                        "-f",
                        "-qq",
                        "-v",
                        "-s",
                        "1000000",
                        "-e",
                        "trace=execve",
                        "-o",
                    ])
                    .arg(&out)
                    .args(["-p", &sshd.to_string()])
                    .spawn()
                    .expect("strace");
                (child, out)
            })
            .collect();
        // strace needs a moment to attach.
        std::thread::sleep(std::time::Duration::from_millis(500));
        ExecTrace(tracers)
    }

    /// Stops every tracer; each must have seen `step` run (so it traced the
    /// run at all) and no form of any canary.
    pub(crate) fn assert_clean(self, step: &str, canaries: &[String]) {
        for (mut tracer, out) in self.0 {
            let _ = Command::new("kill")
                .args(["-INT", &tracer.id().to_string()])
                .status();
            let _ = tracer.wait();
            let trace = std::fs::read_to_string(&out).unwrap_or_default();
            assert!(
                trace.contains(step),
                "the trace saw no `{step}`: {}",
                out.display()
            );
            assert_no_leak(
                &format!("commands executed on the host ({})", out.display()),
                &trace,
                canaries,
            );
        }
    }
}

/// What `hostenv sudoers` prints for `request`.
pub(crate) fn sudoers_rules(deployer: &Deployer, request: &Value) -> String {
    let rules = run_hostenv(
        &["sudoers"],
        deployer.work.path(),
        &BTreeMap::new(),
        Some(request.to_string().as_bytes()),
    );
    assert_eq!(rules.code, 0, "{}", rules.stdout);
    rules.stdout
}

/// Between scenarios: clear failed states and systemd's start-rate counters,
/// which many quick restarts in a row would otherwise exhaust (DESIGN.md §6).
pub(crate) fn settle(testbed: &Testbed, hosts: &[&TestHost]) {
    for host in hosts {
        testbed.sh_ok(host, "systemctl reset-failed");
    }
}
