//! Rotation requests on the testbed. voxcore, the fleet, runs on the first two
//! hosts and checks `VOXCORE_SECRET` on `POST /attach`; voxdialler, on the
//! third, presents it and is healthy only while it can attach to every fleet
//! host (tests/testbed/service.py). The scenarios run in order on the hosts
//! the deploy scenarios leave behind.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use pretty_assertions::assert_eq;
use serde_json::{json, Value};

use crate::common::{assert_no_leak, Run};
use crate::deploy::{
    fingerprint, health, scenario, secrets, settle, sudoers_rules, voxbridge_request, Deployer,
    ExecTrace, Scenario,
};
use crate::testbed::{TestHost, Testbed};

const FLEET_CONTRACT: &str =
    "VOXCORE_SECRET=\nVOXCORE_SECRET_PREVIOUS=\nOPENAI_API_KEY=\nLOG_LEVEL=info\nHEALTH_MODE=ok\n";
const DIALLER_CONTRACT: &str = "VOXCORE_SECRET=\nVOXCORE_FLEET=\nLIVEKIT_API_KEY=\nLIVEKIT_API_SECRET=\nMONGODB_URI=\nLOG_LEVEL=info\nHEALTH_MODE=ok\n";
const DIALLER_MONGODB_URI: &str = "CANARY-mongo-dialler://u:p@db";
const FLEET_ENV: &str = "/opt/voxcore/.env";
const DIALLER_ENV: &str = "/opt/voxdialler/.env";

/// Every generation a scenario binds, so each run's output is searched for all of them.
const GENERATIONS: [&str; 8] = ["r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8"];
const HAND_EDITED: &str = "CANARY-edited-by-hand";
const OTHER_VALUE: &str = "CANARY-voxcore-other-value";

/// The secrets of one rotation generation.
fn generation(name: &str) -> BTreeMap<String, String> {
    [
        ("VOXCORE_SECRET", format!("CANARY-voxcore-{name}-\"$'")),
        ("OPENAI_API_KEY", format!("CANARY-openai-{name}")),
        ("LIVEKIT_API_KEY", "CANARY-livekit-key".to_string()),
        ("LIVEKIT_API_SECRET", "CANARY-livekit-secret".to_string()),
        ("MONGODB_URI", DIALLER_MONGODB_URI.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn every_canary() -> Vec<String> {
    let mut canaries: Vec<String> = GENERATIONS
        .iter()
        .flat_map(|g| generation(g).into_values())
        .chain(secrets("mongo-rotated").into_values())
        .chain([HAND_EDITED.to_string(), OTHER_VALUE.to_string()])
        .collect();
    canaries.sort();
    canaries.dedup();
    canaries
}

/// A run whose stdout and stderr hold no secret of any generation.
fn run(deployer: &Deployer, args: &[&str], request: &Value, env: &BTreeMap<String, String>) -> Run {
    let run = deployer.run_args(args, request, env);
    assert_no_leak("stdout", &run.stdout, &every_canary());
    assert_no_leak("stderr", &run.stderr, &every_canary());
    run
}

fn fleet_urls(hosts: &[&TestHost]) -> String {
    hosts[..2]
        .iter()
        .map(|h| format!("http://{}:9000", h.addr))
        .collect::<Vec<_>>()
        .join(",")
}

/// VOXCORE_SECRET rotated across the fleet (hosts 0 and 1) and the dialler (host 2).
pub(crate) fn rotation_request(testbed: &Testbed, hosts: &[&TestHost]) -> Value {
    json!({
        "apiVersion": "hostenv/v1",
        "kind": "Rotation",
        "shared": ["VOXCORE_SECRET"],
        "deployments": [
            {
                "service": "voxcore",
                "contract": "fleet.env.example",
                "hosts": [{"host": hosts[0].addr, "instances": ["sock1", "sock2"]},
                          {"host": hosts[1].addr, "instances": ["sock1"]}],
                "env": {"VOXCORE_SECRET": {"secretEnv": "VOXCORE_SECRET"},
                        "OPENAI_API_KEY": {"secretEnv": "OPENAI_API_KEY"},
                        "LOG_LEVEL": {"value": "info"}},
                "optional": ["VOXCORE_SECRET_PREVIOUS", "HEALTH_MODE"],
                "ssh": testbed.ssh_settings("root"),
                "verify": [{"url": "http://{host}:9000/health/fleet", "intervalMs": 100, "deadlineMs": 8000, "consecutive": 2}],
                "restart": {"timeoutMs": 20000}
            },
            {
                "service": "voxdialler",
                "contract": "dialler.env.example",
                "hosts": [hosts[2].addr],
                "env": {"VOXCORE_SECRET": {"secretEnv": "VOXCORE_SECRET"},
                        "VOXCORE_FLEET": {"value": fleet_urls(hosts)},
                        "LIVEKIT_API_KEY": {"secretEnv": "LIVEKIT_API_KEY"},
                        "LIVEKIT_API_SECRET": {"secretEnv": "LIVEKIT_API_SECRET"},
                        "MONGODB_URI": {"secretEnv": "MONGODB_URI"},
                        "LOG_LEVEL": {"value": "info"}},
                "optional": ["HEALTH_MODE"],
                "ssh": testbed.ssh_settings("root"),
                "verify": [{"url": "http://{host}:8090/health", "intervalMs": 100, "deadlineMs": 8000, "consecutive": 2}],
                "restart": {"timeoutMs": 20000}
            }
        ]
    })
}

/// The fleet's check wants `consecutive` answers `interval_ms` apart: a longer window.
fn slow_fleet(mut request: Value, consecutive: u64, interval_ms: u64) -> Value {
    let check = &mut request["deployments"][0]["verify"][0];
    check["consecutive"] = json!(consecutive);
    check["intervalMs"] = json!(interval_ms);
    request
}

/// A field of every host, per deployment ("" where a host lacks it).
fn per_host(result: &Value, field: impl Fn(&Value) -> &Value) -> Vec<Vec<String>> {
    result["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            d["hosts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| field(h).as_str().unwrap_or("").to_string())
                .collect()
        })
        .collect()
}

fn statuses(result: &Value) -> Vec<Vec<String>> {
    per_host(result, |h| &h["status"])
}

fn error_kinds(result: &Value) -> Vec<Vec<String>> {
    per_host(result, |h| &h["error"]["kind"])
}

fn strings(rows: &[&[&str]]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|row| row.iter().map(|s| s.to_string()).collect())
        .collect()
}

/// The three files of the window: fleet on hosts 0 and 1, dialler on host 2,
/// each as `owner mode` and bytes.
fn window_files(testbed: &Testbed, hosts: &[&TestHost]) -> Vec<String> {
    [(0, FLEET_ENV), (1, FLEET_ENV), (2, DIALLER_ENV)]
        .iter()
        .map(|(i, path)| testbed.sh_ok(hosts[*i], &format!("stat -c '%U %a' {path}; cat {path}")))
        .collect()
}

/// Deploys `request` with generation `name`, which must fail: each host ends
/// with `statuses` and error `kinds`, and every file of the window is as it was.
fn assert_put_back(
    deployer: &Deployer,
    hosts: &[&TestHost],
    request: &Value,
    name: &str,
    expected_statuses: &[&[&str]],
    kinds: &[&[&str]],
) -> Run {
    let before = window_files(deployer.testbed, hosts);
    let failed = run(deployer, &["deploy"], request, &generation(name));
    assert_eq!(failed.code, 1, "{}", failed.stdout);
    let result = failed.json();
    assert_eq!(statuses(&result), strings(expected_statuses));
    assert_eq!(error_kinds(&result), strings(kinds));
    assert_eq!(window_files(deployer.testbed, hosts), before);
    failed
}

/// `POST /attach` on a fleet host with `secret`: the status it answers.
fn attach(host: &TestHost, secret: &str) -> u16 {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(3)))
        .http_status_as_error(false)
        .build()
        .into();
    agent
        .post(&format!("http://{}:9000/attach", host.addr))
        .header("X-Voxcore-Secret", secret)
        .send_empty()
        .expect("the fleet answers")
        .status()
        .as_u16()
}

/// The dialler attaches to every fleet host and the fleet serves `name`'s secret.
fn assert_attached_with(hosts: &[&TestHost], name: &str) {
    let dialler = health(hosts[2], 8090, "/health");
    assert_eq!(
        (dialler["status"].clone(), dialler["unattached"].clone()),
        (json!(200), json!([])),
        "the dialler cannot attach: {dialler}"
    );
    let secret = &generation(name)["VOXCORE_SECRET"];
    assert_eq!(
        dialler["fingerprints"]["VOXCORE_SECRET"],
        fingerprint(secret)
    );
    for fleet_host in &hosts[..2] {
        let fleet = health(fleet_host, 9000, "/health/fleet");
        assert_eq!(fleet["fingerprints"]["VOXCORE_SECRET"], fingerprint(secret));
        assert_eq!(attach(fleet_host, secret), 200);
    }
}

/// Which service each `switch ok` progress line belongs to, in order.
fn switch_order(stderr: &str) -> Vec<String> {
    step_order(stderr, "switch")
}

/// Which service each `STEP ok` progress line belongs to, in order.
fn step_order(stderr: &str, step: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| l.contains(&format!(": {step} ok")))
        .map(|l| l.split_whitespace().nth(2).unwrap().to_string())
        .collect()
}

/// The fleet's and the dialler's contracts, where `rotation_request` expects them.
pub(crate) fn write_contracts(work: &std::path::Path) {
    std::fs::write(work.join("fleet.env.example"), FLEET_CONTRACT).unwrap();
    std::fs::write(work.join("dialler.env.example"), DIALLER_CONTRACT).unwrap();
}

/// Canary values for `rotation_request`, for the containment test: every
/// secret of the generation is one, MONGODB_URI the dialler's usual one.
pub(crate) fn contained_generation(name: &str) -> BTreeMap<String, String> {
    let mut values = generation(name);
    values.insert(
        "LIVEKIT_API_KEY".into(),
        format!("CANARY-livekit-key-{name}"),
    );
    values.insert(
        "LIVEKIT_API_SECRET".into(),
        format!("CANARY-livekit-secret-{name}"),
    );
    values
}

/// The rotation scenarios, last on the deploy scenarios' testbed. They run as
/// one: a trace of every command the hosts run spans them, and the
/// scenario that reads it must come after all the others.
pub(crate) const SCENARIOS: &[Scenario] = &[scenario!(rotations)];

fn rotations(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    write_contracts(deployer.work.path());

    let trace = ExecTrace::start(testbed, hosts, "rotation");
    a_rotation_switches_the_fleet_first_then_the_dialler(deployer, hosts);
    settle(testbed, hosts);
    rotation_drift_names_the_key_edited_by_hand(deployer, hosts);
    settle(testbed, hosts);
    a_failing_fleet_host_puts_every_host_back(deployer, hosts);
    settle(testbed, hosts);
    a_failing_dialler_goes_back_after_the_fleet_and_is_checked(deployer, hosts);
    settle(testbed, hosts);
    a_fleet_host_failing_in_the_first_batch_puts_both_back(deployer, hosts);
    settle(testbed, hosts);
    rotation_rollback_restores_every_file_byte_for_byte(deployer, hosts);
    settle(testbed, hosts);
    an_overlap_rotation_keeps_the_dialler_attached_throughout(deployer, hosts);
    settle(testbed, hosts);
    an_overlap_failure_puts_the_fleet_back_to_before_the_window(deployer, hosts);
    settle(testbed, hosts);
    purge_backups_of_leaves_no_backup_with_an_old_value(deployer, hosts);
    settle(testbed, hosts);
    different_values_for_a_shared_key_are_rejected_before_any_connection(deployer, hosts);
    a_mongodb_rotation_across_voxbridge_and_voxdialler(deployer, hosts);
    settle(testbed, hosts);
    secrets_stay_out_of_commands_and_audit_lines(testbed, hosts, trace);
    // Last: it kills the dialler host's sshd, which the trace above follows.
    the_dialler_going_down_after_the_fleet_switched_puts_the_fleet_back(deployer, hosts);
    settle(testbed, hosts);
}

/// A rotation of VOXCORE_SECRET across the fleet and the dialler in one
/// window, then one whose second fleet host fails, which puts every host
/// back: the rotation row of each host generation (`generations.rs`).
pub(crate) fn a_rotation_and_its_undo(deployer: &Deployer, hosts: &[&TestHost]) {
    write_contracts(deployer.work.path());
    a_rotation_switches_the_fleet_first_then_the_dialler(deployer, hosts);
    settle(deployer.testbed, hosts);
    a_failing_fleet_host_puts_every_host_back(deployer, hosts);
}

fn a_rotation_switches_the_fleet_first_then_the_dialler(deployer: &Deployer, hosts: &[&TestHost]) {
    let request = rotation_request(deployer.testbed, hosts);
    let first = run(deployer, &["deploy"], &request, &generation("r1"));
    assert_eq!(first.code, 0, "{}\n{}", first.stdout, first.stderr);
    assert_attached_with(hosts, "r1");

    let second = run(deployer, &["deploy"], &request, &generation("r2"));
    assert_eq!(second.code, 0, "{}\n{}", second.stdout, second.stderr);
    let result = second.json();
    assert_eq!(
        statuses(&result),
        strings(&[&["deployed", "deployed"], &["deployed"]])
    );
    assert_eq!(result["hosts"], json!([]));
    assert_eq!(result["deployments"][0]["service"], "voxcore");
    assert_eq!(result["deployments"][1]["service"], "voxdialler");
    assert_eq!(result["deployments"][0]["summary"]["deployed"], 2);
    assert_eq!(result["summary"]["deployed"], 3);
    assert_eq!(
        result["deployments"][0]["hosts"][0]["keys"]["changed"],
        json!(["VOXCORE_SECRET", "OPENAI_API_KEY"])
    );
    // The read-back: one value on all three hosts, the one the request named.
    let shared = &result["shared"][0];
    assert_eq!(shared["key"], "VOXCORE_SECRET");
    assert_eq!(shared["identical"], true);
    assert_eq!(shared["services"], json!(["voxcore", "voxdialler"]));
    let groups = shared["holders"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "{shared}");
    assert_eq!(groups[0]["expected"], true);
    assert_eq!(groups[0]["hosts"].as_array().unwrap().len(), 3);

    // Every host staged before the first switch; the fleet switched and
    // verified before the dialler switched.
    let lines: Vec<&str> = second.stderr.lines().collect();
    let first_switch = lines
        .iter()
        .position(|l| l.contains(": switch ok"))
        .unwrap();
    let last_stage = lines
        .iter()
        .rposition(|l| l.contains(": stage ok"))
        .unwrap();
    assert!(last_stage < first_switch, "{}", second.stderr);
    assert_eq!(
        switch_order(&second.stderr),
        ["voxcore", "voxcore", "voxdialler"]
    );
    let last_fleet_verify = lines
        .iter()
        .rposition(|l| l.contains("voxcore") && l.contains(": verify ok"))
        .unwrap();
    let dialler_switch = lines
        .iter()
        .position(|l| l.contains("voxdialler") && l.contains(": switch ok"))
        .unwrap();
    assert!(last_fleet_verify < dialler_switch, "{}", second.stderr);

    assert_attached_with(hosts, "r2");
    assert_eq!(attach(hosts[0], &generation("r1")["VOXCORE_SECRET"]), 403);

    // A plan of what is there now: nothing to do.
    let plan = run(deployer, &["plan"], &request, &generation("r2"));
    assert_eq!(plan.code, 0, "{}", plan.stdout);
    assert_eq!(
        statuses(&plan.json()),
        strings(&[&["unchanged", "unchanged"], &["unchanged"]])
    );
}

fn rotation_drift_names_the_key_edited_by_hand(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let request = rotation_request(testbed, hosts);
    let clean = run(deployer, &["drift"], &request, &generation("r2"));
    assert_eq!(clean.code, 0, "{}", clean.stdout);
    assert_eq!(clean.json()["shared"][0]["identical"], true);

    testbed.sh_ok(
        hosts[1],
        &format!("sed -i 's/^VOXCORE_SECRET=.*/VOXCORE_SECRET=\"{HAND_EDITED}\"/' {FLEET_ENV}"),
    );
    let before = window_files(testbed, hosts);
    let drift = run(deployer, &["drift"], &request, &generation("r2"));
    assert_eq!(drift.code, 4, "{}", drift.stdout);
    let result = drift.json();
    assert_eq!(
        statuses(&result),
        strings(&[&["inSync", "drifted"], &["inSync"]])
    );
    assert_eq!(
        result["deployments"][0]["hosts"][1]["keys"]["changed"],
        json!(["VOXCORE_SECRET"])
    );
    let shared = &result["shared"][0];
    assert_eq!(shared["identical"], false);
    let groups = shared["holders"].as_array().unwrap();
    let members = |group: &Value| -> Vec<(String, String)> {
        group["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h["service"].as_str().unwrap().to_string(),
                    h["host"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    assert_eq!(groups.len(), 2, "{shared}");
    assert_eq!(groups[0]["expected"], true);
    assert_eq!(
        members(&groups[0]),
        [
            ("voxcore".to_string(), hosts[0].addr.clone()),
            ("voxdialler".to_string(), hosts[2].addr.clone())
        ]
    );
    assert_eq!(groups[1]["expected"], false);
    assert_eq!(
        members(&groups[1]),
        [("voxcore".to_string(), hosts[1].addr.clone())]
    );
    assert_ne!(groups[0]["fingerprint"], groups[1]["fingerprint"]);
    // The fingerprints are keyed per run: the same hosts read again give others.
    let again = run(deployer, &["drift"], &request, &generation("r2")).json();
    assert_ne!(
        again["shared"][0]["holders"][0]["fingerprint"],
        groups[0]["fingerprint"]
    );
    assert_eq!(window_files(testbed, hosts), before, "drift wrote nothing");

    let repair = run(deployer, &["deploy"], &request, &generation("r2"));
    assert_eq!(repair.code, 0, "{}", repair.stdout);
    assert_eq!(
        statuses(&repair.json()),
        strings(&[&["unchanged", "deployed"], &["unchanged"]])
    );
    assert_attached_with(hosts, "r2");
}

fn a_failing_fleet_host_puts_every_host_back(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let mut request = rotation_request(testbed, hosts);
    // The second fleet host fails its health check after the first (the
    // canary) switched and passed: mid-window.
    request["deployments"][0]["hosts"][1]["env"] = json!({"HEALTH_MODE": {"value": "fail"}});
    request["deployments"][0]["rollout"] = json!({"canary": 1});
    request["deployments"][0]["verify"][0]["deadlineMs"] = json!(1500);
    let failed = assert_put_back(
        deployer,
        hosts,
        &request,
        "r3",
        &[&["rolledBack", "rolledBack"], &["skipped"]],
        &[&["rotationAborted", "healthCheckFailed"], &["notAttempted"]],
    );
    assert_eq!(failed.json()["error"]["kind"], "hostsFailed");
    assert_eq!(switch_order(&failed.stderr), ["voxcore", "voxcore"]);
    for (host, path) in [
        (hosts[0], FLEET_ENV),
        (hosts[1], FLEET_ENV),
        (hosts[2], DIALLER_ENV),
    ] {
        let staged = testbed.sh(host, &format!("test -e {path}.hostenv-new"));
        assert!(
            !staged.status.success(),
            "a staged file was left on {}",
            host.addr
        );
    }
    assert_attached_with(hosts, "r2");
}

/// A presenter that fails on the new value does not put itself back while the
/// fleet still holds the new secret (its check could not pass): the window
/// puts the fleet back first, then the dialler, whose check then passes.
fn a_failing_dialler_goes_back_after_the_fleet_and_is_checked(
    deployer: &Deployer,
    hosts: &[&TestHost],
) {
    let testbed = deployer.testbed;
    let mut request = rotation_request(testbed, hosts);
    request["deployments"][1]["env"]["HEALTH_MODE"] = json!({"value": "fail"});
    request["deployments"][1]["verify"][0]["deadlineMs"] = json!(1500);
    let failed = assert_put_back(
        deployer,
        hosts,
        &request,
        "r3",
        &[&["rolledBack", "rolledBack"], &["rolledBack"]],
        &[
            &["rotationAborted", "rotationAborted"],
            &["healthCheckFailed"],
        ],
    );
    assert_eq!(
        step_order(&failed.stderr, "rollback"),
        ["voxcore", "voxcore", "voxdialler"]
    );
    // The dialler's check failed on the new value, then passed once it and
    // the fleet were back; both are in its result.
    let checks = failed.json()["deployments"][1]["hosts"][0]["checks"].clone();
    let passed: Vec<bool> = checks
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["ok"].as_bool().unwrap())
        .collect();
    assert_eq!(passed, [false, true], "{checks:#}");
    assert_attached_with(hosts, "r2");
}

/// The first fleet host fails in the first (and only) batch: both fleet hosts
/// go back, the dialler is never switched.
fn a_fleet_host_failing_in_the_first_batch_puts_both_back(
    deployer: &Deployer,
    hosts: &[&TestHost],
) {
    let testbed = deployer.testbed;
    let mut request = rotation_request(testbed, hosts);
    request["deployments"][0]["hosts"][0]["env"] = json!({"HEALTH_MODE": {"value": "fail"}});
    request["deployments"][0]["verify"][0]["deadlineMs"] = json!(1500);
    assert_put_back(
        deployer,
        hosts,
        &request,
        "r3",
        &[&["rolledBack", "rolledBack"], &["skipped"]],
        &[&["healthCheckFailed", "rotationAborted"], &["notAttempted"]],
    );
    assert_attached_with(hosts, "r2");
}

fn rotation_rollback_restores_every_file_byte_for_byte(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let request = rotation_request(testbed, hosts);
    let before = window_files(testbed, hosts);
    let deployed = run(deployer, &["deploy"], &request, &generation("r3"));
    assert_eq!(deployed.code, 0, "{}", deployed.stdout);
    assert_attached_with(hosts, "r3");
    let after_deploy = window_files(testbed, hosts);

    // The fleet alone would go back to the old VOXCORE_SECRET while the
    // dialler keeps the new one: refused on every fleet host before anything
    // is written, as a deploy's shared-key change is.
    let mut fleet_only = request["deployments"][0].clone();
    fleet_only["apiVersion"] = json!("hostenv/v1");
    fleet_only["kind"] = json!("Deploy");
    let alone = run(deployer, &["rollback"], &fleet_only, &BTreeMap::new());
    assert_eq!(alone.code, 1, "{}", alone.stdout);
    let result = alone.json();
    assert_eq!(crate::deploy::statuses(&result), ["failed", "failed"]);
    for host in result["hosts"].as_array().unwrap() {
        assert_eq!(host["error"]["kind"], "sharedKeyChange", "{host}");
        let message = host["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("`VOXCORE_SECRET`")
                && message.contains("`voxdialler`")
                && message.contains("roll back the rotation as one"),
            "{message}"
        );
    }
    // A backup no host has is refused before anything is written too.
    let missing = run(
        deployer,
        &["rollback", "--to", "9"],
        &request,
        &BTreeMap::new(),
    );
    assert_eq!(missing.code, 1, "{}", missing.stdout);
    assert!(
        missing.stdout.contains("there is no backup 9"),
        "{}",
        missing.stdout
    );
    assert_eq!(window_files(testbed, hosts), after_deploy);
    assert_attached_with(hosts, "r3");

    // Before choosing: every host of both services lists its backups. The
    // newest holds the old VOXCORE_SECRET on all three hosts, which one
    // keyed fingerprint shows across the services, and the current files
    // all hold another.
    let listed = run(deployer, &["backups"], &request, &BTreeMap::new());
    assert_eq!(listed.code, 0, "{}", listed.stdout);
    let result = listed.json();
    assert_eq!(
        statuses(&result),
        strings(&[&["listed", "listed"], &["listed"]])
    );
    let entries: Vec<&Value> = result["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|d| d["hosts"].as_array().unwrap())
        .collect();
    let fingerprints = |pointer: &str| -> Vec<&Value> {
        entries
            .iter()
            .map(|host| host.pointer(pointer).unwrap_or(&Value::Null))
            .collect()
    };
    let old = fingerprints("/backups/kept/0/fingerprints/VOXCORE_SECRET");
    let now = fingerprints("/backups/current/fingerprints/VOXCORE_SECRET");
    assert!(old[0].is_string() && now[0].is_string(), "{result}");
    assert!(old.iter().all(|f| *f == old[0]), "{result}");
    assert!(now.iter().all(|f| *f == now[0]), "{result}");
    assert_ne!(old[0], now[0]);
    assert_eq!(
        window_files(testbed, hosts),
        after_deploy,
        "a listing writes nothing"
    );

    // No secret is bound: a rollback puts back files the hosts already hold.
    let rollback = run(deployer, &["rollback"], &request, &BTreeMap::new());
    assert_eq!(rollback.code, 0, "{}\n{}", rollback.stdout, rollback.stderr);
    let result = rollback.json();
    assert_eq!(
        statuses(&result),
        strings(&[&["restored", "restored"], &["restored"]])
    );
    assert_eq!(result["shared"][0]["identical"], true, "{result}");
    assert_eq!(window_files(testbed, hosts), before);
    assert_attached_with(hosts, "r2");
    let log = testbed.sh_ok(hosts[2], "tail -n 1 /var/lib/hostenv/voxdialler/audit.log");
    let last: Value = serde_json::from_str(log.trim()).unwrap();
    assert_eq!(
        (&last["action"], &last["result"], &last["rotation"]),
        (
            &json!("rollback"),
            &json!("restored"),
            &json!(["voxcore", "voxdialler"])
        )
    );
}

/// Polls the dialler's health until stopped; counts the answers that say a
/// fleet host rejected its secret (a fleet host restarting is not one).
struct AttachWatch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(usize, usize)>,
}

impl AttachWatch {
    fn start(dialler: &TestHost) -> AttachWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let url = format!("http://{}:8090/health", dialler.addr);
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(std::time::Duration::from_secs(3)))
                .http_status_as_error(false)
                .build()
                .into();
            let (mut answers, mut rejected) = (0, 0);
            while !flag.load(Ordering::Relaxed) {
                if let Ok(mut response) = agent.get(&url).call() {
                    let body: Value = serde_json::from_str(
                        &response.body_mut().read_to_string().unwrap_or_default(),
                    )
                    .unwrap_or_default();
                    answers += 1;
                    if body["rejected"].as_array().is_some_and(|r| !r.is_empty()) {
                        rejected += 1;
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(30));
            }
            (answers, rejected)
        });
        AttachWatch { stop, thread }
    }

    /// (answers seen, answers with a rejected secret)
    fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

fn an_overlap_rotation_keeps_the_dialler_attached_throughout(
    deployer: &Deployer,
    hosts: &[&TestHost],
) {
    let testbed = deployer.testbed;
    // Without overlap the dialler cannot attach between the fleet's switch
    // and its own, and the watch sees it: the fleet verifies slowly here.
    let plain = slow_fleet(rotation_request(testbed, hosts), 6, 200);
    let watch = AttachWatch::start(hosts[2]);
    let result = run(deployer, &["deploy"], &plain, &generation("r3"));
    let (answers, rejected) = watch.finish();
    assert_eq!(result.code, 0, "{}", result.stdout);
    assert!(answers > 10, "the watch saw {answers} answers");
    assert!(rejected > 0, "a plain rotation left no gap to see");

    let mut overlap = plain.clone();
    overlap["overlap"] = json!(["VOXCORE_SECRET"]);
    let watch = AttachWatch::start(hosts[2]);
    let result = run(deployer, &["deploy"], &overlap, &generation("r4"));
    let (answers, rejected) = watch.finish();
    assert_eq!(result.code, 0, "{}\n{}", result.stdout, result.stderr);
    assert!(answers > 10, "the watch saw {answers} answers");
    assert_eq!(
        rejected, 0,
        "the fleet rejected the dialler during an overlap rotation"
    );
    assert_eq!(
        switch_order(&result.stderr),
        ["voxcore", "voxcore", "voxdialler", "voxcore", "voxcore"]
    );
    assert_eq!(
        statuses(&result.json()),
        strings(&[&["deployed", "deployed"], &["deployed"]])
    );
    for fleet_host in &hosts[..2] {
        let now = testbed.sh(
            fleet_host,
            &format!("grep -c VOXCORE_SECRET_PREVIOUS {FLEET_ENV}"),
        );
        assert_eq!(
            String::from_utf8_lossy(&now.stdout).trim(),
            "0",
            "dropped at the end"
        );
        let interim = testbed.sh_ok(
            fleet_host,
            "grep -c '^VOXCORE_SECRET_PREVIOUS=' /var/lib/hostenv/voxcore/env.1",
        );
        assert_eq!(interim.trim(), "1", "the interim file is the newest backup");
    }
    assert_attached_with(hosts, "r4");
    assert_eq!(attach(hosts[0], &generation("r3")["VOXCORE_SECRET"]), 403);
}

fn an_overlap_failure_puts_the_fleet_back_to_before_the_window(
    deployer: &Deployer,
    hosts: &[&TestHost],
) {
    let testbed = deployer.testbed;
    let mut request = rotation_request(testbed, hosts);
    request["overlap"] = json!(["VOXCORE_SECRET"]);
    request["deployments"][1]["env"]["HEALTH_MODE"] = json!({"value": "fail"});
    request["deployments"][1]["verify"][0]["deadlineMs"] = json!(1500);
    // Back to the file from before the window, not the interim one.
    assert_put_back(
        deployer,
        hosts,
        &request,
        "r5",
        &[&["rolledBack", "rolledBack"], &["rolledBack"]],
        &[
            &["rotationAborted", "rotationAborted"],
            &["healthCheckFailed"],
        ],
    );
    assert_attached_with(hosts, "r4");
    assert_eq!(attach(hosts[0], &generation("r5")["VOXCORE_SECRET"]), 403);
}

fn purge_backups_of_leaves_no_backup_with_an_old_value(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let mut request = rotation_request(testbed, hosts);
    for deployment in 0..2 {
        request["deployments"][deployment]["purgeBackupsOf"] = json!(["VOXCORE_SECRET"]);
        request["deployments"][deployment]["ssh"] = testbed.ssh_settings("deploy");
    }
    // As the deploy user, with exactly the rules `hostenv sudoers` prints for
    // both deployments: the lock's, on whose channel backups are read and purged.
    let rules = sudoers_rules(deployer, &request);
    assert!(rules.contains("/usr/local/sbin/hostenv-host lock voxdialler default exclusive\n"));
    assert!(!rules.contains("purge"), "{rules}");
    for host in hosts {
        testbed.grant_sudo(host, &rules);
    }
    let places = [
        (hosts[0], "voxcore"),
        (hosts[1], "voxcore"),
        (hosts[2], "voxdialler"),
    ];
    let count = |host: &TestHost, service: &str| -> usize {
        testbed
            .sh_ok(
                host,
                &format!("ls /var/lib/hostenv/{service} | grep -c '^env\\.' || true"),
            )
            .trim()
            .parse()
            .unwrap()
    };
    let before: Vec<usize> = places.iter().map(|(h, s)| count(h, s)).collect();
    let purged = run(deployer, &["deploy"], &request, &generation("r6"));
    assert_eq!(purged.code, 0, "{}\n{}", purged.stdout, purged.stderr);
    let result = purged.json();
    let reported: Vec<u64> = [(0, 0), (0, 1), (1, 0)]
        .iter()
        .map(|(d, h)| {
            result["deployments"][d]["hosts"][h]["backupsPurged"]
                .as_u64()
                .unwrap()
        })
        .collect();
    // Every backup held an older VOXCORE_SECRET, including the one this switch made.
    let expected: Vec<u64> = before.iter().map(|n| (n + 1).min(5) as u64).collect();
    assert_eq!(reported, expected);
    for ((host, service), _) in places.iter().zip(&before) {
        assert_eq!(count(host, service), 0, "backups left on {}", host.addr);
    }
    assert_attached_with(hosts, "r6");

    // Nothing left to roll back to: a clear error, and nothing changes.
    let files = window_files(testbed, hosts);
    let rollback = run(deployer, &["rollback"], &request, &BTreeMap::new());
    assert_eq!(rollback.code, 1, "{}", rollback.stdout);
    assert_eq!(
        error_kinds(&rollback.json()),
        strings(&[&["noBackup", "noBackup"], &["noBackup"]])
    );
    assert_eq!(window_files(testbed, hosts), files);
}

fn different_values_for_a_shared_key_are_rejected_before_any_connection(
    deployer: &Deployer,
    hosts: &[&TestHost],
) {
    let listener =
        std::net::TcpListener::bind(("127.77.0.250", 2222)).expect("bind a stand-in host");
    listener.set_nonblocking(true).unwrap();
    let mut request = rotation_request(deployer.testbed, hosts);
    for deployment in 0..2 {
        request["deployments"][deployment]["hosts"] =
            json!([{"host": "127.77.0.250", "port": 2222}]);
    }
    request["deployments"][1]["env"]["VOXCORE_SECRET"] =
        json!({"secretEnv": "VOXCORE_SECRET_OTHER"});
    let mut env = generation("r6");
    env.insert("VOXCORE_SECRET_OTHER".into(), OTHER_VALUE.into());
    let rejected = run(deployer, &["deploy"], &request, &env);
    assert_eq!(rejected.code, 2, "{}", rejected.stdout);
    let result = rejected.json();
    assert_eq!(result["error"]["kind"], "sharedKeyMismatch");
    let message = result["error"]["message"].as_str().unwrap();
    for word in ["VOXCORE_SECRET", "voxcore", "voxdialler"] {
        assert!(message.contains(word), "{message}");
    }
    assert!(result["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["hosts"] == json!([])));
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("a rejected rotation connected to a host: {other:?}"),
    }
}

fn a_mongodb_rotation_across_voxbridge_and_voxdialler(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let mongo = secrets("mongo-rotated");
    let new_uri = mongo["MONGODB_URI"].clone();

    // A voxcore rotation may not change the dialler's MONGODB_URI: voxbridge
    // reads it too and is not in the window.
    let mut env = generation("r6");
    env.insert("MONGODB_URI".into(), new_uri.clone());
    let before = window_files(testbed, hosts);
    let refused = run(
        deployer,
        &["deploy"],
        &rotation_request(testbed, hosts),
        &env,
    );
    assert_eq!(refused.code, 1, "{}", refused.stdout);
    assert_eq!(
        error_kinds(&refused.json()),
        strings(&[&["notAttempted", "notAttempted"], &["sharedKeyChange"]])
    );
    assert_eq!(window_files(testbed, hosts), before);

    let mut voxbridge = voxbridge_request(testbed, hosts, "root", json!({}));
    let body = voxbridge.as_object_mut().unwrap();
    body.remove("apiVersion");
    body.remove("kind");
    let dialler = rotation_request(testbed, hosts)["deployments"][1].clone();
    let request = json!({
        "apiVersion": "hostenv/v1", "kind": "Rotation", "shared": ["MONGODB_URI"],
        "deployments": [voxbridge, dialler]
    });
    let mut env = generation("r6");
    env.extend(mongo.clone());
    let rotated = run(deployer, &["deploy"], &request, &env);
    assert_eq!(rotated.code, 0, "{}\n{}", rotated.stdout, rotated.stderr);
    let result = rotated.json();
    assert_eq!(
        statuses(&result),
        strings(&[&["deployed", "deployed", "deployed"], &["deployed"]])
    );
    assert_eq!(result["shared"][0]["identical"], true);
    assert_eq!(
        result["shared"][0]["holders"][0]["hosts"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    for host in hosts {
        assert_eq!(
            health(host, 8080, "/health")["fingerprints"]["MONGODB_URI"],
            fingerprint(&new_uri)
        );
    }
    assert_eq!(
        health(hosts[2], 8090, "/health")["fingerprints"]["MONGODB_URI"],
        fingerprint(&new_uri)
    );
}

fn secrets_stay_out_of_commands_and_audit_lines(
    testbed: &Testbed,
    hosts: &[&TestHost],
    trace: ExecTrace,
) {
    let canaries = every_canary();
    trace.assert_clean("hostenv-host\", \"lock", &canaries);
    for host in hosts {
        let logs = testbed.sh_ok(host, "cat /var/lib/hostenv/*/audit.log");
        assert!(
            logs.contains(r#""rotation":["voxcore","voxdialler"]"#),
            "{logs}"
        );
        assert_no_leak(
            &format!("the audit logs of {}", host.addr),
            &logs,
            &canaries,
        );
    }
}

fn the_dialler_going_down_after_the_fleet_switched_puts_the_fleet_back(
    deployer: &Deployer,
    hosts: &[&TestHost],
) {
    let testbed = deployer.testbed;
    // The fleet verifies slowly, so the test has time to take the dialler
    // host down after the fleet switched and before the dialler's turn.
    let request = slow_fleet(rotation_request(testbed, hosts), 8, 250);
    let before = window_files(testbed, hosts);
    let inode = |host: &TestHost| testbed.sh_ok(host, &format!("stat -c %i {FLEET_ENV}"));
    let fleet_inode = inode(hosts[0]);
    // The dialler's MONGODB_URI is the one the previous scenario rotated.
    let mut env = generation("r7");
    env.insert(
        "MONGODB_URI".into(),
        secrets("mongo-rotated")["MONGODB_URI"].clone(),
    );
    let child = deployer.spawn("deploy", &request, &env);
    let started = std::time::Instant::now();
    while inode(hosts[0]) == fleet_inode {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "the fleet never switched"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    testbed.sh_ok(
        hosts[2],
        "systemctl kill --signal=KILL testbed-sshd.service",
    );
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_no_leak("stdout", &stdout, &every_canary());
    assert_no_leak("stderr", &stderr, &every_canary());
    let result: Value = serde_json::from_str(&stdout).unwrap();
    // The dialler's host cannot be read again. Whether its switch went out
    // whole before the connection failed decides what the run may say: not
    // sent, nothing changed (`failed`, exit 1); sent, it may have run
    // (`unknown`, exit 3). Either way the fleet is back.
    let dialler = &result["deployments"][1]["hosts"][0];
    assert_eq!(dialler["readBack"], "notRead", "{stdout}");
    let expected_exit = match dialler["status"].as_str() {
        Some("failed") => 1,
        Some("unknown") => 3,
        other => panic!("the dialler is {other:?}: {stdout}"),
    };
    assert_eq!(
        output.status.code(),
        Some(expected_exit),
        "{stdout}\n{stderr}"
    );
    assert_eq!(
        statuses(&result)[0],
        strings(&[&["rolledBack", "rolledBack"]])[0]
    );
    assert_eq!(
        result["deployments"][0]["hosts"][0]["error"]["kind"],
        "rotationAborted"
    );
    assert_eq!(switch_order(&stderr), ["voxcore", "voxcore"]);

    testbed.sh_ok(
        hosts[2],
        "systemctl reset-failed testbed-sshd.service; systemctl start testbed-sshd.service",
    );
    let listening = std::time::Instant::now();
    while std::net::TcpStream::connect((hosts[2].addr.as_str(), 22)).is_err() {
        assert!(
            listening.elapsed() < std::time::Duration::from_secs(10),
            "sshd did not come back"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(window_files(testbed, hosts), before);
    assert_attached_with(hosts, "r6");
    // The dialler's staged file could not be removed while its host was
    // down; it is private to the service user, and the next run removes it.
    let staged = testbed.sh_ok(
        hosts[2],
        &format!("stat -c '%U %a' {DIALLER_ENV}.hostenv-new"),
    );
    assert_eq!(staged.trim(), "voxdialler 600");
    let mut env = generation("r6");
    env.extend(secrets("mongo-rotated"));
    let next = run(deployer, &["deploy"], &request, &env);
    assert_eq!(next.code, 0, "{}\n{}", next.stdout, next.stderr);
    assert_eq!(
        statuses(&next.json()),
        strings(&[&["unchanged", "unchanged"], &["unchanged"]])
    );
    let gone = testbed.sh(hosts[2], &format!("test -e {DIALLER_ENV}.hostenv-new"));
    assert!(
        !gone.status.success(),
        "the leftover staged file is still there"
    );
}
