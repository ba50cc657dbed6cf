//! Logins: keys, host keys, the deploy user through sudo, a bastion.

use crate::common::run_hostenv;
use crate::testbed::TestHost;
use pretty_assertions::assert_eq;
use serde_json::json;

use super::*;

pub(super) fn a_host_behind_a_bastion_with_health_through_ssh(
    deployer: &Deployer,
    hosts: &[&TestHost],
) {
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

    // sshd with TCP forwarding off (CIS-hardened images): on the host, no
    // check through its SSH session can pass, not even the one after the old
    // file is back, so the host needs a person; on the bastion, the host
    // cannot be reached at all (docs/bitbucket.md says both).
    request["verify"][0]["via"] = json!("ssh");
    request["rollbackOnFailure"] = json!(true);
    let before = file_on(testbed, target, "/opt/voxbridge/.env");
    let hardened = |host: &TestHost, on: bool| {
        let line = "AllowTcpForwarding no\n";
        testbed.reconfigure_sshd(host, |text| {
            if on {
                format!("{line}{text}")
            } else {
                text.replace(line, "")
            }
        });
    };
    hardened(target, true);
    let run = deployer.run("deploy", &request, &secrets("bastion-hardened"));
    hardened(target, false);
    let result = run.json();
    assert_eq!(run.code, 3, "{result:#}");
    assert_eq!(statuses(&result), ["rollbackFailed"], "{result:#}");
    let entry = &result["hosts"][0];
    assert_eq!(entry["error"]["kind"], "healthCheckFailed");
    assert_eq!(entry["rollback"], "restoredPrevious");
    let refused = entry["checks"][0]["lastError"].as_str().unwrap();
    assert!(refused.contains("administratively prohibited"), "{refused}");
    assert_eq!(file_on(testbed, target, "/opt/voxbridge/.env"), before);

    hardened(bastion, true);
    let result = deployer
        .run("deploy", &request, &secrets("bastion-hardened"))
        .json();
    hardened(bastion, false);
    assert_eq!(
        result["hosts"][0]["error"]["kind"], "connectFailed",
        "{result:#}"
    );
    let refused = result["hosts"][0]["error"]["message"].as_str().unwrap();
    assert!(refused.contains("administratively prohibited"), "{refused}");
    assert_eq!(file_on(testbed, target, "/opt/voxbridge/.env"), before);
}

pub(super) fn the_key_can_come_as_base64_content(deployer: &Deployer, hosts: &[&TestHost]) {
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

pub(super) fn wrong_key_and_unknown_or_changed_host_keys_are_refused(
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

pub(crate) fn the_deploy_user_works_through_sudo(deployer: &Deployer, hosts: &[&TestHost]) {
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

    // The lock rules alone: every other step goes through the lock's channel.
    let rules = sudoers_rules(deployer, &request);
    let granted: Vec<&str> = rules.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        granted,
        [
            "deploy ALL=(root) NOPASSWD: /usr/local/sbin/hostenv-host lock voxbridge default exclusive",
            "deploy ALL=(root) NOPASSWD: /usr/local/sbin/hostenv-host lock voxbridge default shared",
        ],
        "{rules}"
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
    // The same rules let it list the backups (a shared lock, a read).
    let listed = deployer.run("backups", &request, &BTreeMap::new());
    assert_eq!(listed.code, 0, "{}", listed.stdout);
    let result = listed.json();
    assert_eq!(statuses(&result), ["listed", "listed"]);
    for host in result["hosts"].as_array().unwrap() {
        let newest = &host["backups"]["kept"][0];
        assert_eq!(newest["number"], 1, "{host}");
        assert!(
            newest["writtenAt"].as_str().unwrap().ends_with('Z'),
            "{host}"
        );
        assert!(
            !newest["keys"]["changed"].as_array().unwrap().is_empty(),
            "{host}"
        );
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

/// A root login installs the host program it finds beside itself only when
/// the bytes have the digest the pipeline pinned (`HOSTENV_HOST_PROGRAM_SHA256`,
/// which the Jenkins steps take from the release they verified): a program
/// another job on the agent swapped in never reaches a host's root.
pub(super) fn a_host_program_other_than_the_pinned_one_is_never_installed(
    deployer: &Deployer,
    hosts: &[&TestHost],
) {
    use sha2::Digest;
    let testbed = deployer.testbed;
    let host = hosts[1];
    let program = std::fs::read(crate::testbed::static_host_program()).unwrap();
    let digest: String = sha2::Sha256::digest(&program)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let request = voxbridge_request(testbed, &[host], "root", json!({"allowSharedChange": true}));
    let installed = || testbed.sh(host, "sha256sum /usr/local/sbin/hostenv-host");
    testbed.sh_ok(host, "rm /usr/local/sbin/hostenv-host");
    let mut env = secrets("pinned-program");
    env.insert("HOSTENV_HOST_PROGRAM_SHA256".into(), "0".repeat(64));
    let run = deployer.run("deploy", &request, &env);
    assert_eq!(run.code, 1, "{}", run.stdout);
    let error = &run.json()["hosts"][0]["error"];
    assert_eq!(error["kind"], "hostProgramMissing", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("does not have the SHA-256 HOSTENV_HOST_PROGRAM_SHA256 pins"),
        "{error}"
    );
    assert!(!installed().status.success(), "a program was installed");
    env.insert("HOSTENV_HOST_PROGRAM_SHA256".into(), digest.to_uppercase());
    let run = deployer.run("deploy", &request, &env);
    assert_eq!(run.code, 0, "{}", run.stdout);
    let on_host = String::from_utf8_lossy(&installed().stdout).into_owned();
    assert!(on_host.starts_with(&digest), "{on_host}");
}
