//! The host side tried as an attacker would (SECURITY.md): the deploy user
//! holding exactly the rules `hostenv sudoers` prints, the service user who
//! owns `/opt/<service>`, and any other local user. Each attack runs on real
//! testbed hosts against the real host program, sudo and systemd; a root-only
//! canary file (standing in for `/etc/shadow`) and a FIFO (standing in for a
//! device) must come out untouched.

use std::collections::BTreeMap;

use pretty_assertions::assert_eq;
use serde_json::{json, Value};

use crate::deploy::{
    expected_voxbridge_file, file_on, secrets, settle, statuses, sudoers_rules, voxbridge_request,
    Deployer,
};
use crate::testbed::{TestHost, Testbed};

mod channel;

const PROGRAM: &str = "/usr/local/sbin/hostenv-host";
const CANARY: &str = "/etc/hostenv-canary";
const CANARY_TEXT: &str = "ROOT-ONLY=canary standing in for /etc/shadow\n";
const FIFO: &str = "/etc/hostenv-canary.fifo";
const FIFO_SEEN: &str = "/var/lib/fifo-seen";
/// The lock of `/opt/voxbridge/.env`, whatever service or environment takes it.
const LOCK: &str = "opt%voxbridge%.env.lock";

#[test]
fn the_host_side_cannot_be_turned_against_the_host() {
    let testbed = Testbed::start(3);
    let deployer = Deployer::new(&testbed, "privilege");
    crate::rotation::write_contracts(deployer.work.path());
    let hosts: Vec<&TestHost> = testbed.hosts.iter().collect();
    for host in &hosts {
        plant_canaries(&testbed, host);
    }
    channel::install_driver(&testbed, &hosts);

    a_deploy_user_is_told_to_install_the_host_program(&deployer, &hosts);
    settle(&testbed, &hosts);
    host_install_puts_program_and_configuration_in_place(&deployer, &hosts);
    settle(&testbed, &hosts);
    every_split_of_every_printed_rule_is_refused_or_exact(&deployer, &hosts);
    settle(&testbed, &hosts);
    a_symlinked_or_linked_target_is_refused_without_reading_it(&deployer, &hosts);
    settle(&testbed, &hosts);
    a_service_user_swapping_links_never_reaches_a_root_file(&deployer, &hosts);
    settle(&testbed, &hosts);
    the_lock_cannot_be_planted_by_another_user(&deployer, &hosts);
    settle(&testbed, &hosts);
    directories_others_can_write_are_refused(&deployer, &hosts);
    settle(&testbed, &hosts);
    std::thread::scope(|scope| {
        // A minute's wait, while the rest runs.
        let beat = scope.spawn(|| channel::a_holder_beating_past_its_deadline(&testbed, hosts[2]));
        channel::the_channel_ends_at_the_first_byte_that_does_not_fit(&deployer, &hosts);
        channel::a_value_that_spells_requests_stays_data(&deployer, &hosts);
        settle(&testbed, &hosts);
        channel::a_waiting_holder_is_bounded(&deployer, &hosts);
        channel::channel_steps_stay_within_roots_configuration(&deployer, &hosts);
        channel::one_lock_per_target_file(&deployer, &hosts);
        settle(&testbed, &hosts);
        channel::the_audit_log_is_bounded(&deployer, &hosts);
        channel::switch_installs_only_what_stage_wrote(&deployer, &hosts);
        channel::no_holder_outlives_its_deadline(beat.join().unwrap());
    });
    settle(&testbed, &hosts);
    host_keys_fail_closed(&deployer, &hosts);

    for host in &hosts {
        assert_canaries_untouched(&testbed, host);
    }
}

/// A root-only file and a FIFO whose reader records anything written to it.
fn plant_canaries(testbed: &Testbed, host: &TestHost) {
    testbed.put(host, CANARY, CANARY_TEXT);
    testbed.sh_ok(
        host,
        &format!(
            "chmod 600 {CANARY}; mkfifo -m 600 {FIFO}; \
             (while :; do cat {FIFO} >> {FIFO_SEEN}; done) >/dev/null 2>&1 </dev/null &"
        ),
    );
}

fn assert_canaries_untouched(testbed: &Testbed, host: &TestHost) {
    let meta = testbed.sh_ok(host, &format!("stat -c '%u:%g %a' {CANARY}; cat {CANARY}"));
    assert_eq!(meta, format!("0:0 600\n{CANARY_TEXT}"), "{}", host.addr);
    let seen = testbed.sh_ok(host, &format!("cat {FIFO_SEEN} 2>/dev/null || true"));
    assert_eq!(seen, "", "something wrote to the FIFO on {}", host.addr);
}

/// Runs `script` on the host as `user` (any login shell is replaced by sh).
fn as_user(testbed: &Testbed, host: &TestHost, user: &str, script: &str) -> std::process::Output {
    testbed.sh(
        host,
        &format!("su -s /bin/sh {user} -c {}", shell_quote(script)),
    )
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

fn first_error(result: &Value) -> (String, String) {
    let error = &result["hosts"][0]["error"];
    (
        error["kind"].as_str().unwrap_or_default().to_string(),
        error["message"].as_str().unwrap_or_default().to_string(),
    )
}

fn deploy_user_request(deployer: &Deployer, hosts: &[&TestHost]) -> Value {
    voxbridge_request(
        deployer.testbed,
        hosts,
        "deploy",
        json!({"allowSharedChange": true, "environment": "staging"}),
    )
}

fn a_deploy_user_is_told_to_install_the_host_program(deployer: &Deployer, hosts: &[&TestHost]) {
    let request = deploy_user_request(deployer, &hosts[..1]);
    let run = deployer.run("deploy", &request, &secrets("p1"));
    assert_eq!(run.code, 1, "{}", run.stdout);
    let (kind, message) = first_error(&run.json());
    assert_eq!(kind, "hostProgramMissing");
    assert!(
        message.contains(PROGRAM) && message.contains("hostenv host-install"),
        "{message}"
    );
    // Nothing was written: there is no file, no lock directory.
    let left = deployer.testbed.sh_ok(
        hosts[0],
        "ls -A /opt/voxbridge /run | grep -c hostenv || true",
    );
    assert_eq!(left.trim(), "0");
}

fn host_install_puts_program_and_configuration_in_place(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    // The same request, as root: `host-install` reads the hosts and settings from it.
    let mut as_root = deploy_user_request(deployer, hosts);
    as_root["ssh"]["user"] = json!("root");
    let run = deployer.run("host-install", &as_root, &BTreeMap::new());
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(statuses(&run.json()), ["deployed", "deployed", "deployed"]);
    for host in hosts {
        let installed = testbed.sh_ok(
            host,
            &format!("stat -c '%U %a' {PROGRAM} /etc/hostenv/voxbridge.conf"),
        );
        assert_eq!(installed, "root 755\nroot 644\n");
    }
    let config = testbed.sh_ok(hosts[0], "cat /etc/hostenv/voxbridge.conf");
    let printed = deployer.run_args(&["host-install", "--print"], &as_root, &BTreeMap::new());
    assert_eq!(printed.code, 0);
    assert_eq!(
        printed.stdout,
        format!("# /etc/hostenv/voxbridge.conf\n{config}")
    );
    // Again: nothing to do.
    let again = deployer.run("host-install", &as_root, &BTreeMap::new());
    assert_eq!(
        statuses(&again.json()),
        ["unchanged", "unchanged", "unchanged"]
    );

    // The deploy user can now describe, and with the printed rules deploy.
    let request = deploy_user_request(deployer, hosts);
    let rules = sudoers_rules(deployer, &request);
    assert!(!rules.contains('*'), "{rules}");
    assert!(!rules.contains("/bin/sh"), "{rules}");
    for host in hosts {
        testbed.grant_sudo(host, &rules);
    }
    let run = deployer.run("deploy", &request, &secrets("p2"));
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    for host in hosts {
        assert_eq!(
            file_on(testbed, host, "/opt/voxbridge/.env"),
            (
                "voxbridge:voxbridge 600".to_string(),
                expected_voxbridge_file(&secrets("p2"))
            )
        );
    }
    // The lock lives in root's own directory, named after the target file.
    let lock = testbed.sh_ok(
        hosts[0],
        &format!("stat -c '%U %a' /run/hostenv /run/hostenv/{LOCK}"),
    );
    assert_eq!(lock, "root 700\nroot 600\n");
}

/// Every way of splitting each printed rule's text into arguments, with an
/// argument added or emptied, run as the deploy user: sudo refuses it, or the
/// host program refuses its arguments, unless it is the rule's own split. The
/// rules name the lock step alone; the steps a deploy user could once run on
/// their own (and every payload in their place) are refused by sudo.
fn every_split_of_every_printed_rule_is_refused_or_exact(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let host = hosts[0];
    let mut rules = sudoers_rules(deployer, &deploy_user_request(deployer, &hosts[..1]));
    // A template whose instances are discovered: the same two lock rules, no pattern.
    let voxcore = json!({
        "apiVersion": "hostenv/v1", "kind": "Deploy", "service": "voxcore",
        "contract": "fleet.env.example", "hosts": [host.addr], "environment": "staging",
        "env": {}, "ssh": testbed.ssh_settings("deploy")
    });
    let voxcore_rules = sudoers_rules(deployer, &voxcore);
    rules.push_str(&voxcore_rules);
    let granted: Vec<&str> = rules.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        granted,
        [
            "deploy ALL=(root) NOPASSWD: /usr/local/sbin/hostenv-host lock voxbridge staging exclusive",
            "deploy ALL=(root) NOPASSWD: /usr/local/sbin/hostenv-host lock voxbridge staging shared",
            "deploy ALL=(root) NOPASSWD: /usr/local/sbin/hostenv-host lock voxcore staging exclusive",
            "deploy ALL=(root) NOPASSWD: /usr/local/sbin/hostenv-host lock voxcore staging shared",
        ],
        "{rules}"
    );
    testbed.grant_sudo(host, &rules);
    // The voxcore steps need its configuration; it is there, as an admin would install it.
    let mut voxcore_root = voxcore.clone();
    voxcore_root["ssh"]["user"] = json!("root");
    assert_eq!(
        deployer
            .run("host-install", &voxcore_root, &BTreeMap::new())
            .code,
        0
    );

    let mut attempts: Vec<Vec<String>> = Vec::new();
    let mut exact: Vec<Vec<String>> = Vec::new();
    for line in &granted {
        let command = line.trim_start_matches("deploy ALL=(root) NOPASSWD: ");
        let (program, args) = command.split_once(' ').unwrap();
        assert_eq!(program, PROGRAM, "{line}");
        let words: Vec<&str> = args.split(' ').collect();
        exact.push(words.iter().map(|w| w.to_string()).collect());
        for split in splits(&words) {
            attempts.push(split.clone());
            let mut longer = split.clone();
            longer.push("x".into());
            attempts.push(longer);
            let mut emptied = split;
            emptied.push(String::new());
            attempts.push(emptied);
        }
    }
    // What earlier rules granted on its own, and shell and path payloads in
    // its place: no rule names them now.
    for direct in [
        "read voxbridge",
        "stage voxbridge",
        "switch voxbridge",
        "restore voxbridge 0",
        "audit voxbridge",
        "restart voxcore voxcore@sock9.service",
        "reset-failed voxcore voxcore@sock9.service",
        "restart voxcore voxcore@$(id>/tmp/pwned).service",
        "restart voxcore voxcore@x.service;id",
        "restart voxcore voxcore@../../etc/shadow.service",
        "restart voxcore sshd.service",
        "lock voxbridge production exclusive",
        "configure voxbridge",
    ] {
        attempts.push(direct.split(' ').map(str::to_string).collect());
    }
    let mut script = String::from("cd /tmp; ");
    for attempt in &attempts {
        if exact.contains(attempt) {
            continue;
        }
        let argv: Vec<String> = attempt.iter().map(|a| shell_quote(a)).collect();
        script.push_str(&format!(
            "sudo -n {PROGRAM} {} </dev/null >/dev/null 2>>/tmp/refusals; echo $? >> /tmp/codes; ",
            argv.join(" ")
        ));
    }
    let output = as_user(testbed, host, "deploy", &script);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let codes = testbed.sh_ok(host, "cat /tmp/codes; rm -f /tmp/codes");
    let refusals = testbed.sh_ok(host, "cat /tmp/refusals; rm -f /tmp/refusals");
    let codes: Vec<&str> = codes.lines().collect();
    let tried = attempts.iter().filter(|a| !exact.contains(a)).count();
    assert_eq!(codes.len(), tried);
    assert!(tried > 100, "only {tried} splits");
    // sudo says no (exit 1, "sudo: a password is required") or the program
    // refuses its arguments (exit 2, "hostenv-host: ...").
    assert!(
        codes.iter().all(|c| *c == "1" || *c == "2"),
        "{codes:?}\n{refusals}"
    );
    for line in refusals.lines() {
        assert!(
            line.starts_with("sudo: ") || line.starts_with("hostenv-host: "),
            "{line}"
        );
    }
    assert!(
        refusals.contains("hostenv-host: "),
        "no split reached the program"
    );
    let pwned = testbed.sh(host, "test -e /tmp/pwned");
    assert!(!pwned.status.success(), "a payload ran");
    // The attacks of the old rules: a shell is not granted at all.
    for attack in [
        "sudo -n /bin/sh -c id",
        "sudo -n /bin/sh -c 'systemctl reset-failed -- \"$1\" 2>/dev/null || true hostenv-reset-failed voxcore@$(id>/tmp/pwned).service'",
    ] {
        let output = as_user(testbed, host, "deploy", attack);
        assert!(!output.status.success(), "{attack}");
    }
    assert!(!testbed.sh(host, "test -e /tmp/pwned").status.success());
}

/// Every split of `words` into arguments: each gap is a boundary or a space inside one.
fn splits(words: &[&str]) -> Vec<Vec<String>> {
    let gaps = words.len().saturating_sub(1);
    (0..1u32 << gaps)
        .map(|mask| {
            let mut out = vec![words[0].to_string()];
            for (i, word) in words.iter().enumerate().skip(1) {
                if mask & (1 << (i - 1)) != 0 {
                    let last = out.last_mut().unwrap();
                    last.push(' ');
                    last.push_str(word);
                } else {
                    out.push(word.to_string());
                }
            }
            out
        })
        .collect()
}

fn a_symlinked_or_linked_target_is_refused_without_reading_it(
    deployer: &Deployer,
    hosts: &[&TestHost],
) {
    let testbed = deployer.testbed;
    let host = hosts[0];
    let request = deploy_user_request(deployer, &hosts[..1]);
    let before = file_on(testbed, host, "/opt/voxbridge/.env").1;
    for (plant, says) in [
        (
            format!("ln -sfn {CANARY} /opt/voxbridge/.env"),
            "symbolic link",
        ),
        (
            format!("ln -sfn {FIFO} /opt/voxbridge/.env"),
            "symbolic link",
        ),
        (
            "rm -f /opt/voxbridge/.env; mkfifo /opt/voxbridge/.env".to_string(),
            "not a regular file",
        ),
    ] {
        testbed.sh_ok(
            host,
            "cp -p /opt/voxbridge/.env /var/lib/saved-env 2>/dev/null || true",
        );
        as_user(testbed, host, "voxbridge", &plant);
        for action in ["plan", "backups", "deploy"] {
            let run = deployer.run(action, &request, &secrets("p3"));
            assert_eq!(run.code, 1, "{action} {plant}: {}", run.stdout);
            let (kind, message) = first_error(&run.json());
            assert_eq!(kind, "remoteCommandFailed", "{action} {plant}");
            assert!(
                message.contains("/opt/voxbridge/.env") && message.contains(says),
                "{message}"
            );
            assert!(
                !run.stdout.contains("ROOT-ONLY"),
                "the root file reached the result"
            );
            assert!(!run.stderr.contains("ROOT-ONLY"));
        }
        testbed.sh_ok(
            host,
            "rm -f /opt/voxbridge/.env; cp -p /var/lib/saved-env /opt/voxbridge/.env",
        );
    }
    // A hard link to a root file the service user could have made (same filesystem).
    testbed.sh_ok(
        host,
        "echo 'ROOT-ONLY=linked' > /opt/root-file; chmod 600 /opt/root-file",
    );
    testbed.sh_ok(
        host,
        "mv /opt/voxbridge/.env /var/lib/saved-env; ln /opt/root-file /opt/voxbridge/.env",
    );
    let run = deployer.run("plan", &request, &secrets("p3"));
    let (kind, message) = first_error(&run.json());
    assert_eq!(kind, "remoteCommandFailed");
    assert!(message.contains("hard links"), "{message}");
    assert!(!run.stdout.contains("ROOT-ONLY"));
    testbed.sh_ok(
        host,
        "rm -f /opt/voxbridge/.env /opt/root-file; mv /var/lib/saved-env /opt/voxbridge/.env",
    );
    assert_eq!(file_on(testbed, host, "/opt/voxbridge/.env").1, before);
}

/// The service user loops planting symlinks (to the canary, to the FIFO, to
/// a device) at the staged and restore names, and then at the target too,
/// while deploys, rollbacks and a rotation run; nothing root-owned changes,
/// nothing is written through.
fn a_service_user_swapping_links_never_reaches_a_root_file(
    deployer: &Deployer,
    hosts: &[&TestHost],
) {
    let testbed = deployer.testbed;
    let request = deploy_user_request(deployer, hosts);
    let rotation = crate::rotation::rotation_request(testbed, hosts);
    // The step that failed, per run, or "ok".
    let mut outcomes: Vec<String> = Vec::new();
    for names in [
        ".env.hostenv-new .env.hostenv-restore",
        ".env.hostenv-new .env.hostenv-restore .env",
    ] {
        start_swapping(testbed, hosts, names);
        for round in 0..4 {
            let generation = format!("swap{round}");
            let runs = [
                deployer.run("deploy", &request, &secrets(&generation)),
                deployer.run("rollback", &request, &BTreeMap::new()),
                deployer.run(
                    "deploy",
                    &rotation,
                    &crate::rotation::contained_generation(&generation),
                ),
            ];
            for run in runs {
                // Runs fail (the attacker keeps breaking its own service's
                // files) but never run away or need a person for long.
                assert!([0, 1, 3].contains(&run.code), "{}", run.stdout);
                outcomes.extend(failed_steps(&run.json()));
            }
        }
        stop_swapping(testbed, hosts);
        for host in hosts {
            assert_canaries_untouched(testbed, host);
        }
    }
    // The attack met the privileged write steps themselves, not only the read.
    assert!(
        outcomes.iter().any(|o| o == "stage" || o == "switch"),
        "the attack never met a write step: {outcomes:?}"
    );
    // Once the attacker stops, the next deploy converges.
    settle(testbed, hosts);
    let run = deployer.run("deploy", &request, &secrets("after-swap"));
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    for host in hosts {
        assert_eq!(
            file_on(testbed, host, "/opt/voxbridge/.env").1,
            expected_voxbridge_file(&secrets("after-swap"))
        );
    }
}

/// Per host of a result (a Deploy's or a Rotation's), its first failed step or `ok`.
fn failed_steps(result: &Value) -> Vec<String> {
    let mut hosts: Vec<&Value> = result["hosts"].as_array().into_iter().flatten().collect();
    for deployment in result["deployments"].as_array().into_iter().flatten() {
        hosts.extend(deployment["hosts"].as_array().into_iter().flatten());
    }
    hosts
        .iter()
        .map(|host| {
            host["steps"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|step| step["ok"] == false)
                .map(|step| step["name"].as_str().unwrap_or_default().to_string())
                .unwrap_or_else(|| "ok".into())
        })
        .collect()
}

/// Each service user, in its own directory, replaces `names` with links in a loop.
fn start_swapping(testbed: &Testbed, hosts: &[&TestHost], names: &str) {
    for host in hosts {
        testbed.sh_ok(host, "touch /run/attack-on");
        for service in ["voxbridge", "voxcore", "voxdialler"] {
            let attack = format!(
                "(cd /opt/{service} && while [ -e /run/attack-on ]; do \
                   for name in {names}; do \
                     ln -sfn {CANARY} l.$$ && mv -f l.$$ $name; \
                     ln -sfn {FIFO} f.$$ && mv -f f.$$ $name; \
                     ln -sfn /dev/zero z.$$ && mv -f z.$$ $name; \
                   done; \
                 done) >/dev/null 2>&1 </dev/null &"
            );
            assert!(as_user(testbed, host, service, &attack).status.success());
        }
    }
}

/// Stops the loops and removes what they planted; nothing in the services'
/// directories may be root's (a file root made and lost track of).
fn stop_swapping(testbed: &Testbed, hosts: &[&TestHost]) {
    for host in hosts {
        testbed.sh_ok(host, "rm -f /run/attack-on");
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let dirs = "/opt/voxbridge /opt/voxcore /opt/voxdialler";
    for host in hosts {
        let found = testbed.sh_ok(host, &format!("find {dirs} -mindepth 1 -user root"));
        assert_eq!(found, "", "root-owned files left in a service directory");
        testbed.sh_ok(
            host,
            &format!("find {dirs} -mindepth 1 \\( -type l -o -name '[lfz].*' \\) -delete"),
        );
    }
}

fn the_lock_cannot_be_planted_by_another_user(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let host = hosts[0];
    let request = deploy_user_request(deployer, &hosts[..1]);
    // The old lock directory is anyone's (/run/lock is 1777): planting there changes nothing.
    testbed.sh_ok(host, "mkdir -p /run/lock && chmod 1777 /run/lock");
    as_user(
        testbed,
        host,
        "deploy",
        &format!("mkdir -p /run/lock/hostenv && ln -sfn {CANARY} /run/lock/hostenv/{LOCK}"),
    );
    let run = deployer.run("deploy", &request, &secrets("lock-1"));
    assert_eq!(run.code, 0, "{}", run.stdout);
    // /run/hostenv is root's: only root can make it another's; then the run refuses, naming it.
    testbed.sh_ok(host, "chown deploy /run/hostenv");
    let run = deployer.run("deploy", &request, &secrets("lock-2"));
    let (kind, message) = first_error(&run.json());
    assert_eq!(kind, "remoteCommandFailed");
    assert!(
        message.contains("`/run/hostenv` belongs to uid 61010"),
        "{message}"
    );
    testbed.sh_ok(host, "chown root /run/hostenv");
    // A lock file swapped for a link to a root file (as root could) is refused, not written.
    testbed.sh_ok(
        host,
        &format!("rm /run/hostenv/{LOCK}; ln -s {CANARY} /run/hostenv/{LOCK}"),
    );
    let run = deployer.run("deploy", &request, &secrets("lock-3"));
    let (kind, _) = first_error(&run.json());
    assert_eq!(kind, "remoteCommandFailed");
    testbed.sh_ok(host, &format!("rm /run/hostenv/{LOCK}"));
    // The holder a waiting run prints is the locked file's first line, as written.
    let mut holder_request = request.clone();
    holder_request["audit"] = json!({"by": "mallory\u{1b}[2J\nforged line", "buildUrl": "x"});
    holder_request["rollout"] = json!({"lockWaitMs": 1500});
    let holder =
        crate::faults::Paused::start(deployer, &holder_request, &secrets("lock-4"), host, "stage");
    let waiting = deployer.run("deploy", &holder_request, &secrets("lock-5"));
    let (code, _, _) = holder.resume();
    assert_eq!(code, 0);
    let (kind, message) = first_error(&waiting.json());
    assert_eq!(kind, "locked", "{message}");
    // The holder is the service and environment that hold the lock and the
    // JSON line the holding run wrote, escapes kept as escapes (the old
    // `echo` turned `\n` into a line of its own).
    assert!(
        message.contains(r#"locked by voxbridge staging {"action":"deploy""#)
            && message.contains(r#""by":"mallory\u001b[2J\nforged line""#),
        "{message}"
    );
    assert!(!message.contains(['\u{1b}', '\n']), "{message}");

    // Once it holds the lock, the holder runs the run's steps for requests on
    // its channel: the deploy user talking to it directly gets nothing past
    // the checks a run of its own has, and no write under a shared lock.
    let log = "/var/lib/hostenv/voxbridge/audit.log";
    let before = testbed.sh_ok(host, &format!("cat {log}"));
    let control = "{\"x\":\"\u{1b}[2J\u{2028}\"}";
    let long = format!("{{\"x\":\"{}\"}}", "y".repeat(20_000));
    let mut exclusive = Talk::new();
    exclusive
        .x("read voxcore", "")
        .x("configure voxbridge", "[target]\npath = /etc/shadow\n")
        .x("lock voxbridge staging exclusive", "")
        .x("restore voxbridge ../../etc", "")
        .x("restart voxbridge sshd.service", "")
        .x("audit voxbridge", control)
        .x("audit voxbridge", &long)
        // `&`: only when the request before it succeeded.
        .then("audit voxbridge", "{\"by\":\"after a refusal\"}")
        .x("audit voxbridge", "{\"by\":\"mallory\"}")
        .then("audit voxbridge", "{\"by\":\"after a success\"}")
        .then("configure voxbridge", "[target]\npath = /etc/shadow\n");
    let answered = exclusive.talk(testbed, host, "lock voxbridge staging exclusive");
    assert_eq!(answered.broken, None, "{answered:?}");
    let codes: Vec<i32> = answered.done.iter().map(|(_, code, _)| *code).collect();
    // A chained request after a failure is skipped (5), after a success it
    // is checked like any other; the control characters of an audit line
    // are escaped, not refused.
    assert_eq!(codes, [2, 2, 2, 2, 2, 0, 3, 5, 0, 0, 2], "{answered:?}");
    let said = |index: usize| answered.done[index].2.as_str();
    assert!(said(7).contains("skipped"), "{answered:?}");
    assert!(said(0).contains("its own service only"), "{answered:?}");
    assert!(
        said(4).contains("not a unit of this service"),
        "{answered:?}"
    );
    assert!(said(6).contains("at most 16 KiB"), "{answered:?}");
    let mut shared = Talk::new();
    shared
        .x("stage voxbridge", "A=1\n")
        .x("switch voxbridge", "");
    let shared_answers = shared.talk(testbed, host, "lock voxbridge staging shared");
    let codes: Vec<i32> = shared_answers.done.iter().map(|(_, c, _)| *c).collect();
    assert_eq!(codes, [3, 3], "{shared_answers:?}");
    assert!(
        shared_answers.done[0].2.contains("shared lock"),
        "{shared_answers:?}"
    );
    let after = testbed.sh_ok(host, &format!("cat {log}"));
    assert_eq!(
        after,
        format!(
            "{before}{{\"x\":\"\\u001b[2J\\u2028\"}}\n{{\"by\":\"mallory\"}}\n{{\"by\":\"after a success\"}}\n"
        )
    );
    assert!(
        testbed
            .sh(host, "test -e /opt/voxbridge/.env.hostenv-new")
            .status
            .code()
            == Some(1)
    );
}

/// Requests for the lock's channel as the deploy user sends them straight
/// to the holder: a holder line, then requests numbered from 1.
#[derive(Default)]
pub(crate) struct Talk {
    next: u64,
    bytes: Vec<u8>,
}

impl Talk {
    pub(crate) fn new() -> Talk {
        Talk {
            next: 1,
            bytes: b"hold 60 mallory\n".to_vec(),
        }
    }

    /// A request, numbered as the holder expects.
    pub(crate) fn x(&mut self, words: &str, input: &str) -> &mut Talk {
        self.request('x', words, input.as_bytes())
    }

    /// A request that runs only if the one before it succeeded.
    pub(crate) fn then(&mut self, words: &str, input: &str) -> &mut Talk {
        self.request('&', words, input.as_bytes())
    }

    pub(crate) fn request(&mut self, marker: char, words: &str, input: &[u8]) -> &mut Talk {
        let head = format!("{marker}{} {words}\n{}\n", self.next, input.len());
        self.bytes.extend_from_slice(head.as_bytes());
        self.bytes.extend_from_slice(input);
        self.next += 1;
        self
    }

    /// Bytes as they are, whatever the grammar says.
    pub(crate) fn raw(&mut self, bytes: &[u8]) -> &mut Talk {
        self.bytes.extend_from_slice(bytes);
        self
    }

    /// Replaces the holder line.
    pub(crate) fn holder(mut self, line: &[u8]) -> Talk {
        let end = self.bytes.iter().position(|b| *b == b'\n').unwrap() + 1;
        self.bytes.splice(..end, line.iter().copied());
        self
    }

    /// Sends it all to `sudo -n hostenv-host LOCK_STEP` as the deploy user.
    pub(crate) fn talk(&self, testbed: &Testbed, host: &TestHost, lock_step: &str) -> Answers {
        self.talk_as(testbed, host, "deploy", lock_step)
    }

    /// Sends it all to the lock step as `user` (root runs the program itself).
    pub(crate) fn talk_as(
        &self,
        testbed: &Testbed,
        host: &TestHost,
        user: &str,
        lock_step: &str,
    ) -> Answers {
        let file = "/tmp/lock-talk";
        put_bytes(testbed, host, file, &self.bytes);
        testbed.sh_ok(host, &format!("chmod 644 {file}"));
        let out = if user == "root" {
            testbed.sh(host, &format!("{PROGRAM} {lock_step} < {file}"))
        } else {
            let command = format!("sudo -n {PROGRAM} {lock_step} < {file}");
            as_user(testbed, host, user, &command)
        };
        let mut answered = answers(&out.stdout);
        answered.stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        answered
    }
}

/// Writes any bytes to a file on a host (`Testbed::put` takes text).
pub(crate) fn put_bytes(testbed: &Testbed, host: &TestHost, path: &str, bytes: &[u8]) {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
    testbed.put(host, &format!("{path}.b64"), &encoded);
    testbed.sh_ok(
        host,
        &format!("base64 -d {path}.b64 > {path}; rm {path}.b64"),
    );
}

/// What the lock holder answered: who held the lock while it waited,
/// whether it took it, each request's number, exit code and stderr after
/// its unasked `read`, how the channel ended if the holder ended it (the
/// number it was at, and why), and what it said on stderr.
#[derive(Debug, Default)]
pub(crate) struct Answers {
    pub held_by: Option<String>,
    pub acquired: bool,
    pub done: Vec<(u64, i32, String)>,
    pub broken: Option<(u64, String)>,
    pub stderr: String,
}

pub(crate) fn answers(stdout: &[u8]) -> Answers {
    let text = String::from_utf8_lossy(stdout).into_owned();
    // First the program's description (`describe N` and N bytes), then `acquired`.
    let (head, described) = text
        .strip_prefix("describe ")
        .and_then(|rest| rest.split_once('\n'))
        .unwrap_or_else(|| panic!("no description: {text}"));
    let length: usize = head.parse().unwrap();
    assert!(described[..length].starts_with("hostenv-host "), "{text}");
    let mut rest = &described[length..];
    let mut answers = Answers::default();
    while let Some((head, after)) = rest.split_once('\n') {
        if let Some(holder) = head.strip_prefix("held-by ") {
            answers.held_by = Some(holder.to_string());
            rest = after;
            continue;
        }
        if head == "acquired" {
            answers.acquired = true;
            rest = after;
            continue;
        }
        let fields: Vec<&str> = head.split(' ').collect();
        match fields.as_slice() {
            ["done", seq, code, out, err] => {
                let (out, err): (usize, usize) = (out.parse().unwrap(), err.parse().unwrap());
                answers.done.push((
                    seq.parse().unwrap(),
                    code.parse().unwrap(),
                    after[out..out + err].to_string(),
                ));
                rest = &after[out + err..];
            }
            ["broken", seq, length] => {
                let length: usize = length.parse().unwrap();
                answers.broken = Some((seq.parse().unwrap(), after[..length].to_string()));
                rest = &after[length..];
                assert_eq!(rest, "", "the holder said more after it ended: {text}");
            }
            _ => panic!("not an answer: {head:?} in {text}"),
        }
    }
    // The first answer, when the lock was taken, is the holder's unasked
    // `read` of the locked service, as request 0.
    if answers.done.first().is_some_and(|(seq, _, _)| *seq == 0) {
        assert_eq!(answers.done[0].1, 0, "{text}");
        answers.done.remove(0);
    }
    // Every answer names its request, in order.
    for (index, (seq, _, _)) in answers.done.iter().enumerate() {
        assert_eq!(*seq, index as u64 + 1, "{text}");
    }
    answers
}

fn directories_others_can_write_are_refused(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let host = hosts[0];
    let request = deploy_user_request(deployer, &hosts[..1]);
    for (setup, undo, says) in [
        (
            "chmod 777 /opt/voxbridge",
            "chmod 755 /opt/voxbridge",
            "`/opt/voxbridge` is writable by its group or others",
        ),
        (
            "chown deploy /opt/voxbridge",
            "chown voxbridge /opt/voxbridge",
            "`/opt/voxbridge` belongs to uid 61010",
        ),
        (
            "chmod 1777 /opt",
            "chmod 755 /opt",
            "`/opt` is writable by its group or others",
        ),
        (
            "chmod 777 /var/lib/hostenv",
            "chmod 700 /var/lib/hostenv",
            "`/var/lib/hostenv` is writable",
        ),
    ] {
        testbed.sh_ok(host, setup);
        let run = deployer.run("deploy", &request, &secrets("dirs"));
        testbed.sh_ok(host, undo);
        assert_eq!(run.code, 1, "{setup}: {}", run.stdout);
        let (kind, message) = first_error(&run.json());
        assert_eq!(kind, "remoteCommandFailed", "{setup}");
        assert!(message.contains(says), "{setup}: {message}");
    }
    // A state directory the service user owns is not root's own: refused, not used.
    let mut request = request.clone();
    request["target"] = json!({"stateDir": "/opt/voxbridge/state"});
    let mut as_root = request.clone();
    as_root["ssh"]["user"] = json!("root");
    assert_eq!(
        deployer
            .run("host-install", &as_root, &BTreeMap::new())
            .code,
        0
    );
    let run = deployer.run("deploy", &as_root, &secrets("dirs"));
    let (kind, message) = first_error(&run.json());
    assert_eq!(kind, "remoteCommandFailed", "{}", run.stdout);
    assert!(
        message.contains("`/opt/voxbridge` belongs to uid 61001"),
        "{message}"
    );
    // Back to the usual configuration.
    let mut usual = deploy_user_request(deployer, hosts);
    usual["ssh"]["user"] = json!("root");
    assert_eq!(
        deployer.run("host-install", &usual, &BTreeMap::new()).code,
        0
    );
}

fn host_keys_fail_closed(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let dir = deployer.work.path();
    let mut request = voxbridge_request(
        testbed,
        &hosts[..1],
        "root",
        json!({"allowSharedChange": true}),
    );
    request["ssh"]["hostKeyPolicy"] = json!("acceptNew");
    // Unreadable (a directory), not text, or text that is not known_hosts:
    // the request is refused before any host is contacted, and nothing is
    // recorded in the file.
    let directory = dir.join("known-hosts-dir");
    std::fs::create_dir_all(&directory).unwrap();
    let binary = dir.join("known-hosts-binary");
    std::fs::write(&binary, [0xff, 0xfe, 0x00, 0x01]).unwrap();
    let garbage = dir.join("known-hosts-garbage");
    std::fs::write(&garbage, "this is not a known_hosts line\n").unwrap();
    for (file, says) in [
        (&directory, "cannot read known_hosts"),
        (&binary, "not a text file"),
        (&garbage, "not a host key type"),
    ] {
        request["ssh"]["knownHosts"] = json!(file);
        let run = deployer.run("deploy", &request, &secrets("keys"));
        assert_eq!(run.code, 2, "{}", run.stdout);
        let result = run.json();
        assert_eq!(result["error"]["field"], "/ssh/knownHosts");
        assert!(
            result["error"]["message"].as_str().unwrap().contains(says),
            "{result:#}"
        );
        assert_eq!(result["hosts"], json!([]));
    }
    assert_eq!(
        std::fs::read_to_string(&garbage).unwrap(),
        "this is not a known_hosts line\n"
    );
    // A hashed known_hosts (ssh-keygen -H) works like the plain one.
    let hashed = dir.join("known-hosts-hashed");
    std::fs::copy(&testbed.known_hosts, &hashed).unwrap();
    let keygen = std::process::Command::new("ssh-keygen")
        .args(["-H", "-f"])
        .arg(&hashed)
        .output()
        .unwrap();
    assert!(keygen.status.success());
    assert!(std::fs::read_to_string(&hashed).unwrap().starts_with("|1|"));
    request["ssh"]["knownHosts"] = json!(hashed);
    request["ssh"]["hostKeyPolicy"] = json!("strict");
    let run = deployer.run("deploy", &request, &secrets("hashed"));
    assert_eq!(run.code, 0, "{}", run.stdout);
}
