//! One host or three, end to end: the first deploy, a deploy that changes nothing, what refuses a host before anything is written.

use crate::common::repo_root;
use crate::testbed::{TestHost, Testbed};
use pretty_assertions::assert_eq;
use serde_json::json;

use super::*;

/// A run killed between switch and restart leaves the new file with the old
/// process; the next run sees the unit started before the file and restarts it.
pub(super) fn a_switched_file_without_restart_converges(deployer: &Deployer, hosts: &[&TestHost]) {
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

/// A systemctl older than `--timestamp=` (v248) and `--value` (v230), as on
/// RHEL 7 or 8, still tells when a unit started (its monotonic start, which
/// every version prints, and the second of its wall-clock one): a deploy of
/// the file a host holds restarts nothing, and a file written after its
/// unit started still gets the unit restarted.
pub(super) fn an_old_systemctl_still_tells_when_a_unit_started(
    deployer: &Deployer,
    hosts: &[&TestHost],
) {
    let testbed = deployer.testbed;
    let host = hosts[0];
    // What the host holds after the first deploy, which the scenarios after this one expect.
    let current = secrets("one");
    let request = voxbridge_request(testbed, &[host], "root", json!({"allowSharedChange": true}));
    let first = deployer.run("deploy", &request, &current);
    assert_eq!(first.code, 0, "{}", first.stdout);
    // The file is older than the unit's start, by whole seconds.
    testbed.sh_ok(host, "touch -d '-10 seconds' /opt/voxbridge/.env");
    let main_pid = "systemctl show -p ExecMainPID voxbridge.service";
    let pid_before = testbed.sh_ok(host, main_pid);
    // This host's systemctl refuses both options, as an old one does.
    testbed.sh_ok(
        host,
        r#"cp /usr/bin/systemctl /run/systemctl.real
cat > /run/systemctl.old <<'OLD'
#!/bin/sh
for word in "$@"; do
  case "$word" in --timestamp*|--value) echo "systemctl: unrecognized option '$word'" >&2; exit 1 ;; esac
done
exec /run/systemctl.real "$@"
OLD
chmod 755 /run/systemctl.old
mount --bind /run/systemctl.old /usr/bin/systemctl"#,
    );
    let refused = testbed.sh(
        host,
        "systemctl show --value -p ExecMainPID voxbridge.service",
    );
    let unchanged = deployer.run("deploy", &request, &current);
    let pid_between = testbed.sh_ok(host, main_pid);
    testbed.sh_ok(host, "sleep 1.1; touch /opt/voxbridge/.env");
    let restarted = deployer.run("deploy", &request, &current);
    testbed.sh_ok(host, "umount /usr/bin/systemctl");

    assert!(!refused.status.success(), "the stand-in refuses `--value`");
    assert_eq!(unchanged.code, 0, "{}", unchanged.stdout);
    assert_eq!(statuses(&unchanged.json()), ["unchanged"]);
    assert_eq!(
        unchanged.json()["hosts"][0]["units"],
        json!([{"unit": "voxbridge.service", "restarted": false}])
    );
    assert_eq!(pid_before, pid_between, "no unit restarted");
    assert_eq!(restarted.code, 0, "{}", restarted.stdout);
    assert_eq!(
        restarted.json()["hosts"][0]["units"],
        json!([{"unit": "voxbridge.service", "restarted": true}])
    );
    assert_ne!(pid_between, testbed.sh_ok(host, main_pid));
}

pub(super) fn shared_key_change_is_refused(deployer: &Deployer, hosts: &[&TestHost]) {
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

/// The read step learns each host's systemd version; a host older than
/// `target.systemdMin` fails before its file is switched in, keeps its file,
/// and keeps nothing of the new one.
pub(super) fn the_hosts_systemd_version_is_known_before_anything_is_written(
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

pub(crate) fn first_deploy_installs_and_restarts(deployer: &Deployer, hosts: &[&TestHost]) {
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

pub(crate) fn same_request_changes_nothing(deployer: &Deployer, hosts: &[&TestHost]) {
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
            "ls /var/lib/hostenv/voxbridge | grep '^env\\.' || true",
        );
        assert_eq!(
            backups.trim(),
            "",
            "the first deploy had no previous file to keep"
        );
        assert_nothing_staged(testbed, host);
    }
}

/// A fourth service, `voxnotes`, as a platform team adds one: on `host` its
/// user, directory and unit (the testbed's stand-in service on port 8095); in
/// `work` a copy of the library's catalog with its entry, and its contract.
/// The catalog file and a request for it (`NOTES_TOKEN` from the environment).
pub(crate) fn a_fourth_service(
    testbed: &Testbed,
    host: &TestHost,
    work: &std::path::Path,
) -> (std::path::PathBuf, Value) {
    testbed.sh_ok(
        host,
        "grep -q '^voxnotes:' /etc/passwd || { \
           echo 'voxnotes:x:61004:61004::/opt/voxnotes:/usr/sbin/nologin' >> /etc/passwd; \
           echo 'voxnotes:x:61004:' >> /etc/group; }; \
         mkdir -p /opt/voxnotes && chown voxnotes:voxnotes /opt/voxnotes; \
         sed -e 's/voxbridge/voxnotes/g' -e 's/TESTBED_PORT=8080/TESTBED_PORT=8095/' \
             -e 's/TESTBED_REQUIRED=[^ ]*/TESTBED_REQUIRED=NOTES_TOKEN/' \
             /etc/systemd/system/voxbridge.service > /etc/systemd/system/voxnotes.service; \
         systemctl daemon-reload",
    );
    let mut catalog: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("resources/io/hostenv/catalog.json")).unwrap(),
    )
    .unwrap();
    catalog["services"]["voxnotes"] = json!({
        "description": "Notes: a fourth service, added as data",
        "target": {"path": "/opt/voxnotes/.env", "owner": "voxnotes", "mode": "0600",
                   "stateDir": "/var/lib/hostenv/voxnotes"},
        "restart": {"units": ["voxnotes.service"], "timeoutMs": 20000},
        "verify": [{"url": "http://{host}:8095/health", "intervalMs": 100, "deadlineMs": 8000, "consecutive": 2}]
    });
    let catalog_file = work.join("team-catalog.json");
    std::fs::write(&catalog_file, catalog.to_string()).unwrap();
    std::fs::write(
        work.join("voxnotes.env.example"),
        "NOTES_TOKEN=\nLOG_LEVEL=info\n",
    )
    .unwrap();
    let request = json!({
        "apiVersion": "hostenv/v1", "kind": "Deploy", "service": "voxnotes",
        "contract": "voxnotes.env.example", "hosts": [host.addr],
        "env": {"NOTES_TOKEN": {"secretEnv": "NOTES_TOKEN"}, "LOG_LEVEL": {"value": "info"}},
        "ssh": testbed.ssh_settings("root")
    });
    (catalog_file, request)
}

/// Services are data: a fourth service, added to a copy of the catalog (as a
/// team adds one to its copy of the library), deploys with the same binary.
/// Without that catalog the request lacks the service's settings; a broken
/// catalog is refused naming its field before any host is contacted.
pub(super) fn a_service_added_to_the_catalog_deploys_with_the_same_binary(
    deployer: &Deployer,
    hosts: &[&TestHost],
) {
    let testbed = deployer.testbed;
    let host = hosts[1];
    let (catalog_file, request) = a_fourth_service(testbed, host, deployer.work.path());
    let mut catalog: Value =
        serde_json::from_str(&std::fs::read_to_string(&catalog_file).unwrap()).unwrap();
    let catalog_arg = catalog_file.to_str().unwrap();
    let token = BTreeMap::from([(
        "NOTES_TOKEN".to_string(),
        "CANARY-notes-token-7c1e".to_string(),
    )]);

    // The built-in catalog does not know it: the request would need target, restart and verify.
    let run = deployer.run("check", &request, &token);
    assert_eq!(run.code, 2, "{}", run.stdout);
    assert_eq!(run.json()["error"]["kind"], "serviceDefaultsMissing");

    let run = deployer.run_args(&["deploy", "--catalog", catalog_arg], &request, &token);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(statuses(&run.json()), ["deployed"]);
    assert_eq!(
        file_on(testbed, host, "/opt/voxnotes/.env"),
        (
            "voxnotes:voxnotes 600".to_string(),
            "# Managed by hostenv: edits on this host are overwritten by the next deploy.\n\
             NOTES_TOKEN=\"CANARY-notes-token-7c1e\"\nLOG_LEVEL=\"info\"\n"
                .to_string()
        )
    );
    assert_eq!(
        health(host, 8095, "/health")["fingerprints"]["NOTES_TOKEN"],
        fingerprint("CANARY-notes-token-7c1e")
    );
    // The printed sudo rules and host configuration come from the same catalog.
    let rules = run_hostenv(
        &["sudoers", "--catalog", catalog_arg],
        deployer.work.path(),
        &BTreeMap::new(),
        Some(request.to_string().as_bytes()),
    );
    assert_eq!(rules.code, 0, "{}", rules.stdout);
    assert!(rules.stdout.contains("voxnotes"), "{}", rules.stdout);
    let config = run_hostenv(
        &["host-install", "--print", "--catalog", catalog_arg],
        deployer.work.path(),
        &BTreeMap::new(),
        Some(request.to_string().as_bytes()),
    );
    assert!(
        config.stdout.contains("path /opt/voxnotes/.env")
            && config
                .stdout
                .contains("state-dir /var/lib/hostenv/voxnotes"),
        "{}",
        config.stdout
    );

    // A catalog whose service would write a relative path: refused, naming
    // the field, before any connection.
    catalog["services"]["voxnotes"]["target"]["path"] = json!("opt/voxnotes/.env");
    std::fs::write(&catalog_file, catalog.to_string()).unwrap();
    let before = file_on(testbed, host, "/opt/voxnotes/.env");
    let run = deployer.run_args(&["deploy", "--catalog", catalog_arg], &request, &token);
    assert_eq!(run.code, 2, "{}", run.stdout);
    let error = &run.json()["error"];
    assert_eq!(error["kind"], "catalogInvalid");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("team-catalog.json") && message.contains("/services/voxnotes/target/path"),
        "{message}"
    );
    assert!(!run.stderr.contains("connect"), "{}", run.stderr);
    assert_eq!(file_on(testbed, host, "/opt/voxnotes/.env"), before);
    testbed.sh_ok(
        host,
        "systemctl stop voxnotes.service; rm -f /etc/systemd/system/voxnotes.service; systemctl daemon-reload",
    );
}
