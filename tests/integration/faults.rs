//! Faults injected on the testbed (DESIGN.md §6). Exact points come from the
//! test-only `fault-injection` feature: `HOSTENV_PAUSE_AT=host:step` holds a
//! run before that step while a file exists. After each fault: the host's file
//! is whole (old or new bytes, owner, mode), no staged file is readable by
//! others, no lock is left, the result names what happened, and the next run
//! converges.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::Duration;

use pretty_assertions::assert_eq;
use serde_json::{json, Value};

use crate::deploy::{
    expected_voxbridge_file, file_on, fingerprint, health, scenario, secrets, settle, statuses,
    voxbridge_request, Deployer, Firewall, Scenario,
};
use crate::testbed::{TestHost, Testbed};

const TARGET: &str = "/opt/voxbridge/.env";
const STAGED: &str = "/opt/voxbridge/.env.hostenv-new";

/// A run held before one step on one host.
pub(crate) struct Paused {
    child: Child,
    file: std::path::PathBuf,
    stderr: std::thread::JoinHandle<String>,
}

impl Paused {
    pub(crate) fn start(
        deployer: &Deployer,
        request: &Value,
        values: &BTreeMap<String, String>,
        host: &TestHost,
        step: &str,
    ) -> Paused {
        let file = deployer.work.path().join(format!("pause-{step}"));
        std::fs::write(&file, "").unwrap();
        let extra: BTreeMap<String, String> = [
            (
                "HOSTENV_PAUSE_AT".to_string(),
                format!("{}:{step}", host.addr),
            ),
            ("HOSTENV_PAUSE_FILE".to_string(), file.display().to_string()),
        ]
        .into();
        let mut child = deployer.spawn_with("deploy", request, values, &extra);
        let (paused, reached) = mpsc::channel();
        let lines = BufReader::new(child.stderr.take().unwrap());
        let stderr = std::thread::spawn(move || {
            let mut all = String::new();
            for line in lines.lines().map_while(Result::ok) {
                if line.starts_with("hostenv: paused before") {
                    let _ = paused.send(());
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        if reached.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "the run never reached {step}:\n{}\n{}",
                String::from_utf8_lossy(&output.stdout),
                stderr.join().unwrap()
            );
        }
        Paused {
            child,
            file,
            stderr,
        }
    }

    /// Lets the run go on; its exit code, result and stderr.
    pub(crate) fn resume(self) -> (i32, Value, String) {
        std::fs::remove_file(&self.file).unwrap();
        let output = self.child.wait_with_output().unwrap();
        let stderr = self.stderr.join().unwrap();
        let result = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        (output.status.code().unwrap_or(-1), result, stderr)
    }

    /// SIGKILL, as a CI agent dying or a cancelled build would.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let _ = self.stderr.join();
        let _ = std::fs::remove_file(&self.file);
    }
}

/// The fault scenarios, after the deploy scenarios on the same testbed.
pub(crate) const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "killed_at_each_step_leaves_a_whole_file_and_converges",
        run: |deployer, hosts| {
            killed_at_each_step_leaves_a_whole_file_and_converges(deployer, hosts[0])
        },
    },
    Scenario {
        name: "a_connection_lost_after_the_switch_is_unknown_and_the_next_run_repairs",
        run: |deployer, hosts| {
            a_connection_lost_after_the_switch_is_unknown_and_the_next_run_repairs(
                deployer, hosts[0],
            )
        },
    },
    scenario!(a_host_that_never_speaks_ssh_times_out_alone),
    Scenario {
        name: "health_that_hangs_flaps_or_comes_up_slowly",
        run: |deployer, hosts| health_that_hangs_flaps_or_comes_up_slowly(deployer, hosts[1]),
    },
    Scenario {
        name: "a_full_disk_while_staging_changes_nothing",
        run: |deployer, hosts| a_full_disk_while_staging_changes_nothing(deployer, hosts[2]),
    },
    Scenario {
        name: "a_connection_cut_or_reset_mid_upload_changes_nothing",
        run: |deployer, hosts| {
            a_connection_cut_or_reset_mid_upload_changes_nothing(deployer, hosts[0])
        },
    },
    Scenario {
        name: "a_lost_channel_is_read_back_before_nothing_changed_is_said",
        run: |deployer, hosts| {
            a_lost_channel_is_read_back_before_nothing_changed_is_said(deployer, hosts[1])
        },
    },
    scenario!(a_panic_on_one_host_is_contained),
    scenario!(a_hostile_host_costs_only_itself),
    Scenario {
        name: "the_release_build_has_no_fault_injection",
        run: |_, _| the_release_build_has_no_fault_injection(),
    },
];

fn request(testbed: &Testbed, host: &TestHost) -> Value {
    voxbridge_request(
        testbed,
        &[host],
        "root",
        json!({"allowSharedChange": true, "rollout": {"lockWaitMs": 3000}}),
    )
}

/// Every backup of the host's file, named, with its bytes.
fn backups(testbed: &Testbed, host: &TestHost) -> String {
    testbed.sh_ok(
        host,
        "cd /var/lib/hostenv/voxbridge && for f in env.*; do [ -e \"$f\" ] && echo \"== $f $(stat -c '%U %a' \"$f\")\" && cat \"$f\"; done; true",
    )
}

/// A staged file, if one is left, is `0600`: root's while it is being
/// written, the service user's once whole.
fn assert_no_readable_staged_file(testbed: &Testbed, host: &TestHost) {
    let staged = testbed.sh(host, &format!("stat -c '%U %a' {STAGED}"));
    if staged.status.success() {
        let seen = String::from_utf8_lossy(&staged.stdout).trim().to_string();
        assert!(
            seen == "voxbridge 600" || seen == "root 600",
            "staged file: {seen}"
        );
    }
}

fn killed_at_each_step_leaves_a_whole_file_and_converges(deployer: &Deployer, host: &TestHost) {
    let testbed = deployer.testbed;
    let request = request(testbed, host);
    for step in ["switch", "restart", "verify"] {
        // Three restarts per round: keep clear of systemd's start limit.
        settle(testbed, &[host]);
        let old = secrets(&format!("kill-{step}-old"));
        let new = secrets(&format!("kill-{step}-new"));
        assert_eq!(deployer.run("deploy", &request, &old).code, 0);
        let backups_before = backups(testbed, host);
        Paused::start(deployer, &request, &new, host, step).kill();
        if step == "switch" {
            assert_eq!(
                backups(testbed, host),
                backups_before,
                "killed before switch"
            );
        } else {
            // The switch kept the old file as the newest backup (owner and mode
            // kept, inside the root-only state directory).
            let env_1 = testbed.sh_ok(
                host,
                "stat -c '%U %a' /var/lib/hostenv/voxbridge/env.1; cat /var/lib/hostenv/voxbridge/env.1",
            );
            assert_eq!(
                env_1,
                format!("voxbridge 600\n{}", expected_voxbridge_file(&old))
            );
        }

        // Before the switch the old file is whole; after it, the new one.
        let expected = if step == "switch" { &old } else { &new };
        assert_eq!(
            file_on(testbed, host, TARGET),
            (
                "voxbridge:voxbridge 600".to_string(),
                expected_voxbridge_file(expected)
            ),
            "killed before {step}"
        );
        assert_no_readable_staged_file(testbed, host);

        // No lock is left (the next run waits at most 3 s for one), and it converges.
        let next = deployer.run("deploy", &request, &new);
        assert_eq!(next.code, 0, "after a kill before {step}: {}", next.stdout);
        let result = next.json();
        let status = if step == "switch" {
            "deployed"
        } else {
            "unchanged"
        };
        assert_eq!(statuses(&result), [status], "after a kill before {step}");
        let restarted = result["hosts"][0]["units"][0]["restarted"].as_bool();
        // Killed before the restart, the unit still runs the old file: it is restarted now.
        assert_eq!(
            restarted,
            Some(step != "verify"),
            "after a kill before {step}"
        );
        assert_eq!(
            health(host, 8080, "/health")["fingerprints"]["JWT_SECRET"],
            fingerprint(&new["JWT_SECRET"])
        );
        let staged = testbed.sh(host, &format!("test -e {STAGED}"));
        assert!(
            !staged.status.success(),
            "a staged file outlived the next run"
        );
    }
}

fn a_connection_lost_after_the_switch_is_unknown_and_the_next_run_repairs(
    deployer: &Deployer,
    host: &TestHost,
) {
    let testbed = deployer.testbed;
    let request = request(testbed, host);
    let new = secrets("lost-new");
    let paused = Paused::start(deployer, &request, &new, host, "restart");
    // The host drops the session: every per-connection sshd dies (the
    // listener stays), as when a host reboots or a NAT forgets the flow.
    testbed.sh_ok(host, "pkill -KILL -f '^sshd: root'");
    let (code, result, stderr) = paused.resume();
    assert_eq!(code, 3, "{result}\n{stderr}");
    assert_eq!(statuses(&result), ["unknown"]);
    assert_eq!(result["hosts"][0]["error"]["kind"], "connectionLost");
    assert!(result["error"]["message"]
        .as_str()
        .unwrap()
        .contains("needs a person"));
    // The file was switched; the service still runs the old one.
    assert_eq!(
        file_on(testbed, host, TARGET).1,
        expected_voxbridge_file(&new)
    );

    let next = deployer.run("deploy", &request, &new);
    assert_eq!(next.code, 0, "{}", next.stdout);
    assert_eq!(statuses(&next.json()), ["unchanged"]);
    assert_eq!(next.json()["hosts"][0]["units"][0]["restarted"], true);
    assert_eq!(
        health(host, 8080, "/health")["fingerprints"]["JWT_SECRET"],
        fingerprint(&new["JWT_SECRET"])
    );
}

fn a_host_that_never_speaks_ssh_times_out_alone(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let mut request = voxbridge_request(
        testbed,
        &hosts[..2],
        "root",
        json!({"allowSharedChange": true}),
    );
    request["ssh"]["connectTimeoutMs"] = json!(2000);
    let before = file_on(testbed, hosts[1], TARGET);
    // The listener stops: TCP connects (the kernel accepts), SSH never speaks.
    let sshd = testbed.sshd_pid(hosts[1]).to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &sshd])
        .status()
        .unwrap()
        .success());
    let run = deployer.run("deploy", &request, &secrets("silent"));
    assert!(Command::new("kill")
        .args(["-CONT", &sshd])
        .status()
        .unwrap()
        .success());
    assert_eq!(run.code, 1, "{}", run.stdout);
    let result = run.json();
    assert_eq!(statuses(&result), ["deployed", "failed"]);
    assert_eq!(result["hosts"][1]["error"]["kind"], "connectFailed");
    let connect = &result["hosts"][1]["steps"][0];
    assert_eq!(connect["name"], "connect");
    // Bounded by its timeout (generously: this is a bound, not a speed target).
    assert!(connect["ms"].as_u64().unwrap() < 6000, "{connect}");
    assert_eq!(file_on(testbed, hosts[1], TARGET), before);
}

fn health_that_hangs_flaps_or_comes_up_slowly(deployer: &Deployer, host: &TestHost) {
    let testbed = deployer.testbed;
    let with_health = |mode: &str, check: Value| {
        let mut request = request(testbed, host);
        request["env"]["HEALTH_MODE"] = json!({"value": mode});
        request["verify"] = json!([check]);
        request
    };
    let baseline = secrets("health-base");
    assert_eq!(
        deployer
            .run("deploy", &request(testbed, host), &baseline)
            .code,
        0
    );
    let before = file_on(testbed, host, TARGET);

    // Flapping never gives two good answers in a row.
    let flapping = with_health(
        "flap",
        json!({"url": "http://{host}:8080/health", "intervalMs": 100, "deadlineMs": 2000, "consecutive": 2}),
    );
    let rolls_back = |request: &Value, generation: &str| {
        let result = deployer.run("deploy", request, &secrets(generation)).json();
        assert_eq!(statuses(&result), ["rolledBack"], "{result}");
        assert_eq!(result["hosts"][0]["error"]["kind"], "healthCheckFailed");
        assert_eq!(file_on(testbed, host, TARGET), before);
        settle(testbed, &[host]);
    };
    rolls_back(&flapping, "flap");

    // Hanging: each attempt ends at its timeout, the check at its deadline.
    let hanging = with_health(
        "hang",
        json!({"url": "http://{host}:8080/health", "timeoutMs": 300, "intervalMs": 100, "deadlineMs": 1500, "consecutive": 1}),
    );
    rolls_back(&hanging, "hang");

    // Slow to come up: 503 at first, then healthy within the deadline.
    let slow = with_health(
        "slow",
        json!({"url": "http://{host}:8080/health", "intervalMs": 200, "deadlineMs": 8000, "consecutive": 2}),
    );
    let result = deployer.run("deploy", &slow, &secrets("slow")).json();
    assert_eq!(statuses(&result), ["deployed"], "{result}");
    let check = &result["hosts"][0]["checks"][0];
    assert!(check["attempts"].as_u64().unwrap() > 2, "{check}");
}

fn a_full_disk_while_staging_changes_nothing(deployer: &Deployer, host: &TestHost) {
    let testbed = deployer.testbed;
    let request = request(testbed, host);
    assert_eq!(
        deployer.run("deploy", &request, &secrets("disk-old")).code,
        0
    );
    let before = file_on(testbed, host, TARGET);
    let backups_before = backups(testbed, host);
    testbed.sh_ok(host, "mount -o remount,size=4m /opt && (dd if=/dev/zero of=/opt/filler bs=64k 2>/dev/null; true)");
    let mut big = secrets("disk-new");
    big.insert(
        "REDIS_URL".into(),
        format!("CANARY-{}", "r".repeat(100_000)),
    );
    let run = deployer.run("deploy", &request, &big);
    testbed.sh_ok(host, "rm -f /opt/filler && mount -o remount,size=64m /opt");
    assert_eq!(run.code, 1, "{}", run.stdout);
    let result = run.json();
    assert_eq!(statuses(&result), ["failed"]);
    assert_eq!(result["hosts"][0]["error"]["kind"], "remoteCommandFailed");
    assert_eq!(result["hosts"][0]["changed"], false);
    assert_eq!(file_on(testbed, host, TARGET), before);
    assert_eq!(backups(testbed, host), backups_before);
    let staged = testbed.sh(host, &format!("test -e {STAGED}"));
    assert!(!staged.status.success(), "a partial staged file was left");
    // With room again, the same deploy goes through.
    assert_eq!(deployer.run("deploy", &request, &big).code, 0);
}

/// Halfway through staging a large file, the connection is cut (packets
/// dropped, so only the I/O timeout notices) or reset (the host's session
/// dies). Either way the target is untouched and the next run deploys. What
/// the run may say differs: after the reset a new connection reads the file
/// as before (`failed`); the cut goes on, the switch was already on its way
/// behind the stage, and no new connection gets through, so the run cannot
/// say nothing changed (`unknown`, exit 3).
fn a_connection_cut_or_reset_mid_upload_changes_nothing(deployer: &Deployer, host: &TestHost) {
    let testbed = deployer.testbed;
    let mut request = request(testbed, host);
    request["ssh"]["ioTimeoutMs"] = json!(3000);
    request["ssh"]["connectTimeoutMs"] = json!(3000);
    request["rollout"]["lockWaitMs"] = json!(15000);
    for (fault, code, status, read_back) in [
        ("cut", 3, "unknown", "notRead"),
        ("reset", 1, "failed", "asBefore"),
    ] {
        settle(testbed, &[host]);
        let old = secrets(&format!("{fault}-old"));
        assert_eq!(deployer.run("deploy", &request, &old).code, 0);
        let before = file_on(testbed, host, TARGET);
        let backups_before = backups(testbed, host);
        let mut big = secrets(&format!("{fault}-new"));
        big.insert(
            "REDIS_URL".into(),
            format!("CANARY-{fault}-{}", "u".repeat(120_000)),
        );
        let paused = Paused::start(deployer, &request, &big, host, "mid-upload");
        let (exit, result, stderr) = if fault == "cut" {
            let _firewall = Firewall::drop_from_root(&host.addr, 22);
            paused.resume()
        } else {
            testbed.sh_ok(host, "pkill -KILL -f '^sshd: root'");
            paused.resume()
        };
        assert_eq!(exit, code, "{fault}: {result}\n{stderr}");
        assert_eq!(statuses(&result), [status], "{fault}");
        assert_eq!(
            result["hosts"][0]["error"]["kind"], "connectionLost",
            "{fault}"
        );
        assert_eq!(
            result["hosts"][0]["readBack"], read_back,
            "{fault}: {result}"
        );
        assert_eq!(result["hosts"][0]["changed"], false);
        assert_eq!(file_on(testbed, host, TARGET), before, "{fault}");
        assert_eq!(backups(testbed, host), backups_before, "{fault}");
        assert_no_readable_staged_file(testbed, host);
        let next = deployer.run("deploy", &request, &big);
        assert_eq!(next.code, 0, "after a {fault}: {}", next.stdout);
        assert_eq!(statuses(&next.json()), ["deployed"]);
    }
}

/// The lock holder dies right before the switch is asked of it (a host's
/// root ending it, or the channel breaking): the switch goes out, or does
/// not, and its answer never comes. The run does not take "nothing changed"
/// on trust: a new connection reads the target back, finds the file from
/// before the run, and only then is the host `failed`; that read is in the
/// result, and the next run deploys.
fn a_lost_channel_is_read_back_before_nothing_changed_is_said(
    deployer: &Deployer,
    host: &TestHost,
) {
    let testbed = deployer.testbed;
    let request = request(testbed, host);
    settle(testbed, &[host]);
    assert_eq!(
        deployer
            .run("deploy", &request, &secrets("read-back-old"))
            .code,
        0
    );
    let before = file_on(testbed, host, TARGET);
    let new = secrets("read-back-new");
    let paused = Paused::start(deployer, &request, &new, host, "switch");
    testbed.sh_ok(
        host,
        "pkill -KILL -f '^/usr/local/sbin/hostenv-host lock voxbridge'",
    );
    let (code, result, stderr) = paused.resume();
    assert_eq!(code, 1, "{result}\n{stderr}");
    let host_result = &result["hosts"][0];
    assert_eq!(host_result["status"], "failed", "{result}");
    assert_eq!(host_result["error"]["kind"], "connectionLost");
    assert_eq!(host_result["readBack"], "asBefore", "{result}");
    let steps: Vec<&str> = host_result["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(
        steps.ends_with(&["switch", "reconnect", "read-back", "audit"]),
        "{steps:?}"
    );
    assert_eq!(file_on(testbed, host, TARGET), before);
    // The new connection also removed the staged file and wrote the audit line.
    assert!(!testbed
        .sh(host, &format!("test -e {STAGED}"))
        .status
        .success());
    let next = deployer.run("deploy", &request, &new);
    assert_eq!(next.code, 0, "{}", next.stdout);
    assert_eq!(
        file_on(testbed, host, TARGET).1,
        expected_voxbridge_file(&new)
    );
}

/// A bug in one host's run (a panic before its switch, asked for with
/// HOSTENV_PANIC_AT) ends that host `unknown`, exit 3; every other host
/// deploys, and the result and the JUnit file are whole. In a Rotation the
/// hosts already switched are put back, as for any failure.
fn a_panic_on_one_host_is_contained(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    settle(testbed, hosts);
    let request = voxbridge_request(testbed, hosts, "root", json!({"allowSharedChange": true}));
    let mut env = secrets("panic-deploy");
    env.insert(
        "HOSTENV_PANIC_AT".into(),
        format!("{}:switch", hosts[1].addr),
    );
    let junit = deployer.work.path().join("panic.junit.xml");
    let run = deployer.run_args(
        &["deploy", "--junit", junit.to_str().unwrap()],
        &request,
        &env,
    );
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    let result = run.json();
    assert_eq!(
        statuses(&result),
        ["deployed", "unknown", "deployed"],
        "{result}"
    );
    assert_eq!(result["hosts"][1]["error"]["kind"], "internal");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert_eq!(xml.matches("<testcase ").count(), 3, "{xml}");
    let next = deployer.run("deploy", &request, &secrets("panic-deploy"));
    assert_eq!(next.code, 0, "{}", next.stdout);

    // Within a Rotation's window: the dialler's host stops before its switch,
    // after the fleet switched; the fleet goes back.
    settle(testbed, hosts);
    crate::rotation::write_contracts(deployer.work.path());
    let rotation = crate::rotation::rotation_request(testbed, hosts);
    let before: Vec<String> = hosts
        .iter()
        .map(|h| {
            testbed.sh_ok(
                h,
                "cat /opt/voxcore/.env /opt/voxdialler/.env 2>/dev/null || true",
            )
        })
        .collect();
    let mut env = crate::rotation::contained_generation("panic-window");
    env.insert(
        "HOSTENV_PANIC_AT".into(),
        format!("{}:switch", hosts[2].addr),
    );
    let run = deployer.run("deploy", &rotation, &env);
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    let result = run.json();
    let per_host = |deployment: usize| -> Vec<String> {
        result["deployments"][deployment]["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["status"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(per_host(0), ["rolledBack", "rolledBack"], "{result}");
    assert_eq!(per_host(1), ["unknown"], "{result}");
    let after: Vec<String> = hosts
        .iter()
        .map(|h| {
            testbed.sh_ok(
                h,
                "cat /opt/voxcore/.env /opt/voxdialler/.env 2>/dev/null || true",
            )
        })
        .collect();
    assert_eq!(after, before, "the window did not put every host back");
}

/// One host whose root answers the lock step with lengths that overflow, a
/// flood without end, silence, or escapes and noncharacters
/// (tests/testbed/hostile_host.py in place of its host program), while two
/// other hosts deploy: they are deployed, the hostile host fails alone and
/// says which bound it broke, the run keeps its deadlines, and the agent's
/// peak memory stays bounded (printed for each mode).
fn a_hostile_host_costs_only_itself(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let hostile = hosts[2];
    settle(testbed, hosts);
    let mut request = voxbridge_request(testbed, hosts, "root", json!({"allowSharedChange": true}));
    request["ssh"]["ioTimeoutMs"] = json!(3000);
    request["deadlineMs"] = json!(60000);
    testbed.sh_ok(
        hostile,
        "cp -p /usr/local/sbin/hostenv-host /usr/local/sbin/hostenv-host.real",
    );
    testbed.put(
        hostile,
        "/usr/local/sbin/hostenv-host.new",
        include_str!("../testbed/hostile_host.py"),
    );
    testbed.sh_ok(
        hostile,
        "chmod 755 /usr/local/sbin/hostenv-host.new && mv /usr/local/sbin/hostenv-host.new /usr/local/sbin/hostenv-host",
    );
    for (mode, kind) in [
        ("overflow", "hostAnswerTooLarge"),
        ("flood", "hostAnswerTooLarge"),
        ("stall", "connectionLost"),
        ("garbage", "remoteCommandFailed"),
    ] {
        testbed.put(hostile, "/etc/hostile-mode", mode);
        let values = secrets(&format!("hostile-{mode}"));
        let started = std::time::Instant::now();
        let child = deployer.spawn("deploy", &request, &values);
        let pid = child.id();
        let watcher = std::thread::spawn(move || {
            let mut peak = 0u64;
            while let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                let hwm = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok());
                match hwm {
                    Some(kb) => peak = peak.max(kb),
                    None => break,
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        });
        let output = child.wait_with_output().unwrap();
        let took = started.elapsed();
        let peak = watcher.join().unwrap();
        eprintln!("a hostile host ({mode}): the agent's peak RSS {peak} kB, the run {took:?}");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let result: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        assert_eq!(output.status.code(), Some(1), "{mode}: {stdout}");
        assert_eq!(
            statuses(&result),
            ["deployed", "deployed", "failed"],
            "{mode}: {result}"
        );
        let error = &result["hosts"][2]["error"];
        assert_eq!(error["kind"], kind, "{mode}: {error}");
        let message = error["message"].as_str().unwrap_or_default();
        assert!(
            !message.contains(['\u{1b}', '\r', '\u{202e}', '\u{fffe}']),
            "{mode}: {message:?}"
        );
        assert!(took < Duration::from_secs(60), "{mode}: {took:?}");
        // Far below what the flood announced (99,999,999,999 bytes).
        assert!(peak < 256 * 1024, "{mode}: {peak} kB");
        for host in &hosts[..2] {
            assert_eq!(
                file_on(testbed, host, TARGET).1,
                expected_voxbridge_file(&values),
                "{mode}"
            );
        }
        settle(testbed, hosts);
    }
    testbed.sh_ok(
        hostile,
        "mv /usr/local/sbin/hostenv-host.real /usr/local/sbin/hostenv-host; rm -f /etc/hostile-mode",
    );
    let values = secrets("after-hostile");
    let run = deployer.run("deploy", &request, &values);
    assert_eq!(run.code, 0, "{}", run.stdout);
}

/// Builds for use (no dev-dependencies) compile the feature out.
fn the_release_build_has_no_fault_injection() {
    // hostenv's features for the given kinds of dependency edges.
    let features = |edges: &str| {
        let tree = Command::new(env!("CARGO"))
            .args([
                "tree",
                "--offline",
                "-e",
                edges,
                "-f",
                "{p} [{f}]",
                "--depth",
                "0",
            ])
            .current_dir(crate::common::repo_root())
            .output()
            .unwrap();
        String::from_utf8_lossy(&tree.stdout).into_owned()
    };
    let build = features("normal");
    assert!(build.starts_with("hostenv v"), "{build}");
    assert!(!build.contains("fault-injection"), "{build}");
    // This test binary's own build has it, so the check can tell.
    assert!(features("normal,dev").contains("fault-injection"));
}
