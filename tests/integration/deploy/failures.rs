//! Restarts and health checks that fail, and what is put back.

use crate::testbed::TestHost;
use pretty_assertions::assert_eq;
use serde_json::json;

use super::*;

pub(super) fn without_rollback_a_failed_host_is_left_unhealthy(
    deployer: &Deployer,
    hosts: &[&TestHost],
) {
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

pub(super) fn a_host_without_a_previous_file_gets_the_new_one_removed(
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

pub(super) fn a_start_limit_hit_is_named_and_the_rollback_still_restarts(
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

/// The service needs REDIS_URL; a contract that dropped it yields a file the
/// service refuses at start (Type=notify), so the restart fails and the
/// previous file goes back.
pub(super) fn a_missing_variable_fails_the_restart_and_rolls_back(
    deployer: &Deployer,
    hosts: &[&TestHost],
) {
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

pub(super) fn one_host_down_fails_alone(deployer: &Deployer, hosts: &[&TestHost]) {
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

pub(crate) fn failing_health_check_rolls_back(deployer: &Deployer, hosts: &[&TestHost]) {
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
