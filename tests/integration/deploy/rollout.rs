//! Plans, reviewed plans, canaries and batches, drift, rollback, purging backups, the audit log.

use crate::common::assert_no_leak;
use crate::testbed::{TestHost, Testbed};
use pretty_assertions::assert_eq;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::Command;

use super::*;

pub(super) fn drift_finds_hosts_changed_by_hand(deployer: &Deployer, hosts: &[&TestHost]) {
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

pub(super) fn rollback_puts_back_a_backup_without_secrets_bound(
    deployer: &Deployer,
    hosts: &[&TestHost],
) {
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

/// `backups` lists, per host, what putting each backup back would change,
/// binding no secret and writing nothing; `rollback --to N` with an N one
/// host lacks touches no host.
pub(super) fn backups_lists_what_each_backup_would_change(
    deployer: &Deployer,
    hosts: &[&TestHost],
) {
    let testbed = deployer.testbed;
    let request = voxbridge_request(testbed, hosts, "root", json!({"allowSharedChange": true}));
    let mut debug = request.clone();
    debug["env"]["LOG_LEVEL"] = json!({"value": "debug"});
    let (one, two) = (secrets("listed-one"), secrets("listed-two"));
    assert_eq!(deployer.run("deploy", &request, &one).code, 0);
    assert_eq!(deployer.run("deploy", &request, &two).code, 0);
    assert_eq!(deployer.run("deploy", &debug, &two).code, 0);
    let before: Vec<String> = hosts
        .iter()
        .map(|h| directories_exactly(testbed, h))
        .collect();

    let run = deployer.run("backups", &request, &BTreeMap::new());
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let result = run.json();
    assert_eq!(result["action"], "backups");
    assert_eq!(statuses(&result), ["listed", "listed", "listed"]);
    assert_eq!(result["summary"]["listed"], 3);
    let every: Vec<String> = one.values().chain(two.values()).cloned().collect();
    assert_no_leak("stdout", &run.stdout, &every);
    assert_no_leak("stderr", &run.stderr, &every);
    for (index, host) in hosts.iter().enumerate() {
        let listing = &result["hosts"][index]["backups"];
        // Backup 1 is the second generation at LOG_LEVEL info: only that
        // key differs from the current file. Backup 2, the first
        // generation, differs in every secret too.
        let kept = &listing["kept"];
        assert_eq!(kept[0]["number"], 1);
        assert_eq!(
            kept[0]["keys"]["changed"],
            json!(["LOG_LEVEL"]),
            "{listing}"
        );
        assert_eq!(kept[0]["keys"]["unchanged"], 4);
        assert_eq!(
            kept[1]["keys"]["changed"],
            json!(["JWT_SECRET", "LOG_LEVEL", "MONGODB_URI", "REDIS_URL"]),
            "{listing}"
        );
        // Equal values, equal fingerprints: the two backups hold `info`.
        let level = |pointer: &str| listing.pointer(pointer).unwrap().clone();
        assert_eq!(
            level("/kept/0/fingerprints/LOG_LEVEL"),
            level("/kept/1/fingerprints/LOG_LEVEL")
        );
        assert_ne!(
            level("/kept/0/fingerprints/LOG_LEVEL"),
            level("/current/fingerprints/LOG_LEVEL")
        );
        // The host's own file times, to the second.
        let times = testbed.sh_ok(
            host,
            "cd /var/lib/hostenv/voxbridge && for f in /opt/voxbridge/.env env.1 env.2; do \
               date -u -d @$(stat -c %Y $f) +%Y-%m-%dT%H:%M:%SZ; done",
        );
        let times: Vec<&str> = times.lines().collect();
        assert_eq!(
            [
                listing["current"]["writtenAt"].as_str().unwrap(),
                kept[0]["writtenAt"].as_str().unwrap(),
                kept[1]["writtenAt"].as_str().unwrap()
            ],
            times.as_slice()
        );
    }
    // Across hosts too, within the one result.
    assert_eq!(
        result["hosts"][0]["backups"]["kept"][1]["fingerprints"]["JWT_SECRET"],
        result["hosts"][2]["backups"]["kept"][1]["fingerprints"]["JWT_SECRET"]
    );
    assert!(run.stderr.contains("backup 1   written "), "{}", run.stderr);
    assert!(
        run.stderr.contains(": changes LOG_LEVEL\n"),
        "{}",
        run.stderr
    );
    let after: Vec<String> = hosts
        .iter()
        .map(|h| directories_exactly(testbed, h))
        .collect();
    assert_eq!(after, before, "a listing writes nothing");

    // One host without backup 2: a rollback to it touches no host at all.
    testbed.sh_ok(hosts[2], "rm /var/lib/hostenv/voxbridge/env.2");
    let before: Vec<String> = hosts
        .iter()
        .map(|h| directories_exactly(testbed, h))
        .collect();
    let run = deployer.run_args(&["rollback", "--to", "2"], &request, &BTreeMap::new());
    assert_eq!(run.code, 1, "{}", run.stdout);
    let result = run.json();
    assert_eq!(statuses(&result), ["skipped", "skipped", "failed"]);
    assert_eq!(result["hosts"][2]["error"]["kind"], "noBackup");
    let skipped = result["hosts"][0]["error"]["message"].as_str().unwrap();
    assert!(
        skipped.contains("has no backup 2") && skipped.contains("hostenv backups"),
        "{skipped}"
    );
    let after: Vec<String> = hosts
        .iter()
        .map(|h| directories_exactly(testbed, h))
        .collect();
    assert_eq!(after, before, "no host was touched");
    let listed = deployer.run("backups", &request, &BTreeMap::new()).json();
    let numbers: Vec<u64> = listed["hosts"][2]["backups"]["kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["number"].as_u64().unwrap())
        .collect();
    assert!(!numbers.contains(&2) && numbers.contains(&1), "{numbers:?}");
}

/// `purgeBackupsOf` in a Deploy: after the new JWT_SECRET is verified, no
/// backup keeps an older one; backups that agree with the new value stay.
pub(super) fn a_deploy_purges_backups_holding_a_leaked_value(
    deployer: &Deployer,
    hosts: &[&TestHost],
) {
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

pub(super) fn plan_reports_what_a_deploy_then_changes_and_writes_nothing(
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

pub(super) fn a_deploy_refuses_when_the_reviewed_plan_no_longer_holds(
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

/// Every entry of the host's service and state directories, the directories
/// themselves included: type, owner, mode, size, mtime to the nanosecond and,
/// for files, a digest of the bytes.
fn directories_exactly(testbed: &Testbed, host: &TestHost) -> String {
    testbed.sh_ok(
        host,
        "for d in /opt/voxbridge /var/lib/hostenv/voxbridge; do \
           find \"$d\" -printf '%p %y %U:%G %m %s %T@\\n' | sort; \
           find \"$d\" -type f -exec sha256sum {} + | sort; \
         done",
    )
}

pub(super) fn a_failing_canary_stops_the_rollout(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let before = host_files(testbed, &hosts[1..]);
    let skipped_before = directories_exactly(testbed, hosts[1]);
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
    // A host the run could not reach at all keeps that failure, even in a
    // batch the canary's stop skips.
    testbed.sh_ok(hosts[2], "systemctl stop testbed-sshd.service");
    let junit = deployer.work.path().join("canary.junit.xml");
    let run = deployer.run_args(
        &["deploy", "--junit", junit.to_str().unwrap()],
        &request,
        &secrets("canary"),
    );
    testbed.sh_ok(hosts[2], "systemctl start testbed-sshd.service");
    assert_eq!(run.code, 1, "{}", run.stdout);
    let result = run.json();
    assert_eq!(statuses(&result), ["rolledBack", "skipped", "failed"]);
    assert_eq!(result["hosts"][1]["error"]["kind"], "notAttempted");
    assert_eq!(result["hosts"][2]["error"]["kind"], "connectFailed");
    assert!(result["hosts"][1]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("canary"));
    assert_eq!(
        host_files(testbed, &hosts[1..]),
        before,
        "skipped hosts are untouched"
    );
    // Nothing was written there at all, not even a file staged and removed:
    // a host outside the canary's batch is only locked and read until its
    // batch starts.
    assert_eq!(
        directories_exactly(testbed, hosts[1]),
        skipped_before,
        "a skipped host's service and state directories are byte- and mtime-identical"
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
        "3 2 1 voxbridge True",
        "{}",
        String::from_utf8_lossy(&parsed.stderr)
    );
}

pub(super) fn exceeding_max_failed_stops_further_batches(deployer: &Deployer, hosts: &[&TestHost]) {
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

pub(super) fn the_audit_log_records_each_attempt_without_values(
    deployer: &Deployer,
    hosts: &[&TestHost],
) {
    let testbed = deployer.testbed;
    let mut request = voxbridge_request(
        testbed,
        &hosts[..1],
        "root",
        json!({"allowSharedChange": true}),
    );
    request["audit"] = json!({"buildUrl": "https://ci.example/job/deploy/42/", "by": "jenkins"});
    request["environment"] = json!("production");
    let log_lines = || {
        testbed
            .sh_ok(
                hosts[0],
                "cat /var/lib/hostenv/voxbridge/audit.log 2>/dev/null || true",
            )
            .lines()
            .count()
    };
    let before = log_lines();
    // A failing attempt first: the health check fails and the file is put back.
    let mut failing = request.clone();
    failing["hosts"][0] = json!({"host": hosts[0].addr, "env": {"HEALTH_MODE": {"value": "fail"}}});
    failing["verify"] = quick_verify(800);
    assert_eq!(
        deployer
            .run("deploy", &failing, &secrets("audited-failing"))
            .code,
        1
    );
    settle(testbed, &hosts[..1]);
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
    assert_eq!(lines.len(), before + 2, "one line per attempt");
    let failed = &lines[lines.len() - 2];
    assert_eq!(failed["result"], "rolledBack");
    assert_eq!(failed["error"], "healthCheckFailed");
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
    let canaries: Vec<String> = secrets.values().cloned().collect();
    assert_no_leak("the audit log", &log, &canaries);
}

/// Three one-host batches whose health checks take about 16 s each: the
/// third host waits some 32 s for its turn, past the holder's 30 s without a
/// word. Its lock is kept alive all that time (the run beats every waiting
/// host while a batch works), so every host deploys.
pub(super) fn slow_batches_keep_the_waiting_hosts_locks(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let request = voxbridge_request(
        testbed,
        hosts,
        "root",
        json!({
            "allowSharedChange": true,
            "rollout": {"batch": 1, "parallel": 1},
            "verify": [{"url": "http://{host}:8080/health", "intervalMs": 500, "consecutive": 33, "deadlineMs": 30000}]
        }),
    );
    let values = secrets("slow-batches");
    let started = std::time::Instant::now();
    let run = deployer.run("deploy", &request, &values);
    let took = started.elapsed();
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(statuses(&run.json()), ["deployed", "deployed", "deployed"]);
    // The scenario means what it says only if the last host waited past the holder's limit.
    assert!(took > std::time::Duration::from_secs(40), "{took:?}");
    for host in hosts {
        assert_eq!(
            file_on(testbed, host, "/opt/voxbridge/.env").1,
            expected_voxbridge_file(&values)
        );
    }
}
