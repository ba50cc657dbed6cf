//! Load: one deploy to 50 testbed hosts of which 5 fail, each in its own way.
//! The run ends within its deadline, reports every host exactly, and leaves the
//! 45 healthy hosts deployed. (Speed is measured by scripts/bench.sh, not here.)

use std::process::Command;

use pretty_assertions::assert_eq;
use serde_json::json;

use crate::deploy::{fingerprint, health, secrets, voxbridge_request, Deployer};
use crate::testbed::{TestHost, Testbed};

const HOSTS: usize = 50;
const DEADLINE_MS: u64 = 120_000;

#[test]
fn fifty_hosts_with_five_failing_in_assorted_ways() {
    let testbed = Testbed::start(HOSTS);
    let deployer = Deployer::new(&testbed, "load");
    let hosts: Vec<&TestHost> = testbed.hosts.iter().collect();

    // The five, and how each fails.
    let (silent, refusing, unhealthy, full, hanging) = (7, 14, 21, 28, 35);
    let silent_sshd = testbed.sshd_pid(hosts[silent]).to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &silent_sshd])
        .status()
        .unwrap()
        .success());
    testbed.sh_ok(hosts[refusing], "systemctl stop testbed-sshd.service");
    testbed.sh_ok(
        hosts[full],
        "mount -o remount,size=1m /opt && (dd if=/dev/zero of=/opt/filler bs=16k 2>/dev/null; true)",
    );

    let mut request = voxbridge_request(
        &testbed,
        &hosts,
        "root",
        json!({
            "rollout": {"parallel": 10, "maxFailed": "10%"},
            "deadlineMs": DEADLINE_MS,
            "verify": [{"url": "http://{host}:8080/health", "timeoutMs": 500, "intervalMs": 200, "deadlineMs": 3000, "consecutive": 1}]
        }),
    );
    request["ssh"]["connectTimeoutMs"] = json!(3000);
    for (index, mode) in [(unhealthy, "fail"), (hanging, "hang")] {
        request["hosts"][index] =
            json!({"host": hosts[index].addr, "env": {"HEALTH_MODE": {"value": mode}}});
    }
    let values = secrets("load");
    let run = deployer.run("deploy", &request, &values);

    assert!(Command::new("kill")
        .args(["-CONT", &silent_sshd])
        .status()
        .unwrap()
        .success());
    testbed.sh_ok(hosts[refusing], "systemctl start testbed-sshd.service");
    testbed.sh_ok(hosts[full], "rm -f /opt/filler");

    assert_eq!(run.code, 1, "{}", run.stdout);
    let result = run.json();
    let reported: Vec<(String, String)> = result["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["status"].as_str().unwrap().to_string(),
                h["error"]["kind"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let mut expected: Vec<(String, String)> = vec![("deployed".into(), String::new()); HOSTS];
    for (index, status, kind) in [
        (silent, "failed", "connectFailed"),
        (refusing, "failed", "connectFailed"),
        (unhealthy, "rolledBack", "healthCheckFailed"),
        (full, "failed", "remoteCommandFailed"),
        (hanging, "rolledBack", "healthCheckFailed"),
    ] {
        expected[index] = (status.into(), kind.into());
    }
    assert_eq!(reported, expected);
    let names: Vec<&str> = result["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["host"].as_str().unwrap())
        .collect();
    let addresses: Vec<&str> = hosts.iter().map(|h| h.addr.as_str()).collect();
    assert_eq!(names, addresses, "every host, in request order");
    assert_eq!(
        (
            &result["summary"]["hosts"],
            &result["summary"]["deployed"],
            &result["summary"]["failed"],
            &result["summary"]["rolledBack"]
        ),
        (&json!(50), &json!(45), &json!(3), &json!(2))
    );
    assert!(result["durationMs"].as_u64().unwrap() < DEADLINE_MS);
    let error = result["error"]["message"].as_str().unwrap();
    assert!(error.starts_with("5 of 50 hosts failed"), "{error}");

    // The 45 serve the new values; the two rolled back have no file (it was their first).
    for (index, host) in hosts.iter().enumerate() {
        if expected[index].0 == "deployed" {
            assert_eq!(
                health(host, 8080, "/health")["fingerprints"]["JWT_SECRET"],
                fingerprint(&values["JWT_SECRET"]),
                "{}",
                host.addr
            );
        } else {
            let file = testbed.sh(host, "test -e /opt/voxbridge/.env");
            assert!(!file.status.success(), "{} has a file", host.addr);
        }
    }
}
