//! Host locks: runs on the same hosts take turns, a killed or silent run loses its lock.

use crate::testbed::{TestHost, Testbed};
use pretty_assertions::assert_eq;
use serde_json::{json, Value};
use std::process::Command;

use super::*;

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
pub(super) fn overlapping_runs_started_together_take_turns(
    deployer: &Deployer,
    hosts: &[&TestHost],
) {
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

pub(super) fn two_runs_on_the_same_hosts_never_interleave(
    deployer: &Deployer,
    hosts: &[&TestHost],
) {
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

pub(super) fn a_killed_run_leaves_no_lock_behind(deployer: &Deployer, hosts: &[&TestHost]) {
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

pub(super) fn a_silently_dropped_run_loses_its_lock(deployer: &Deployer, hosts: &[&TestHost]) {
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
