//! `hostenv deploy` against the testbed's real hosts: real sshd, real systemd,
//! real files, real units and real health endpoints (DESIGN.md §6).
//!
//! The testbed comes up once for this test and the scenarios run in order on
//! it, each leaving the hosts as the next one expects.

use std::collections::BTreeMap;
use std::process::Command;

use pretty_assertions::assert_eq;
use serde_json::{json, Value};

use crate::common::{assert_no_leak, run_hostenv, Run, TempDir};
use crate::testbed::{TestHost, Testbed};

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
        self.spawn_program(program, action, request, secrets, extra)
    }

    /// `spawn_with` for another build of hostenv (the release's static binary).
    pub(crate) fn spawn_program(
        &self,
        program: &std::path::Path,
        action: &str,
        request: &Value,
        secrets: &BTreeMap<String, String>,
        extra: &BTreeMap<String, String>,
    ) -> std::process::Child {
        use std::io::Write;
        let mut child = Command::new(program)
            .arg(action)
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

#[test]
fn deploy_on_the_testbed() {
    let testbed = Testbed::start(3);
    let deployer = Deployer::new(&testbed, "deploy");
    let hosts: Vec<&TestHost> = testbed.hosts.iter().collect();

    first_deploy_installs_and_restarts(&deployer, &hosts);
    settle(&testbed, &hosts);
    same_request_changes_nothing(&deployer, &hosts);
    settle(&testbed, &hosts);
    the_hosts_systemd_version_is_known_before_anything_is_written(&deployer, &hosts);
    settle(&testbed, &hosts);
    failing_health_check_rolls_back(&deployer, &hosts);
    settle(&testbed, &hosts);
    shared_key_change_is_refused(&deployer, &hosts);
    settle(&testbed, &hosts);
    a_switched_file_without_restart_converges(&deployer, &hosts);
    settle(&testbed, &hosts);
    a_missing_variable_fails_the_restart_and_rolls_back(&deployer, &hosts);
    settle(&testbed, &hosts);
    one_host_down_fails_alone(&deployer, &hosts);
    settle(&testbed, &hosts);
    wrong_key_and_unknown_or_changed_host_keys_are_refused(&deployer, &hosts);
    settle(&testbed, &hosts);
    the_deploy_user_works_through_sudo(&deployer, &hosts);
    settle(&testbed, &hosts);
    voxcore_instances_restart_on_two_hosts(&deployer, &hosts);
    settle(&testbed, &hosts);
    secrets_stay_in_the_target_files(&deployer, &hosts);
    settle(&testbed, &hosts);
    a_rejected_request_opens_no_connection(&deployer);
    settle(&testbed, &hosts);
    without_rollback_a_failed_host_is_left_unhealthy(&deployer, &hosts);
    settle(&testbed, &hosts);
    a_host_without_a_previous_file_gets_the_new_one_removed(&deployer, &hosts);
    settle(&testbed, &hosts);
    a_start_limit_hit_is_named_and_the_rollback_still_restarts(&deployer, &hosts);
    settle(&testbed, &hosts);
    the_key_can_come_as_base64_content(&deployer, &hosts);
    settle(&testbed, &hosts);
    plan_reports_what_a_deploy_then_changes_and_writes_nothing(&deployer, &hosts);
    settle(&testbed, &hosts);
    a_deploy_refuses_when_the_reviewed_plan_no_longer_holds(&deployer, &hosts);
    settle(&testbed, &hosts);
    a_failing_canary_stops_the_rollout(&deployer, &hosts);
    settle(&testbed, &hosts);
    exceeding_max_failed_stops_further_batches(&deployer, &hosts);
    settle(&testbed, &hosts);
    the_audit_log_records_each_attempt_without_values(&deployer, &hosts);
    settle(&testbed, &hosts);
    two_runs_on_the_same_hosts_never_interleave(&deployer, &hosts);
    settle(&testbed, &hosts);
    overlapping_runs_started_together_take_turns(&deployer, &hosts);
    settle(&testbed, &hosts);
    a_killed_run_leaves_no_lock_behind(&deployer, &hosts);
    settle(&testbed, &hosts);
    a_silently_dropped_run_loses_its_lock(&deployer, &hosts);
    settle(&testbed, &hosts);
    instances_restart_one_at_a_time_each_checked_before_the_next(&deployer, &hosts);
    settle(&testbed, &hosts);
    a_host_behind_a_bastion_with_health_through_ssh(&deployer, &hosts);
    settle(&testbed, &hosts);
    drift_finds_hosts_changed_by_hand(&deployer, &hosts);
    settle(&testbed, &hosts);
    rollback_puts_back_a_backup_without_secrets_bound(&deployer, &hosts);
    settle(&testbed, &hosts);
    a_deploy_purges_backups_holding_a_leaked_value(&deployer, &hosts);
    settle(&testbed, &hosts);
    crate::jenkins::steps_on_the_testbed(&deployer, &hosts);
    settle(&testbed, &hosts);
    shell_in_accepted_fields_never_runs(&deployer, &hosts);
    settle(&testbed, &hosts);
    crate::faults::scenarios(&deployer, &hosts);
    crate::rotation::scenarios(&deployer, &hosts);
}

fn instances_restart_one_at_a_time_each_checked_before_the_next(
    deployer: &Deployer,
    hosts: &[&TestHost],
) {
    let testbed = deployer.testbed;
    let secrets = map(&[
        ("VOXCORE_SECRET", "CANARY-voxcore-ordered"),
        ("OPENAI_API_KEY", "CANARY-openai-ordered"),
    ]);
    let request = json!({
        "apiVersion": "hostenv/v1", "kind": "Deploy", "service": "voxcore",
        "contract": "voxcore.env.example",
        "hosts": [{"host": hosts[2].addr, "instances": ["1", "2"]}],
        "env": {"VOXCORE_SECRET": {"secretEnv": "VOXCORE_SECRET"}, "OPENAI_API_KEY": {"secretEnv": "OPENAI_API_KEY"},
                "LOG_LEVEL": {"value": "info"}},
        "ssh": testbed.ssh_settings("root"),
        "verify": [
            {"url": "http://{host}:9000/health/fleet", "intervalMs": 100, "deadlineMs": 8000, "consecutive": 1},
            {"url": "http://{host}:910{instance}/health/worker", "intervalMs": 100, "deadlineMs": 8000, "consecutive": 1}
        ]
    });
    let run = deployer.run("deploy", &request, &secrets);
    assert_eq!(run.code, 0, "{}", run.stdout);
    let result = run.json();
    let steps: Vec<&str> = result["hosts"][0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .filter(|name| *name == "restart" || *name == "verify")
        .collect();
    assert_eq!(steps, ["restart", "verify", "restart", "verify", "verify"]);
    let urls: Vec<&str> = result["hosts"][0]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["url"].as_str().unwrap())
        .collect();
    let addr = &hosts[2].addr;
    assert_eq!(
        urls,
        [
            format!("http://{addr}:9101/health/worker"),
            format!("http://{addr}:9102/health/worker"),
            format!("http://{addr}:9000/health/fleet")
        ]
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

fn a_host_behind_a_bastion_with_health_through_ssh(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let (target, bastion) = (hosts[0], hosts[2]);
    let mut request = voxbridge_request(
        testbed,
        &[target],
        "deploy",
        json!({"allowSharedChange": true}),
    );
    testbed.grant_sudo(target, &sudoers_rules(deployer, &request));
    let _firewall = Firewall::close_to_root(&target.addr, &[22, 8080]);

    // Without the bastion the host is out of reach.
    let result = deployer.run("deploy", &request, &secrets("bastion")).json();
    assert_eq!(
        result["hosts"][0]["error"]["kind"], "connectFailed",
        "{result:#}"
    );

    request["ssh"]["jump"] = json!({"host": bastion.addr, "user": "deploy"});
    request["verify"] = json!([{"url": "http://{host}:8080/health", "via": "ssh", "intervalMs": 100, "deadlineMs": 8000, "consecutive": 2}]);
    let run = deployer.run("deploy", &request, &secrets("bastion"));
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(statuses(&run.json()), ["deployed"]);
    assert_eq!(
        file_on(testbed, target, "/opt/voxbridge/.env").1,
        expected_voxbridge_file(&secrets("bastion"))
    );

    // The same check without `via: ssh` cannot reach the port.
    request["verify"][0]["via"] = json!("direct");
    request["verify"][0]["deadlineMs"] = json!(600);
    request["rollbackOnFailure"] = json!(false);
    let result = deployer
        .run("deploy", &request, &secrets("bastion-direct"))
        .json();
    assert_eq!(
        result["hosts"][0]["error"]["kind"], "healthCheckFailed",
        "{result:#}"
    );
}

fn drift_finds_hosts_changed_by_hand(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let request = voxbridge_request(testbed, hosts, "root", json!({"allowSharedChange": true}));
    let secrets = secrets("drift");
    assert_eq!(deployer.run("deploy", &request, &secrets).code, 0);
    let run = deployer.run("drift", &request, &secrets);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(statuses(&run.json()), ["inSync", "inSync", "inSync"]);

    // By hand: a value edited on one host, the mode loosened on another.
    testbed.sh_ok(
        hosts[1],
        "sed -i 's/^LOG_LEVEL=.*/LOG_LEVEL=\"debug\"/' /opt/voxbridge/.env",
    );
    testbed.sh_ok(hosts[2], "chmod 640 /opt/voxbridge/.env");
    let before = host_files(testbed, hosts);
    let run = deployer.run("drift", &request, &secrets);
    assert_eq!(run.code, 4, "{}", run.stdout);
    let result = run.json();
    assert_eq!(statuses(&result), ["inSync", "drifted", "drifted"]);
    assert_eq!(result["hosts"][1]["keys"]["changed"], json!(["LOG_LEVEL"]));
    assert_eq!(result["hosts"][2]["keys"]["changed"], json!([]));
    assert_eq!(host_files(testbed, hosts), before, "drift wrote nothing");
    assert_eq!(deployer.run("deploy", &request, &secrets).code, 0);
    assert_eq!(
        statuses(&deployer.run("drift", &request, &secrets).json()),
        ["inSync", "inSync", "inSync"]
    );
}

fn rollback_puts_back_a_backup_without_secrets_bound(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let host = hosts[0];
    let request = voxbridge_request(testbed, &[host], "root", json!({"allowSharedChange": true}));
    assert_eq!(deployer.run("deploy", &request, &secrets("rb-one")).code, 0);
    assert_eq!(deployer.run("deploy", &request, &secrets("rb-two")).code, 0);

    // No secret is bound: a rollback only moves files the host already has.
    let run = deployer.run("rollback", &request, &BTreeMap::new());
    assert_eq!(run.code, 0, "{}", run.stdout);
    let result = run.json();
    assert_eq!(statuses(&result), ["restored"]);
    assert_eq!(
        file_on(testbed, host, "/opt/voxbridge/.env"),
        (
            "voxbridge:voxbridge 600".into(),
            expected_voxbridge_file(&secrets("rb-one"))
        )
    );
    assert_eq!(
        health(host, 8080, "/health")["fingerprints"]["JWT_SECRET"],
        fingerprint(&secrets("rb-one")["JWT_SECRET"])
    );
    let log = testbed.sh_ok(host, "tail -n 1 /var/lib/hostenv/voxbridge/audit.log");
    let last: Value = serde_json::from_str(log.trim()).unwrap();
    assert_eq!(
        (last["action"].as_str(), last["result"].as_str()),
        (Some("rollback"), Some("restored"))
    );

    // The rollback kept what it replaced as the newest backup, so rolling back
    // again undoes it; `--to 3` reaches back past both.
    let run = deployer.run_args(&["rollback", "--to", "1"], &request, &BTreeMap::new());
    assert_eq!(statuses(&run.json()), ["restored"], "{}", run.stdout);
    assert_eq!(
        file_on(testbed, host, "/opt/voxbridge/.env").1,
        expected_voxbridge_file(&secrets("rb-two"))
    );
    let backups = testbed.sh_ok(host, "cat /var/lib/hostenv/voxbridge/env.3");
    let run = deployer.run_args(&["rollback", "--to", "3"], &request, &BTreeMap::new());
    assert_eq!(statuses(&run.json()), ["restored"], "{}", run.stdout);
    assert_eq!(file_on(testbed, host, "/opt/voxbridge/.env").1, backups);

    // No such backup: a clear error, nothing touched.
    let before = host_files(testbed, &[host]);
    let result = deployer
        .run_args(&["rollback", "--to", "99"], &request, &BTreeMap::new())
        .json();
    assert_eq!(statuses(&result), ["failed"]);
    assert_eq!(result["hosts"][0]["error"]["kind"], "noBackup");
    assert_eq!(host_files(testbed, &[host]), before);
}

/// `purgeBackupsOf` in a Deploy: after the new JWT_SECRET is verified, no
/// backup keeps an older one; backups that agree with the new value stay.
fn a_deploy_purges_backups_holding_a_leaked_value(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let host = hosts[0];
    let request = voxbridge_request(testbed, &[host], "root", json!({"allowSharedChange": true}));
    let mut only_log_level = request.clone();
    only_log_level["env"]["LOG_LEVEL"] = json!({"value": "debug"});
    assert_eq!(
        deployer.run("deploy", &request, &secrets("purge-new")).code,
        0
    );
    // A backup holding the new JWT_SECRET already: it stays.
    assert_eq!(
        deployer
            .run("deploy", &only_log_level, &secrets("purge-new"))
            .code,
        0
    );
    let count = || -> u64 {
        testbed
            .sh_ok(host, "ls /var/lib/hostenv/voxbridge | grep -c '^env\\.'")
            .trim()
            .parse()
            .unwrap()
    };
    let before = count();
    let mut purging = request.clone();
    purging["purgeBackupsOf"] = json!(["JWT_SECRET"]);
    let run = deployer.run("deploy", &purging, &secrets("purge-new"));
    assert_eq!(run.code, 0, "{}", run.stdout);
    let result = run.json();
    assert_eq!(statuses(&result), ["deployed"]);
    // The switch made one more backup; all but the two with the new value went.
    assert_eq!(
        result["hosts"][0]["backupsPurged"],
        json!((before + 1).min(5) - 2)
    );
    let left = testbed.sh_ok(host, "ls /var/lib/hostenv/voxbridge | grep '^env\\.'");
    assert_eq!(
        left.lines().collect::<Vec<_>>(),
        ["env.1", "env.2"],
        "renumbered from 1"
    );
    let backups = testbed.sh_ok(host, "cat /var/lib/hostenv/voxbridge/env.*");
    assert_eq!(backups.matches("CANARY-jwt-purge-new").count(), 2);
    assert_eq!(
        backups.matches("CANARY-jwt-").count(),
        2,
        "an old JWT_SECRET is still in a backup"
    );
}

/// Fields that may hold any text (the audit trail's `by` and `buildUrl`, a
/// literal value, a secret) carry shell built to break out: quotes, `;`,
/// `$()`, backticks, newlines, a leading `-`. They reach the hosts only on
/// stdin, so nothing runs: no command executed on a host mentions the marker,
/// no marker file appears, and the values arrive intact. (Names, users, units,
/// paths and instances built the same way are refused: tests/cases.)
fn shell_in_accepted_fields_never_runs(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let payload = |tag: &str| {
        format!(
            "-x';touch /tmp/injected-{tag};'$(touch /tmp/injected-{tag})`touch /tmp/injected-{tag}`\"\n; touch /tmp/injected-{tag} #"
        )
    };
    let mut request = voxbridge_request(
        testbed,
        &hosts[..1],
        "deploy",
        json!({
            "allowSharedChange": true,
            "audit": {"by": payload("by"), "buildUrl": format!("https://ci.example/{}", payload("url"))}
        }),
    );
    request["env"]["LOG_LEVEL"] = json!({"value": payload("value")});
    testbed.grant_sudo(hosts[0], &sudoers_rules(deployer, &request));
    let mut values = secrets("injection");
    values.insert("JWT_SECRET".into(), payload("secret"));
    let trace = ExecTrace::start(testbed, &hosts[..1], "injection");
    let run = deployer.run("deploy", &request, &values);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(statuses(&run.json()), ["deployed"]);
    trace.assert_clean("hostenv-host\", \"lock", &["injected-".to_string()]);
    let found = testbed.sh(hosts[0], "ls /tmp /opt /var/lib/hostenv / | grep injected");
    assert_eq!(
        String::from_utf8_lossy(&found.stdout),
        "",
        "an injected command ran"
    );
    let file = testbed.sh_ok(hosts[0], "cat /opt/voxbridge/.env");
    let read = hostenv::render::systemd::parse(&file);
    let value_of = |key: &str| {
        read.assignments
            .iter()
            .find(|a| a.key == key)
            .map(|a| a.value.clone())
    };
    assert_eq!(value_of("LOG_LEVEL"), Some(payload("value")));
    assert_eq!(value_of("JWT_SECRET"), Some(payload("secret")));
    let log = testbed.sh_ok(hosts[0], "tail -n 1 /var/lib/hostenv/voxbridge/audit.log");
    let line: Value = serde_json::from_str(log.trim()).unwrap();
    assert_eq!(line["by"], json!(payload("by")));
}

/// A deploy that spends a few seconds verifying, holding its locks meanwhile.
fn slow_request(testbed: &Testbed, hosts: &[&TestHost], wait_ms: u64) -> Value {
    voxbridge_request(
        testbed,
        hosts,
        "root",
        json!({
            "allowSharedChange": true,
            "rollout": {"lockWaitMs": wait_ms},
            "audit": {"buildUrl": "https://ci.example/job/slow/7/", "by": "first-run"},
            "verify": [{"url": "http://{host}:8080/health", "intervalMs": 200, "deadlineMs": 20000, "consecutive": 30}]
        }),
    )
}

fn lock_wait_ms(result: &Value, host: usize) -> u64 {
    result["hosts"][host]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "lock")
        .map(|s| s["ms"].as_u64().unwrap())
        .expect("a lock step")
}

/// Two runs over overlapping hosts (0-1 and 1-2) started at the same moment,
/// several times: every lock is tried at once, and on contention a run lets go
/// and waits in order, so neither deadlocks, both deploy, and the shared host
/// ends with one whole file of one of them.
fn overlapping_runs_started_together_take_turns(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let request = |hosts: &[&TestHost]| {
        voxbridge_request(
            testbed,
            hosts,
            "root",
            json!({"allowSharedChange": true, "rollout": {"lockWaitMs": 60000}}),
        )
    };
    for round in 0..5 {
        settle(testbed, hosts);
        let (a, b) = (secrets(&format!("a{round}")), secrets(&format!("b{round}")));
        let first = deployer.spawn("deploy", &request(&hosts[..2]), &a);
        let second = deployer.spawn("deploy", &request(&hosts[1..]), &b);
        for (name, run) in [("a", first), ("b", second)] {
            let output = run.wait_with_output().unwrap();
            assert!(
                output.status.success(),
                "round {round}, run {name}: {}",
                String::from_utf8_lossy(&output.stdout)
            );
        }
        assert_eq!(
            file_on(testbed, hosts[0], "/opt/voxbridge/.env").1,
            expected_voxbridge_file(&a)
        );
        assert_eq!(
            file_on(testbed, hosts[2], "/opt/voxbridge/.env").1,
            expected_voxbridge_file(&b)
        );
        let shared = file_on(testbed, hosts[1], "/opt/voxbridge/.env").1;
        assert!(
            shared == expected_voxbridge_file(&a) || shared == expected_voxbridge_file(&b),
            "round {round}: the shared host holds neither whole file"
        );
    }
}

fn two_runs_on_the_same_hosts_never_interleave(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    // A short wait: the second run gives up, naming the holder.
    let first = deployer.spawn(
        "deploy",
        &slow_request(testbed, hosts, 60_000),
        &secrets("first"),
    );
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let mut second_request =
        voxbridge_request(testbed, hosts, "root", json!({"allowSharedChange": true}));
    second_request["rollout"] = json!({"lockWaitMs": 1000});
    let second = deployer.run("deploy", &second_request, &secrets("second"));
    let first = first.wait_with_output().unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stdout)
    );
    let second = second.json();
    assert_eq!(
        statuses(&second),
        ["failed", "failed", "failed"],
        "{second:#}"
    );
    assert_eq!(second["hosts"][0]["error"]["kind"], "locked");
    let message = second["hosts"][0]["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("https://ci.example/job/slow/7/") && message.contains("first-run"),
        "{message}"
    );
    for host in hosts {
        assert_eq!(
            file_on(testbed, host, "/opt/voxbridge/.env").1,
            expected_voxbridge_file(&secrets("first"))
        );
    }

    // A long wait: the second run waits its turn and then deploys.
    let first = deployer.spawn(
        "deploy",
        &slow_request(testbed, hosts, 60_000),
        &secrets("third"),
    );
    std::thread::sleep(std::time::Duration::from_millis(1500));
    second_request["rollout"] = json!({"lockWaitMs": 60000});
    let second = deployer
        .run("deploy", &second_request, &secrets("fourth"))
        .json();
    assert!(first.wait_with_output().unwrap().status.success());
    assert_eq!(
        statuses(&second),
        ["deployed", "deployed", "deployed"],
        "{second:#}"
    );
    assert!(
        lock_wait_ms(&second, 0) >= 1000,
        "the second run did not wait: {second:#}"
    );
    for host in hosts {
        assert_eq!(
            file_on(testbed, host, "/opt/voxbridge/.env").1,
            expected_voxbridge_file(&secrets("fourth"))
        );
        let log = testbed.sh_ok(host, "tail -n 2 /var/lib/hostenv/voxbridge/audit.log");
        let last_two: Vec<Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            last_two[0]["by"], "first-run",
            "the first run finished before the second began"
        );
        assert_eq!(last_two[1]["by"], Value::Null);
    }
}

fn a_killed_run_leaves_no_lock_behind(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let mut killed = deployer.spawn(
        "deploy",
        &slow_request(testbed, hosts, 60_000),
        &secrets("killed"),
    );
    std::thread::sleep(std::time::Duration::from_millis(2000));
    killed.kill().unwrap();
    killed.wait().unwrap();
    let request = voxbridge_request(
        testbed,
        hosts,
        "root",
        json!({"allowSharedChange": true, "rollout": {"lockWaitMs": 60000}}),
    );
    let started = std::time::Instant::now();
    let result = deployer
        .run("deploy", &request, &secrets("after-kill"))
        .json();
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    assert_eq!(
        statuses(&result),
        ["deployed", "deployed", "deployed"],
        "{result:#}"
    );
    assert!(
        lock_wait_ms(&result, 0) < 5000,
        "the lock outlived the killed run: {result:#}"
    );
}

fn a_silently_dropped_run_loses_its_lock(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let host = hosts[0];
    let dropped = deployer.spawn(
        "deploy",
        &slow_request(testbed, &[host], 60_000),
        &secrets("dropped"),
    );
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // Every packet of that run's SSH connection now vanishes, without a reset.
    let sockets = Command::new("ss")
        .args([
            "-tnpH",
            "state",
            "established",
            "dst",
            &format!("{}:22", host.addr),
        ])
        .output()
        .unwrap();
    let sockets = String::from_utf8_lossy(&sockets.stdout).into_owned();
    let port = sockets
        .lines()
        .find(|l| l.contains(&format!("pid={},", dropped.id())))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|local| local.rsplit_once(':'))
        .map(|(_, port)| port.to_string())
        .unwrap_or_else(|| panic!("the first run's connection: {sockets}"));
    let rules = [
        vec![
            "-p",
            "tcp",
            "--sport",
            port.as_str(),
            "--dport",
            "22",
            "-j",
            "DROP",
        ],
        vec![
            "-p",
            "tcp",
            "--sport",
            "22",
            "--dport",
            port.as_str(),
            "-j",
            "DROP",
        ],
    ];
    for rule in &rules {
        assert!(Command::new("iptables")
            .arg("-I")
            .arg("INPUT")
            .args(rule)
            .status()
            .unwrap()
            .success());
    }
    let request = voxbridge_request(
        testbed,
        &[host],
        "root",
        json!({"allowSharedChange": true, "rollout": {"lockWaitMs": 60000}}),
    );
    let started = std::time::Instant::now();
    let result = deployer
        .run("deploy", &request, &secrets("after-drop"))
        .json();
    let waited = started.elapsed();
    for rule in &rules {
        let _ = Command::new("iptables")
            .arg("-D")
            .arg("INPUT")
            .args(rule)
            .status();
    }
    let _ = dropped.wait_with_output();
    assert_eq!(statuses(&result), ["deployed"], "{result:#}");
    assert!(
        waited < std::time::Duration::from_secs(60),
        "took {waited:?}"
    );
    assert!(
        lock_wait_ms(&result, 0) >= 10_000,
        "the lock was not held across the drop: {result:#}"
    );
}

fn host_files(testbed: &Testbed, hosts: &[&TestHost]) -> Vec<String> {
    hosts
        .iter()
        .map(|h| {
            testbed.sh_ok(
                h,
                "stat -c '%U:%G %a %Y' /opt/voxbridge/.env; cat /opt/voxbridge/.env; ls -l --time-style=+%s /var/lib/hostenv/voxbridge | grep -v -e audit.log -e '^total'; ls -A /opt/voxbridge",
            )
        })
        .collect()
}

fn plan_reports_what_a_deploy_then_changes_and_writes_nothing(
    deployer: &Deployer,
    hosts: &[&TestHost],
) {
    let testbed = deployer.testbed;
    let settle = voxbridge_request(testbed, hosts, "root", json!({"allowSharedChange": true}));
    let current = secrets("planned-base");
    assert_eq!(deployer.run("deploy", &settle, &current).code, 0);
    let mut next = current.clone();
    next.insert("JWT_SECRET".into(), "CANARY-jwt-planned-next".into());
    let before = host_files(testbed, hosts);

    let run = deployer.run("plan", &settle, &next);
    assert_eq!(run.code, 4, "{}", run.stdout);
    let plan = run.json();
    assert_eq!(statuses(&plan), ["planned", "planned", "planned"]);
    assert_eq!(plan["hosts"][0]["keys"]["changed"], json!(["JWT_SECRET"]));
    assert_eq!(
        plan["hosts"][0]["units"],
        json!([{"unit": "voxbridge.service", "restarted": false, "willRestart": true}])
    );
    assert_eq!(host_files(testbed, hosts), before, "plan wrote nothing");

    let run = deployer.run("deploy", &settle, &next);
    assert_eq!(run.code, 0, "{}", run.stdout);
    let deployed = run.json();
    for index in 0..hosts.len() {
        assert_eq!(
            deployed["hosts"][index]["keys"],
            plan["hosts"][index]["keys"]
        );
    }
    let run = deployer.run("plan", &settle, &next);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(
        statuses(&run.json()),
        ["unchanged", "unchanged", "unchanged"]
    );
}

fn a_deploy_refuses_when_the_reviewed_plan_no_longer_holds(
    deployer: &Deployer,
    hosts: &[&TestHost],
) {
    let testbed = deployer.testbed;
    let request = voxbridge_request(testbed, hosts, "root", json!({"allowSharedChange": true}));
    let mut reviewed = secrets("reviewed");
    reviewed.insert("PLAN_KEY".into(), "CANARY-plan-hmac-key".into());
    let run = deployer.run_args(&["plan", "--plan-key-env", "PLAN_KEY"], &request, &reviewed);
    assert_eq!(run.code, 4, "{}", run.stdout);
    let digest = run.json()["planDigest"].as_str().unwrap().to_string();
    assert!(
        digest.starts_with("hmac-sha256:") && digest.len() == 12 + 64,
        "{digest}"
    );

    // A bound value changed after the review: refused, nothing touched.
    let before = host_files(testbed, hosts);
    let mut changed = reviewed.clone();
    changed.insert(
        "JWT_SECRET".into(),
        "CANARY-jwt-changed-after-review".into(),
    );
    let args = [
        "deploy",
        "--plan-key-env",
        "PLAN_KEY",
        "--expect-plan",
        digest.as_str(),
    ];
    let run = deployer.run_args(&args, &request, &changed);
    assert_eq!(run.code, 1, "{}", run.stdout);
    let result = run.json();
    assert_eq!(statuses(&result), ["failed", "failed", "failed"]);
    assert_eq!(result["hosts"][0]["error"]["kind"], "planMismatch");
    assert_eq!(host_files(testbed, hosts), before);

    // As reviewed: it goes ahead.
    let run = deployer.run_args(&args, &request, &reviewed);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(statuses(&run.json()), ["deployed", "deployed", "deployed"]);
}

fn a_failing_canary_stops_the_rollout(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let before = host_files(testbed, &hosts[1..]);
    let mut request = voxbridge_request(
        testbed,
        hosts,
        "root",
        json!({
            "allowSharedChange": true,
            "rollout": {"canary": 1, "batch": 1},
            "verify": quick_verify(800)
        }),
    );
    request["hosts"][0] = json!({"host": hosts[0].addr, "env": {"HEALTH_MODE": {"value": "fail"}}});
    let junit = deployer.work.path().join("canary.junit.xml");
    let run = deployer.run_args(
        &["deploy", "--junit", junit.to_str().unwrap()],
        &request,
        &secrets("canary"),
    );
    assert_eq!(run.code, 1, "{}", run.stdout);
    let result = run.json();
    assert_eq!(statuses(&result), ["rolledBack", "skipped", "skipped"]);
    assert_eq!(result["hosts"][1]["error"]["kind"], "notAttempted");
    assert!(result["hosts"][1]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("canary"));
    assert_eq!(
        host_files(testbed, &hosts[1..]),
        before,
        "skipped hosts are untouched"
    );
    let canaries: Vec<String> = secrets("canary").values().cloned().collect();
    assert_no_leak(
        "the JUnit file",
        &std::fs::read_to_string(&junit).unwrap(),
        &canaries,
    );
    let parsed = Command::new("python3")
        .arg("-c")
        .arg(
            "import sys, xml.etree.ElementTree as ET\n\
             root = ET.parse(sys.argv[1]).getroot()\n\
             cases = root.findall('./testsuite/testcase')\n\
             print(len(cases), sum(1 for c in cases if c.find('failure') is not None), sum(1 for c in cases if c.find('skipped') is not None), root.find('testsuite').get('name'), all(c.get('name').startswith('deploy ') for c in cases))",
        )
        .arg(&junit)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&parsed.stdout).trim(),
        "3 1 2 voxbridge True",
        "{}",
        String::from_utf8_lossy(&parsed.stderr)
    );
}

fn exceeding_max_failed_stops_further_batches(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let before = host_files(testbed, &hosts[2..]);
    let mut request = voxbridge_request(
        testbed,
        hosts,
        "root",
        json!({
            "allowSharedChange": true,
            "rollout": {"batch": 1, "maxFailed": 0, "parallel": 1},
            "verify": quick_verify(800)
        }),
    );
    request["hosts"][1] = json!({"host": hosts[1].addr, "env": {"HEALTH_MODE": {"value": "fail"}}});
    let run = deployer.run("deploy", &request, &secrets("max-failed"));
    let result = run.json();
    assert_eq!(
        statuses(&result),
        ["deployed", "rolledBack", "skipped"],
        "{result:#}"
    );
    assert!(result["hosts"][2]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("maxFailed"));
    assert_eq!(host_files(testbed, &hosts[2..]), before);
    // With one failure allowed, the last batch goes ahead.
    request["rollout"]["maxFailed"] = json!(1);
    let result = deployer
        .run("deploy", &request, &secrets("max-failed-2"))
        .json();
    assert_eq!(
        statuses(&result),
        ["deployed", "rolledBack", "deployed"],
        "{result:#}"
    );
}

fn the_audit_log_records_each_attempt_without_values(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let mut request = voxbridge_request(
        testbed,
        &hosts[..1],
        "root",
        json!({"allowSharedChange": true}),
    );
    request["audit"] = json!({"buildUrl": "https://ci.example/job/deploy/42/", "by": "jenkins"});
    request["environment"] = json!("production");
    let secrets = secrets("audited");
    assert_eq!(deployer.run("deploy", &request, &secrets).code, 0);
    let meta = testbed.sh_ok(
        hosts[0],
        "stat -c '%U %a' /var/lib/hostenv/voxbridge/audit.log",
    );
    assert_eq!(meta.trim(), "root 600");
    let log = testbed.sh_ok(hosts[0], "cat /var/lib/hostenv/voxbridge/audit.log");
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect();
    assert!(lines.len() >= 10, "one line per attempt: {}", lines.len());
    let last = lines.last().unwrap();
    assert_eq!(last["action"], "deploy");
    assert_eq!(last["result"], "deployed");
    assert_eq!(last["environment"], "production");
    assert_eq!(last["buildUrl"], "https://ci.example/job/deploy/42/");
    assert_eq!(last["by"], "jenkins");
    assert_eq!(last["unitsRestarted"], json!(["voxbridge.service"]));
    assert!(last["keysChanged"]
        .as_array()
        .unwrap()
        .contains(&json!("JWT_SECRET")));
    assert!(lines
        .iter()
        .any(|l| l["result"] == "rolledBack" && l["error"] == "healthCheckFailed"));
    let canaries: Vec<String> = secrets.values().cloned().collect();
    assert_no_leak("the audit log", &log, &canaries);
}

fn without_rollback_a_failed_host_is_left_unhealthy(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let host = hosts[2];
    let mut request = voxbridge_request(
        testbed,
        &[host],
        "root",
        json!({
            "rollbackOnFailure": false, "allowSharedChange": true,
            "verify": quick_verify(800)
        }),
    );
    request["env"]["HEALTH_MODE"] = json!({"value": "fail"});
    let run = deployer.run("deploy", &request, &secrets("unhealthy"));
    assert_eq!(run.code, 1, "{}", run.stdout);
    let result = run.json();
    assert_eq!(statuses(&result), ["unhealthy"]);
    assert_eq!(result["hosts"][0]["changed"], true);
    assert!(file_on(testbed, host, "/opt/voxbridge/.env")
        .1
        .contains("HEALTH_MODE=\"fail\""));
    assert_eq!(health(host, 8080, "/health")["status"], 503);
    // The next good deploy repairs it.
    let request = voxbridge_request(testbed, &[host], "root", json!({"allowSharedChange": true}));
    let run = deployer.run("deploy", &request, &secrets("repaired"));
    assert_eq!(statuses(&run.json()), ["deployed"], "{}", run.stdout);
}

fn a_host_without_a_previous_file_gets_the_new_one_removed(
    deployer: &Deployer,
    hosts: &[&TestHost],
) {
    let testbed = deployer.testbed;
    let host = hosts[2];
    std::fs::write(
        deployer.work.path().join("voxdialler.env.example"),
        "VOXCORE_SECRET=\nLIVEKIT_API_KEY=\nLIVEKIT_API_SECRET=\nMONGODB_URI=\nHEALTH_MODE=ok\n",
    )
    .unwrap();
    let secrets = map(&[
        ("VOXCORE_SECRET", "CANARY-dialler-voxcore-1"),
        ("LIVEKIT_API_KEY", "CANARY-livekit-key-1"),
        ("LIVEKIT_API_SECRET", "CANARY-livekit-secret-1"),
        ("MONGODB_URI", "CANARY-dialler-mongo-1"),
    ]);
    let request = json!({
        "apiVersion": "hostenv/v1", "kind": "Deploy", "service": "voxdialler",
        "contract": "voxdialler.env.example", "hosts": [host.addr],
        "env": {
            "VOXCORE_SECRET": {"secretEnv": "VOXCORE_SECRET"}, "LIVEKIT_API_KEY": {"secretEnv": "LIVEKIT_API_KEY"},
            "LIVEKIT_API_SECRET": {"secretEnv": "LIVEKIT_API_SECRET"}, "MONGODB_URI": {"secretEnv": "MONGODB_URI"},
            "HEALTH_MODE": {"value": "fail"}
        },
        "ssh": testbed.ssh_settings("root"),
        "verify": [{"url": "http://{host}:8090/health", "intervalMs": 100, "deadlineMs": 800, "consecutive": 1}]
    });
    let run = deployer.run("deploy", &request, &secrets);
    assert_eq!(run.code, 1, "{}", run.stdout);
    let result = run.json();
    assert_eq!(statuses(&result), ["rolledBack"]);
    assert_eq!(result["hosts"][0]["rollback"], "removedNewFile");
    let gone = testbed.sh(host, "test -e /opt/voxdialler/.env");
    assert!(!gone.status.success(), "the new file was left behind");
    testbed.sh_ok(host, "systemctl stop voxdialler.service");
}

fn a_start_limit_hit_is_named_and_the_rollback_still_restarts(
    deployer: &Deployer,
    hosts: &[&TestHost],
) {
    let testbed = deployer.testbed;
    let host = hosts[0];
    let (_, before) = file_on(testbed, host, "/opt/voxbridge/.env");
    // Five starts within ten seconds use up systemd's default start limit.
    testbed.sh_ok(host, "systemctl reset-failed voxbridge.service; for i in 1 2 3 4 5; do systemctl restart voxbridge.service; done");
    let request = voxbridge_request(testbed, &[host], "root", json!({"allowSharedChange": true}));
    let run = deployer.run("deploy", &request, &secrets("limited"));
    assert_eq!(run.code, 1, "{}", run.stdout);
    let result = run.json();
    assert_eq!(statuses(&result), ["rolledBack"], "{result:#}");
    assert_eq!(result["hosts"][0]["error"]["kind"], "startLimitHit");
    assert_eq!(file_on(testbed, host, "/opt/voxbridge/.env").1, before);
    assert_eq!(health(host, 8080, "/health")["status"], 200);
}

fn the_key_can_come_as_base64_content(deployer: &Deployer, hosts: &[&TestHost]) {
    use base64::Engine;
    let testbed = deployer.testbed;
    let key = std::fs::read(&testbed.client_key).unwrap();
    let mut secrets = secrets("limited");
    secrets.insert(
        "SSH_KEY_B64".into(),
        base64::engine::general_purpose::STANDARD.encode(key),
    );
    let mut request = voxbridge_request(
        testbed,
        &hosts[..1],
        "root",
        json!({"allowSharedChange": true}),
    );
    request["ssh"]
        .as_object_mut()
        .unwrap()
        .remove("identityFileEnv");
    request["ssh"]["identityEnv"] = json!("SSH_KEY_B64");
    let run = deployer.run("deploy", &request, &secrets);
    assert_eq!(statuses(&run.json()), ["deployed"], "{}", run.stdout);
}

/// A listener stands where the host would be; a request rejected before any
/// host (an unset secret, an unset SSH key variable) never knocks.
fn a_rejected_request_opens_no_connection(deployer: &Deployer) {
    let testbed = deployer.testbed;
    let listener =
        std::net::TcpListener::bind(("127.77.0.250", 2222)).expect("bind a stand-in host");
    listener.set_nonblocking(true).unwrap();
    let mut request = voxbridge_request(testbed, &[], "root", json!({}));
    request["hosts"] = json!([{"host": "127.77.0.250", "port": 2222}]);
    let mut unset = secrets("rejected");
    unset.remove("JWT_SECRET");
    let run = deployer.run("deploy", &request, &unset);
    assert_eq!(run.code, 2, "{}", run.stdout);
    assert_eq!(run.json()["error"]["kind"], "keyProblems");
    assert_eq!(run.json()["hosts"], json!([]));
    request["ssh"]["identityFileEnv"] = json!("NO_SUCH_KEY_VARIABLE");
    let run = deployer.run("deploy", &request, &secrets("rejected"));
    assert_eq!(run.code, 2, "{}", run.stdout);
    assert_eq!(run.json()["error"]["field"], "/ssh/identityFileEnv");
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("a rejected request connected to the host: {other:?}"),
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

/// Canary secrets go through check, plan, deploy (success, failed health with
/// rollback, through sudo), rollback, drift, a rotation across voxcore and
/// voxdialler, its drift and its rollback; afterwards they are nowhere but in
/// the target files, their backups and the services' own main processes: not
/// in stdout, stderr or any JUnit file, not in any command line or environment
/// executed on the hosts (execve traced from sshd), not in the journals or the
/// audit logs, not in any other file on the hosts or in the working directory,
/// not in any other process's environment — raw, JSON-escaped, base64,
/// URL-encoded, shell-quoted or escaped as in an env file.
fn secrets_stay_in_the_target_files(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let good = secrets("contained");
    let mut bad = secrets("rolled-back");
    bad.insert("MONGODB_URI".into(), good["MONGODB_URI"].clone());
    let (first, second) = (
        crate::rotation::contained_generation("window-one"),
        crate::rotation::contained_generation("window-two"),
    );
    let canaries: Vec<String> = [&good, &bad, &first, &second]
        .iter()
        .flat_map(|m| m.values().cloned())
        .collect();
    let junit = |name: &str| deployer.work.path().join(format!("{name}.junit.xml"));
    // Every action with its JUnit file; stdout and stderr searched for every canary.
    let run = |action: &str, name: &str, request: &Value, values: &BTreeMap<String, String>| {
        let file = junit(name);
        let run = deployer.run_args(
            &[action, "--junit", file.to_str().unwrap()],
            request,
            values,
        );
        assert_no_leak("stdout", &run.stdout, &canaries);
        assert_no_leak("stderr", &run.stderr, &canaries);
        let xml = std::fs::read_to_string(&file).expect("the JUnit file");
        assert_no_leak(&format!("the JUnit file of {name}"), &xml, &canaries);
        run.json()
    };

    let trace = ExecTrace::start(testbed, hosts, "contained");

    let request = voxbridge_request(testbed, hosts, "root", json!({"allowSharedChange": true}));
    assert_eq!(run("check", "check", &request, &good)["ok"], true);
    assert_eq!(
        statuses(&run("plan", "plan", &request, &good)),
        ["planned", "planned", "planned"]
    );
    let result = run("deploy", "deploy", &request, &good);
    assert_eq!(
        statuses(&result),
        ["deployed", "deployed", "deployed"],
        "{result}"
    );
    let mut failing = voxbridge_request(
        testbed,
        &hosts[..1],
        "root",
        json!({"verify": quick_verify(1000)}),
    );
    failing["env"]["HEALTH_MODE"] = json!({"value": "fail"});
    assert_eq!(
        statuses(&run("deploy", "failing", &failing, &bad)),
        ["rolledBack"]
    );
    let sudo_request = voxbridge_request(
        testbed,
        &hosts[1..2],
        "deploy",
        json!({"allowSharedChange": true}),
    );
    assert_eq!(
        statuses(&run("deploy", "sudo-bad", &sudo_request, &bad)),
        ["deployed"]
    );
    // Back to the good file, the one the sudo deploy replaced.
    assert_eq!(
        statuses(&run(
            "rollback",
            "rollback",
            &sudo_request,
            &BTreeMap::new()
        )),
        ["restored"]
    );
    assert_eq!(
        statuses(&run("drift", "drift", &request, &good)),
        ["inSync", "inSync", "inSync"]
    );

    // A rotation of VOXCORE_SECRET across the fleet and the dialler, and its rollback.
    crate::rotation::write_contracts(deployer.work.path());
    let rotation = crate::rotation::rotation_request(testbed, hosts);
    for (name, values) in [("window-one", &first), ("window-two", &second)] {
        let result = run("deploy", name, &rotation, values);
        assert_eq!(result["ok"], true, "{result}");
    }
    let result = run("drift", "window-drift", &rotation, &second);
    assert_eq!(result["shared"][0]["identical"], true);
    let result = run("rollback", "window-rollback", &rotation, &BTreeMap::new());
    assert_eq!(result["ok"], true, "{result}");

    trace.assert_clean("hostenv-host\", \"lock", &canaries);

    let patterns = testbed.dir.join("canary-patterns");
    // grep reads one pattern per line, so a multi-line form is searched line by line.
    let forms: Vec<String> = canaries
        .iter()
        .flat_map(|c| crate::common::leak_forms(c))
        .flat_map(|form| form.lines().map(str::to_string).collect::<Vec<_>>())
        .collect();
    std::fs::write(&patterns, forms.join("\n") + "\n").unwrap();
    let patterns = patterns.display();
    for host in hosts {
        let journal = testbed.sh_ok(host, "journalctl --no-pager -o verbose");
        assert!(
            journal.contains("hostenv"),
            "the journal saw no deploy on {}",
            host.addr
        );
        assert_no_leak(
            &format!("the journal of {}", host.addr),
            &journal,
            &canaries,
        );
        let files = testbed.sh(
            host,
            &format!(
                "grep -rlF -f {patterns} /opt /run /tmp /var/lib /var/log /etc/systemd/system 2>/dev/null"
            ),
        );
        let files = String::from_utf8_lossy(&files.stdout).into_owned();
        // The search works: it finds the target file itself.
        assert!(files.lines().any(|f| f == "/opt/voxbridge/.env"), "{files}");
        let elsewhere: Vec<&str> = files
            .lines()
            .filter(|f| {
                !["voxbridge", "voxcore", "voxdialler"]
                    .iter()
                    .any(|service| {
                        *f == format!("/opt/{service}/.env")
                            || f.starts_with(&format!("/var/lib/hostenv/{service}/env."))
                    })
            })
            .collect();
        assert!(
            elsewhere.is_empty(),
            "files holding a secret on {}: {elsewhere:?}",
            host.addr
        );
        // The services' own main processes get the values by design; nothing else may.
        let services = testbed.sh_ok(
            host,
            "systemctl show -p MainPID --value voxbridge.service 'voxcore@*.service' voxdialler.service | grep -v '^0$' | tr '\\n' ' '",
        );
        let environments = testbed.sh(
            host,
            &format!(
                "for p in /proc/[0-9]*; do case \" {} \" in *\" ${{p#/proc/}} \"*) continue;; esac; \
                 grep -qaF -f {patterns} $p/environ 2>/dev/null && echo $p $(tr '\\0' ' ' < $p/cmdline); done",
                services.trim()
            ),
        );
        assert_eq!(
            String::from_utf8_lossy(&environments.stdout),
            "",
            "processes holding a secret on {}",
            host.addr
        );
    }
    let local = Command::new("grep")
        .args(["-rlF", "-f", &patterns.to_string()])
        .arg(deployer.work.path())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&local.stdout),
        "",
        "files in the working directory holding a secret"
    );
    // Later scenarios expect the dialler host without a voxdialler file.
    testbed.sh_ok(
        hosts[2],
        "systemctl stop voxdialler.service; rm -rf /opt/voxdialler/.env /var/lib/hostenv/voxdialler",
    );
}

/// A run killed between switch and restart leaves the new file with the old
/// process; the next run sees the unit started before the file and restarts it.
fn a_switched_file_without_restart_converges(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let host = hosts[2];
    let next = secrets("three");
    let pid_before = testbed.sh_ok(
        host,
        "systemctl show -p ExecMainPID --value voxbridge.service",
    );
    // What the killed run had done: the new file in place, nothing restarted.
    testbed.put(
        host,
        "/opt/voxbridge/.env.switched",
        &expected_voxbridge_file(&next),
    );
    testbed.sh_ok(
        host,
        "sleep 1.1; chown voxbridge:voxbridge /opt/voxbridge/.env.switched; chmod 600 /opt/voxbridge/.env.switched; \
         mv -f /opt/voxbridge/.env.switched /opt/voxbridge/.env",
    );
    let request = voxbridge_request(testbed, &[host], "root", json!({"allowSharedChange": true}));
    let run = deployer.run("deploy", &request, &next);
    assert_eq!(run.code, 0, "{}", run.stdout);
    let result = run.json();
    assert_eq!(statuses(&result), ["unchanged"]);
    assert_eq!(
        result["hosts"][0]["units"],
        json!([{"unit": "voxbridge.service", "restarted": true}])
    );
    let pid_after = testbed.sh_ok(
        host,
        "systemctl show -p ExecMainPID --value voxbridge.service",
    );
    assert_ne!(pid_before, pid_after);
    assert_eq!(
        health(host, 8080, "/health")["fingerprints"]["JWT_SECRET"],
        fingerprint(&next["JWT_SECRET"])
    );
    // And now it is settled: nothing more to do.
    let again = deployer.run("deploy", &request, &next).json();
    assert_eq!(again["hosts"][0]["units"][0]["restarted"], false);
}

/// The service needs REDIS_URL; a contract that dropped it yields a file the
/// service refuses at start (Type=notify), so the restart fails and the
/// previous file goes back.
fn a_missing_variable_fails_the_restart_and_rolls_back(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let host = hosts[0];
    std::fs::write(
        deployer.work.path().join("no-redis.env.example"),
        "JWT_SECRET=\nMONGODB_URI=\nMONGODB_DB=\nLOG_LEVEL=\n",
    )
    .unwrap();
    let (_, before) = file_on(testbed, host, "/opt/voxbridge/.env");
    let mut request = voxbridge_request(
        testbed,
        &[host],
        "root",
        json!({"contract": "no-redis.env.example"}),
    );
    request["env"].as_object_mut().unwrap().remove("REDIS_URL");
    request["optional"] = json!([]);
    let run = deployer.run("deploy", &request, &secrets("one"));
    assert_eq!(run.code, 1, "{}", run.stdout);
    let result = run.json();
    assert_eq!(statuses(&result), ["rolledBack"]);
    assert_eq!(
        result["hosts"][0]["error"]["kind"], "restartFailed",
        "{result:#}"
    );
    assert_eq!(result["hosts"][0]["keys"]["removed"], json!(["REDIS_URL"]));
    let (_, after) = file_on(testbed, host, "/opt/voxbridge/.env");
    assert_eq!(before, after);
    assert_eq!(health(host, 8080, "/health")["status"], 200);
    testbed.sh_ok(host, "systemctl is-active voxbridge.service");
}

fn one_host_down_fails_alone(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    testbed.sh_ok(hosts[1], "systemctl stop testbed-sshd.service");
    let next = secrets("four");
    let request = voxbridge_request(testbed, hosts, "root", json!({"allowSharedChange": true}));
    let run = deployer.run("deploy", &request, &next);
    testbed.sh_ok(hosts[1], "systemctl start testbed-sshd.service");
    assert_eq!(run.code, 1, "{}", run.stdout);
    let result = run.json();
    assert_eq!(statuses(&result), ["deployed", "failed", "deployed"]);
    assert_eq!(result["hosts"][1]["error"]["kind"], "connectFailed");
    assert_eq!(result["summary"]["deployed"], 2);
    assert_eq!(result["summary"]["failed"], 1);
    for host in [hosts[0], hosts[2]] {
        assert_eq!(
            file_on(testbed, host, "/opt/voxbridge/.env").1,
            expected_voxbridge_file(&next)
        );
    }
}

fn wrong_key_and_unknown_or_changed_host_keys_are_refused(
    deployer: &Deployer,
    hosts: &[&TestHost],
) {
    let testbed = deployer.testbed;
    let host = hosts[0];
    let (_, before) = file_on(testbed, host, "/opt/voxbridge/.env");
    let next = secrets("five");

    let mut env = next.clone();
    env.insert(
        "TESTBED_SSH_KEY".into(),
        testbed.stranger_key.to_str().unwrap().into(),
    );
    let request = voxbridge_request(testbed, &[host], "root", json!({"allowSharedChange": true}));
    let run = run_hostenv(
        &["deploy"],
        deployer.work.path(),
        &env,
        Some(request.to_string().as_bytes()),
    );
    assert_eq!(
        run.json()["hosts"][0]["error"]["kind"],
        "authFailed",
        "{}",
        run.stdout
    );

    let empty = deployer.work.path().join("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    let mut request =
        voxbridge_request(testbed, &[host], "root", json!({"allowSharedChange": true}));
    request["ssh"]["knownHosts"] = json!(empty.to_str().unwrap());
    let result = deployer.run("deploy", &request, &next).json();
    assert_eq!(result["hosts"][0]["error"]["kind"], "hostKeyUnknown");
    assert!(result["hosts"][0]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("SHA256:"));

    // Another host's key recorded for this address: a changed key.
    let known = std::fs::read_to_string(&testbed.known_hosts).unwrap();
    let other_key = known.lines().nth(1).unwrap().split_once(' ').unwrap().1;
    let changed = deployer.work.path().join("changed_known_hosts");
    std::fs::write(&changed, format!("{} {other_key}\n", host.addr)).unwrap();
    request["ssh"]["knownHosts"] = json!(changed.to_str().unwrap());
    request["ssh"]["hostKeyPolicy"] = json!("acceptNew");
    let result = deployer.run("deploy", &request, &next).json();
    assert_eq!(result["hosts"][0]["error"]["kind"], "hostKeyChanged");
    let message = result["hosts"][0]["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&host.addr) && message.contains("SHA256:"),
        "{message}"
    );

    // acceptNew records a host that has no entry at all, and deploys.
    request["ssh"]["knownHosts"] = json!(empty.to_str().unwrap());
    let run = deployer.run("deploy", &request, &next);
    assert_eq!(statuses(&run.json()), ["deployed"], "{}", run.stdout);
    let recorded = std::fs::read_to_string(&empty).unwrap();
    assert!(
        recorded.starts_with(&format!("{} ssh-ed25519 ", host.addr)),
        "{recorded}"
    );
    assert_ne!(before, file_on(testbed, host, "/opt/voxbridge/.env").1);
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

fn the_deploy_user_works_through_sudo(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let next = secrets("six");
    let request = voxbridge_request(
        testbed,
        &hosts[..2],
        "deploy",
        json!({"allowSharedChange": true}),
    );

    // Before any grant, sudo refuses and the error says which step and what to do.
    let result = deployer.run("deploy", &request, &next).json();
    assert_eq!(
        result["hosts"][0]["error"]["kind"], "sudoRefused",
        "{result:#}"
    );
    assert!(result["hosts"][0]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("hostenv sudoers"));

    let rules = sudoers_rules(deployer, &request);
    assert!(
        rules
            .lines()
            .filter(|l| l.starts_with("deploy ALL=(root) NOPASSWD: /usr/local/sbin/hostenv-host "))
            .count()
            >= 8
    );
    for host in &hosts[..2] {
        testbed.grant_sudo(host, &rules);
    }
    let run = deployer.run("deploy", &request, &next);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(statuses(&run.json()), ["deployed", "deployed"]);
    for host in &hosts[..2] {
        let (meta, bytes) = file_on(testbed, host, "/opt/voxbridge/.env");
        assert_eq!(meta, "voxbridge:voxbridge 600");
        assert_eq!(bytes, expected_voxbridge_file(&next));
    }

    // The rules are narrow: nothing but those exact command lines.
    let anything = testbed.sh(hosts[0], "su -s /bin/sh deploy -c 'sudo -n /bin/sh -c id'");
    assert!(
        !anything.status.success(),
        "deploy may run any shell as root"
    );
    let other_file = testbed.sh(
        hosts[0],
        "su -s /bin/sh deploy -c 'sudo -n /bin/sh -c \"rm -f -- \\\"\\$1\\\"\" hostenv-discard /etc/passwd'",
    );
    assert!(
        !other_file.status.success(),
        "deploy may remove other files as root"
    );
    // A request whose settings differ from the host's configuration is refused
    // before any privileged step, naming the setting and what to run.
    let mut request = request.clone();
    request["target"] = json!({"backups": 3});
    let result = deployer.run("deploy", &request, &secrets("seven")).json();
    let error = &result["hosts"][0]["error"];
    assert_eq!(error["kind"], "hostProgramMismatch", "{result:#}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("`backups 3`") && message.contains("hostenv host-install"),
        "{message}"
    );
    assert_eq!(
        file_on(testbed, hosts[0], "/opt/voxbridge/.env").1,
        expected_voxbridge_file(&next)
    );
}

fn voxcore_instances_restart_on_two_hosts(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    std::fs::write(
        deployer.work.path().join("voxcore.env.example"),
        "VOXCORE_SECRET=\nOPENAI_API_KEY=\nLOG_LEVEL=info\n",
    )
    .unwrap();
    let secrets = map(&[
        ("VOXCORE_SECRET", "CANARY-voxcore-secret-1"),
        ("OPENAI_API_KEY", "CANARY-openai-key-1"),
    ]);
    let request = json!({
        "apiVersion": "hostenv/v1", "kind": "Deploy", "service": "voxcore",
        "contract": "voxcore.env.example",
        "hosts": [{"host": hosts[0].addr, "instances": ["sock1", "sock2"]}, {"host": hosts[1].addr, "instances": ["sock1"]}],
        "env": {"VOXCORE_SECRET": {"secretEnv": "VOXCORE_SECRET"}, "OPENAI_API_KEY": {"secretEnv": "OPENAI_API_KEY"},
                "LOG_LEVEL": {"value": "info"}},
        "ssh": testbed.ssh_settings("root"),
        "verify": [{"url": "http://{host}:9000/health/fleet", "intervalMs": 100, "deadlineMs": 8000, "consecutive": 2}]
    });
    let run = deployer.run("deploy", &request, &secrets);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let result = run.json();
    assert_eq!(statuses(&result), ["deployed", "deployed"]);
    assert_eq!(
        result["hosts"][0]["units"],
        json!([{"unit": "voxcore@sock1.service", "restarted": true}, {"unit": "voxcore@sock2.service", "restarted": true}])
    );
    let active = testbed.sh_ok(
        testbed.host(0),
        "systemctl is-active voxcore@sock1.service voxcore@sock2.service",
    );
    assert_eq!(active, "active\nactive\n");
    // Without `instances`, the running instances are found on the host.
    let mut request = request.clone();
    request["hosts"] = json!([hosts[0].addr]);
    request["restart"] = json!({"force": true});
    let result = deployer.run("deploy", &request, &secrets).json();
    assert_eq!(statuses(&result), ["unchanged"]);
    assert_eq!(
        result["hosts"][0]["units"].as_array().unwrap().len(),
        2,
        "{result}"
    );
    // A host with no instance of the template cannot be restarted.
    request["hosts"] = json!([hosts[2].addr]);
    let result = deployer.run("deploy", &request, &secrets).json();
    assert_eq!(result["hosts"][0]["error"]["kind"], "noInstances");
}

fn shared_key_change_is_refused(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let mut changed = secrets("one");
    changed.insert("MONGODB_URI".into(), "CANARY-mongo-rotated://u:p@db".into());
    let request = voxbridge_request(testbed, &hosts[1..2], "root", json!({}));
    let run = deployer.run("deploy", &request, &changed);
    assert_eq!(run.code, 1, "{}", run.stdout);
    let result = run.json();
    assert_eq!(statuses(&result), ["failed"]);
    assert_eq!(result["hosts"][0]["error"]["kind"], "sharedKeyChange");
    let (_, bytes) = file_on(testbed, hosts[1], "/opt/voxbridge/.env");
    assert_eq!(
        bytes,
        expected_voxbridge_file(&secrets("one")),
        "nothing was written"
    );
    assert_nothing_staged(testbed, hosts[1]);
}

/// A run that did not switch its file in left none of it beside the target
/// (a Deploy's file goes with its lock step, before the run has decided).
fn assert_nothing_staged(testbed: &Testbed, host: &TestHost) {
    let staged = testbed.sh(host, "test -e /opt/voxbridge/.env.hostenv-new");
    assert_eq!(staged.status.code(), Some(1), "a staged file was left");
}

/// Between scenarios: clear failed states and systemd's start-rate counters,
/// which many quick restarts in a row would otherwise exhaust (DESIGN.md §6).
pub(crate) fn settle(testbed: &Testbed, hosts: &[&TestHost]) {
    for host in hosts {
        testbed.sh_ok(host, "systemctl reset-failed");
    }
}

/// The read step learns each host's systemd version; a host older than
/// `target.systemdMin` fails before its file is switched in, keeps its file,
/// and keeps nothing of the new one.
fn the_hosts_systemd_version_is_known_before_anything_is_written(
    deployer: &Deployer,
    hosts: &[&TestHost],
) {
    let testbed = deployer.testbed;
    let installed: u64 = testbed
        .sh_ok(hosts[0], "systemctl --version | head -1 | cut -d' ' -f2")
        .trim()
        .parse()
        .unwrap();
    let request = voxbridge_request(testbed, &hosts[..1], "root", json!({}));
    let plan = deployer.run("plan", &request, &secrets("one")).json();
    assert_eq!(plan["hosts"][0]["systemdVersion"], installed, "{plan:#}");
    let before = file_on(testbed, hosts[0], "/opt/voxbridge/.env");
    let mut newer = request.clone();
    newer["target"] = json!({"systemdMin": installed + 1});
    let run = deployer.run("deploy", &newer, &secrets("version"));
    assert_eq!(run.code, 1, "{}", run.stdout);
    let host = &run.json()["hosts"][0];
    assert_eq!(host["error"]["kind"], "systemdUnsupported");
    let message = host["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            "systemd v{installed}, older than `target.systemdMin` ({})",
            installed + 1
        )),
        "{message}"
    );
    assert!(!host["steps"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == "stage"));
    assert_eq!(file_on(testbed, hosts[0], "/opt/voxbridge/.env"), before);
    assert_nothing_staged(testbed, hosts[0]);
}

fn first_deploy_installs_and_restarts(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let secrets = secrets("one");
    let request = voxbridge_request(testbed, hosts, "root", json!({}));
    let run = deployer.run("deploy", &request, &secrets);
    let result = run.json();
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(statuses(&result), ["deployed", "deployed", "deployed"]);
    for host in hosts {
        let (meta, bytes) = file_on(testbed, host, "/opt/voxbridge/.env");
        assert_eq!(meta, "voxbridge:voxbridge 600");
        assert_eq!(bytes, expected_voxbridge_file(&secrets));
        let health = health(host, 8080, "/health");
        for key in ["JWT_SECRET", "MONGODB_URI", "REDIS_URL"] {
            assert_eq!(
                health["fingerprints"][key],
                fingerprint(&secrets[key]),
                "{key} on {}",
                host.addr
            );
        }
        let state = testbed.sh_ok(host, "stat -c '%U %a' /var/lib/hostenv/voxbridge");
        assert_eq!(state.trim(), "root 700");
    }
    let first = &result["hosts"][0];
    assert_eq!(first["changed"], true);
    assert_eq!(first["keys"]["added"].as_array().unwrap().len(), 5);
    assert_eq!(
        first["units"],
        json!([{"unit": "voxbridge.service", "restarted": true}])
    );
}

fn same_request_changes_nothing(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let secrets = secrets("one");
    let before: Vec<String> = hosts
        .iter()
        .map(|h| testbed.sh_ok(h, "systemctl show -p ExecMainPID --value voxbridge.service"))
        .collect();
    let request = voxbridge_request(testbed, hosts, "root", json!({}));
    let run = deployer.run("deploy", &request, &secrets);
    assert_eq!(run.code, 0, "{}", run.stdout);
    let result = run.json();
    assert_eq!(statuses(&result), ["unchanged", "unchanged", "unchanged"]);
    assert_eq!(result["hosts"][0]["changed"], false);
    let after: Vec<String> = hosts
        .iter()
        .map(|h| testbed.sh_ok(h, "systemctl show -p ExecMainPID --value voxbridge.service"))
        .collect();
    assert_eq!(before, after, "no unit restarted");
    for host in hosts {
        let backups = testbed.sh_ok(
            host,
            "ls /var/lib/hostenv/voxbridge | grep -v audit.log || true",
        );
        assert_eq!(
            backups.trim(),
            "",
            "the first deploy had no previous file to keep"
        );
        assert_nothing_staged(testbed, host);
    }
}

fn failing_health_check_rolls_back(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let good = secrets("one");
    let mut bad_secrets = secrets("two");
    bad_secrets.insert("HEALTH_MODE_VALUE".into(), "fail-CANARY".into());
    let mut request = voxbridge_request(
        testbed,
        &hosts[..1],
        "root",
        json!({
            "verify": quick_verify(1500),
            "allowSharedChange": true
        }),
    );
    request["env"]["HEALTH_MODE"] = json!({"value": "fail"});
    let run = deployer.run("deploy", &request, &bad_secrets);
    assert_eq!(run.code, 1, "{}", run.stdout);
    let result = run.json();
    assert_eq!(statuses(&result), ["rolledBack"]);
    let host = &result["hosts"][0];
    assert_eq!(host["error"]["kind"], "healthCheckFailed");
    assert_eq!(host["rollback"], "restoredPrevious");
    assert_eq!(result["error"]["kind"], "hostsFailed");
    let (meta, bytes) = file_on(testbed, hosts[0], "/opt/voxbridge/.env");
    assert_eq!(meta, "voxbridge:voxbridge 600");
    assert_eq!(
        bytes,
        expected_voxbridge_file(&good),
        "the previous file is back"
    );
    let health = health(hosts[0], 8080, "/health");
    assert_eq!(health["status"], 200);
    assert_eq!(
        health["fingerprints"]["JWT_SECRET"],
        fingerprint(&good["JWT_SECRET"])
    );
    let backup = testbed.sh_ok(
        hosts[0],
        "stat -c '%U:%G %a' /var/lib/hostenv/voxbridge/env.1",
    );
    assert_eq!(backup.trim(), "voxbridge:voxbridge 600");
}
