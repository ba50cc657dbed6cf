//! The lock's channel tried as an attacker would (SECURITY.md, "The lock's
//! channel"): the deploy user talking to the root holder straight through
//! its one sudo rule, the service user at work between a run's steps, and
//! values that spell the channel's own requests. The holder reads one
//! grammar and ends the channel at the first byte that does not fit, holds
//! no more than a run sends while it waits, runs only what root's
//! configuration allows, keeps one lock per target file, bounds its audit
//! log and its own lifetime, and switches in only the file it staged.

use std::collections::BTreeMap;

use pretty_assertions::assert_eq;
use serde_json::{json, Value};

use super::{as_user, deploy_user_request, Talk, PROGRAM};
use crate::deploy::{expected_voxbridge_file, file_on, secrets, statuses, Deployer};
use crate::testbed::{TestHost, Testbed};

const TARGET: &str = "/opt/voxbridge/.env";
const STAGED: &str = "/opt/voxbridge/.env.hostenv-new";
const AUDIT_LOG: &str = "/var/lib/hostenv/voxbridge/audit.log";
const LIMITS: &str = "/etc/hostenv/limits.conf";
const DRIVER: &str = "/tmp/lock_driver.py";
/// Requests that would delete the target or install an attacker's file,
/// were they ever read as requests.
const EMBEDDED: &[u8] =
    b"x2 restore voxbridge 0\n0\n\n\nx2 stage voxbridge\n27\nPWNED=attacker-chosen-file\n&3 switch voxbridge\n0\n";

/// Puts the driver script on every host.
pub(super) fn install_driver(testbed: &Testbed, hosts: &[&TestHost]) {
    let script = include_str!("../../testbed/lock_driver.py");
    for host in hosts {
        testbed.put(host, DRIVER, script);
        testbed.sh_ok(host, &format!("chmod 755 {DRIVER}"));
    }
}

/// Runs the driver (`how`: its mode and arguments) on the lock step `step`
/// as `user` (the deploy user through its sudo rule, or root directly) and
/// returns what it wrote.
fn drive(testbed: &Testbed, host: &TestHost, user: &str, how: &str, step: &str) -> Value {
    let (mode, arguments) = how.split_once(' ').unwrap_or((how, ""));
    let out = format!("/tmp/driver-{mode}.json");
    // The driver makes the file itself: another user's file in /tmp is not
    // opened for writing (protected_regular).
    testbed.sh_ok(host, &format!("rm -f {out}"));
    let sudo = if user == "root" { "" } else { "sudo -n " };
    let command = format!("python3 {DRIVER} {mode} {out} {arguments} -- {sudo}{PROGRAM} {step}");
    let output = if user == "root" {
        testbed.sh(host, &command)
    } else {
        as_user(testbed, host, user, &command)
    };
    assert!(
        output.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&testbed.sh_ok(host, &format!("cat {out}"))).unwrap()
}

/// Configures a service that is only a name and a target path, as root.
fn configure_bare(testbed: &Testbed, host: &TestHost, service: &str, dir: &str) {
    testbed.sh_ok(
        host,
        &format!("mkdir -p {dir} && chown voxbridge:voxbridge {dir}"),
    );
    let config = format!(
        "path {dir}/.env\nowner voxbridge\ngroup voxbridge\nmode 0600\nbackups 1\n\
         state-dir /var/lib/hostenv/{service}\nunit voxbridge.service\nrestart-timeout 10\n"
    );
    testbed.put(host, "/tmp/config", &config);
    testbed.sh_ok(
        host,
        &format!("{PROGRAM} configure {service} < /tmp/config"),
    );
}

fn audit_lines(testbed: &Testbed, host: &TestHost) -> usize {
    testbed
        .sh_ok(host, &format!("cat {AUDIT_LOG} 2>/dev/null | wc -l"))
        .trim()
        .parse()
        .unwrap()
}

/// The target and the staged name as the attack found them: the same after it.
fn untouched(testbed: &Testbed, host: &TestHost, before: &(String, String), what: &str) {
    assert_eq!(&file_on(testbed, host, TARGET), before, "{what}");
    assert!(
        !testbed
            .sh(host, &format!("test -e {STAGED}"))
            .status
            .success(),
        "{what}: a file was staged"
    );
    let pwned = testbed.sh_ok(
        host,
        "grep -rl PWNED /opt/voxbridge /var/lib/hostenv 2>/dev/null || true",
    );
    assert_eq!(pwned, "", "{what}");
}

/// Streams that break the grammar after one good request, each followed by
/// requests that would delete the target or install a file: the good
/// request runs, the holder answers `broken` at the first bad byte, and
/// nothing after it runs.
pub(super) fn the_channel_ends_at_the_first_byte_that_does_not_fit(
    deployer: &Deployer,
    hosts: &[&TestHost],
) {
    let testbed = deployer.testbed;
    let host = hosts[0];
    let before = file_on(testbed, host, TARGET);
    let good = || {
        let mut talk = Talk::new();
        talk.x("audit voxbridge", "{\"by\":\"before the break\"}");
        talk
    };
    let long_line = format!("x2 {}\n0\n", "r".repeat(600));
    let cases: Vec<(&str, Talk, u64, &str)> = vec![
        (
            "a holder line over 2048 bytes",
            {
                let mut line = b"hold 60 ".to_vec();
                line.extend(std::iter::repeat_n(b'b', 2100));
                line.push(b'\n');
                let mut talk = Talk::new().holder(&line);
                talk.x("audit voxbridge", "{\"by\":\"never\"}");
                talk
            },
            0,
            "the holder line is too long",
        ),
        (
            "a holder line that is not one",
            Talk::new().holder(b"mallory\n"),
            0,
            "the holder line is not",
        ),
        (
            "a step line over 512 bytes",
            {
                let mut talk = good();
                talk.raw(long_line.as_bytes());
                talk
            },
            2,
            "a request line is too long",
        ),
        (
            "a length over 4 MiB",
            {
                let mut talk = good();
                talk.raw(b"x2 audit voxbridge\n4194305\n");
                talk
            },
            2,
            "length",
        ),
        (
            "a length of eight digits",
            {
                let mut talk = good();
                talk.raw(b"x2 audit voxbridge\n00000001\n");
                talk
            },
            2,
            "length",
        ),
        (
            "a byte between requests",
            {
                let mut talk = good();
                talk.raw(b"hhy");
                talk
            },
            2,
            "neither a beat nor a request",
        ),
        (
            "a request out of turn",
            {
                let mut talk = good();
                talk.raw(b"x7 audit voxbridge\n2\n{}");
                talk
            },
            2,
            "the number due",
        ),
        (
            "a control character in a step line",
            {
                let mut talk = good();
                talk.raw(b"x2 audit\tvoxbridge\n2\n{}");
                talk
            },
            2,
            "not printable ASCII",
        ),
    ];
    for (what, mut talk, seq, reason) in cases {
        let lines = audit_lines(testbed, host);
        talk.raw(EMBEDDED);
        let answered = talk.talk(testbed, host, "lock voxbridge staging exclusive");
        let (at, why) = answered
            .broken
            .clone()
            .unwrap_or_else(|| panic!("{what}: the channel did not end: {answered:?}"));
        assert_eq!(at, seq, "{what}: {why}");
        assert!(why.contains(reason), "{what}: {why}");
        // Only the good request before the break ran.
        let ran = if seq == 0 { 0 } else { 1 };
        assert_eq!(answered.done.len(), ran, "{what}: {answered:?}");
        assert_eq!(audit_lines(testbed, host), lines + ran, "{what}");
        untouched(testbed, host, &before, what);
    }
    // A stream that stops partway through a request runs nothing of it.
    let mut cut = good();
    cut.raw(b"x2 restore voxbridge 0\n5\nabc");
    let answered = cut.talk(testbed, host, "lock voxbridge staging exclusive");
    assert_eq!(answered.done.len(), 1, "{answered:?}");
    untouched(testbed, host, &before, "a request cut off");
}

/// A real deploy whose secret spells the channel's requests, and whose
/// `audit.by` (at its 256-character limit) does too: the value is installed
/// as data, the result says what happened, and nothing else is run. Over the
/// limit, `audit.by` is refused before any host.
pub(super) fn a_value_that_spells_requests_stays_data(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let host = hosts[0];
    let mut request = deploy_user_request(deployer, &hosts[..1]);
    let spelled = String::from_utf8(EMBEDDED.to_vec()).unwrap();
    let by: String = format!("hold 1 x\n{spelled}")
        .repeat(4)
        .chars()
        .take(256)
        .collect();
    request["audit"] = json!({"by": by, "buildUrl": "https://ci.example/job/deploy/7/"});
    let values = secrets(&format!("inject\n\n\n{spelled}"));
    let lines = audit_lines(testbed, host);
    let run = deployer.run("deploy", &request, &values);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(statuses(&run.json()), ["deployed"]);
    assert_eq!(
        file_on(testbed, host, TARGET),
        (
            "voxbridge:voxbridge 600".to_string(),
            expected_voxbridge_file(&values)
        )
    );
    assert!(!testbed
        .sh(host, &format!("test -e {STAGED}"))
        .status
        .success());
    // One audit line, `by` in it whole, its line breaks escaped.
    assert_eq!(audit_lines(testbed, host), lines + 1);
    let last = testbed.sh_ok(host, &format!("tail -n 1 {AUDIT_LOG}"));
    let line: Value = serde_json::from_str(&last).unwrap();
    assert_eq!(line["by"], by.as_str());
    assert!(last.is_ascii());

    // As the issue found it: 620 characters, refused naming the field.
    let before = file_on(testbed, host, TARGET);
    request["audit"]["by"] = json!(format!("{by}{}", "y".repeat(364)));
    let run = deployer.run("deploy", &request, &secrets("never"));
    assert_eq!(run.code, 2, "{}", run.stdout);
    let result = run.json();
    assert_eq!(result["error"]["field"], "/audit/by");
    assert_eq!(result["hosts"], json!([]));
    assert_eq!(file_on(testbed, host, TARGET), before);
}

/// While another run holds the lock, a holder keeps the one request a run
/// sends with its lock step and ends the channel at the next; it gives up
/// waiting at root's `lock-wait`, and without its holder line after 10 s.
pub(super) fn a_waiting_holder_is_bounded(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let host = hosts[0];
    let request = deploy_user_request(deployer, &hosts[..1]);
    let holder = crate::faults::Paused::start(deployer, &request, &secrets("held"), host, "switch");
    let flood = drive(
        testbed,
        host,
        "deploy",
        "flood",
        "lock voxbridge staging exclusive",
    );
    let said = flood["stdout"].as_str().unwrap();
    assert!(said.contains("held-by voxbridge staging "), "{flood:#}");
    assert!(
        said.contains("broken 2 ")
            && said.contains("more requests than a run sends before it holds the lock"),
        "{flood:#}"
    );
    assert!(!said.contains("acquired"), "{flood:#}");
    // What it took before it ended: one 4 MiB request, then the next one's
    // first bytes (the issue saw 1 GB within 16 s).
    let written = flood["written"].as_u64().unwrap();
    eprintln!(
        "a waiting holder under a flood: {} KB peak RSS, {} bytes sent before it ended the channel, {} s",
        flood["peakKb"], written, flood["seconds"]
    );
    assert!(written < 64 << 20, "{flood:#}");

    // Root's lock-wait bounds the wait, whatever the caller keeps open.
    testbed.put(host, LIMITS, "lock-wait 2\n");
    let waited = drive(
        testbed,
        host,
        "deploy",
        "wait 20",
        "lock voxbridge staging exclusive",
    );
    assert!(
        waited["stderr"]
            .as_str()
            .unwrap()
            .contains("gave up waiting for the lock after 2 s"),
        "{waited:#}"
    );
    assert!(waited["seconds"].as_f64().unwrap() < 15.0, "{waited:#}");
    testbed.sh_ok(host, &format!("rm {LIMITS}"));
    let (code, _, _) = holder.resume();
    assert_eq!(code, 0);

    // A channel that never says who it is ends after 10 s.
    let silent = drive(
        testbed,
        host,
        "deploy",
        "silent 30",
        "lock voxbridge staging exclusive",
    );
    let said = silent["stdout"].as_str().unwrap();
    assert!(
        said.contains("broken 0 ") && said.contains("the holder line did not come in time"),
        "{silent:#}"
    );
    assert!(silent["seconds"].as_f64().unwrap() < 25.0, "{silent:#}");
}

/// A holder that announced a one-second run is gone 60 s later, however
/// faithfully its caller beats (started first, in a thread, and checked
/// last: it takes a minute).
pub(super) fn a_holder_beating_past_its_deadline(testbed: &Testbed, host: &TestHost) -> Value {
    configure_bare(testbed, host, "beat", "/opt/beat");
    drive(
        testbed,
        host,
        "root",
        "beat 150",
        "lock beat staging shared",
    )
}

pub(super) fn no_holder_outlives_its_deadline(beat: Value) {
    let said = beat["stdout"].as_str().unwrap();
    assert!(
        said.contains("broken ") && said.contains("the run's deadline passed"),
        "{beat:#}"
    );
    let seconds = beat["seconds"].as_f64().unwrap();
    assert!((60.0..=100.0).contains(&seconds), "{beat:#}");
}

/// On the channel, the same checks as a step of its own, against root's
/// configuration: backup numbers within its count, the instances root
/// listed and no others, no instance name systemd would turn into another.
pub(super) fn channel_steps_stay_within_roots_configuration(
    deployer: &Deployer,
    hosts: &[&TestHost],
) {
    let testbed = deployer.testbed;
    let host = hosts[0];
    let voxcore = json!({
        "apiVersion": "hostenv/v1", "kind": "Deploy", "service": "voxcore",
        "contract": "fleet.env.example", "environment": "staging",
        "hosts": [{"host": host.addr, "instances": ["sock1", "sock2"]}],
        "env": {}, "ssh": testbed.ssh_settings("root")
    });
    assert_eq!(
        deployer
            .run("host-install", &voxcore, &BTreeMap::new())
            .code,
        0
    );
    let config = testbed.sh_ok(host, "cat /etc/hostenv/voxcore.conf");
    assert!(
        config.contains("instance voxcore@sock1.service\ninstance voxcore@sock2.service\n"),
        "{config}"
    );
    let units_before = testbed.sh_ok(
        host,
        "systemctl list-units --all --plain --no-legend 'voxcore@*'",
    );
    let mut talk = Talk::new();
    talk.x("restore voxcore 6", "")
        .x("restage voxcore 9", "")
        .x("restart voxcore voxcore@evil:1.service", "")
        .x("restart voxcore voxcore@sock1.service.service", "")
        .x("restart voxcore voxcore@sock3.service", "")
        .x("reset-failed voxcore voxcore@sock-a.service", "")
        .x("restart voxcore voxcore@.service", "")
        .x("reset-failed voxcore voxcore@sock1.service", "");
    let answered = talk.talk(testbed, host, "lock voxcore staging exclusive");
    let codes: Vec<i32> = answered.done.iter().map(|(_, code, _)| *code).collect();
    assert_eq!(codes, [2, 2, 2, 2, 2, 2, 2, 0], "{answered:?}");
    assert!(
        answered.done[0].2.contains("there is no backup 6"),
        "{answered:?}"
    );
    assert!(
        answered.done[4].2.contains("not a unit of this service"),
        "{answered:?}"
    );
    let units_after = testbed.sh_ok(
        host,
        "systemctl list-units --all --plain --no-legend 'voxcore@*'",
    );
    assert_eq!(
        units_after, units_before,
        "systemd saw a unit root did not allow"
    );
}

/// One lock per target file: a run of another environment that writes the
/// same file waits, naming service and environment; services whose names
/// once met in one lock file (`api.v2`/`prod` and `api`/`v2.prod`) do not.
/// A deploy over a file another environment wrote says so.
pub(super) fn one_lock_per_target_file(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let host = hosts[0];
    let staging = deploy_user_request(deployer, &hosts[..1]);
    let mut production = staging.clone();
    production["environment"] = json!("production");
    let rules = format!(
        "{}{}",
        crate::deploy::sudoers_rules(deployer, &staging),
        crate::deploy::sudoers_rules(deployer, &production)
    );
    testbed.grant_sudo(host, &rules);

    let holder =
        crate::faults::Paused::start(deployer, &staging, &secrets("one-lock"), host, "switch");
    let waiting = Talk::new().talk(testbed, host, "lock voxbridge production exclusive");
    let (code, _, _) = holder.resume();
    assert_eq!(code, 0);
    let said = waiting.held_by.clone().unwrap_or_default();
    assert!(
        said.starts_with("voxbridge staging {\"action\":\"deploy\""),
        "{waiting:?}"
    );
    assert!(waiting.done.is_empty(), "{waiting:?}");

    // Production over staging's file: reported, and in the audit line.
    let run = deployer.run("deploy", &production, &secrets("one-lock-prod"));
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(run.json()["hosts"][0]["previousEnvironment"], "staging");
    let last: Value =
        serde_json::from_str(&testbed.sh_ok(host, &format!("tail -n 1 {AUDIT_LOG}"))).unwrap();
    assert_eq!(
        (&last["environment"], &last["previousEnvironment"]),
        (&json!("production"), &json!("staging"))
    );
    let again = deployer.run("deploy", &production, &secrets("one-lock-prod"));
    assert_eq!(again.json()["hosts"][0].get("previousEnvironment"), None);
    // Back to staging's file for what follows.
    assert_eq!(
        deployer
            .run("deploy", &staging, &secrets("one-lock-back"))
            .code,
        0
    );

    // Two services whose names and environments joined to one lock file.
    configure_bare(testbed, host, "api.v2", "/opt/api.v2");
    configure_bare(testbed, host, "api", "/opt/api");
    let first = std::thread::scope(|scope| {
        let first = scope.spawn(|| {
            drive(
                testbed,
                host,
                "root",
                "hold 4",
                "lock api.v2 prod exclusive",
            )
        });
        std::thread::sleep(std::time::Duration::from_millis(800));
        let second = Talk::new().talk_as(testbed, host, "root", "lock api v2.prod exclusive");
        assert!(second.held_by.is_none(), "{second:?}");
        assert!(second.acquired, "{second:?}");
        first.join().unwrap()
    });
    assert!(
        first["stdout"].as_str().unwrap().contains("acquired"),
        "{first:#}"
    );
    let locks = testbed.sh_ok(host, "ls /run/hostenv");
    assert!(
        locks.contains("opt%api.v2%.env.lock") && locks.contains("opt%api%.env.lock"),
        "{locks}"
    );
}

/// Audit lines from a flood on the channel: the log is rotated at root's
/// size and keeps root's number of old logs; a malformed limits file makes
/// every step refuse, naming its line.
pub(super) fn the_audit_log_is_bounded(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let host = hosts[0];
    testbed.put(host, LIMITS, "audit-log-bytes 8192\naudit-log-keep 2\n");
    let line = format!("{{\"flood\":\"{}\"}}", "f".repeat(500));
    let mut talk = Talk::new();
    for _ in 0..200 {
        talk.x("audit voxbridge", &line);
    }
    let answered = talk.talk(testbed, host, "lock voxbridge staging shared");
    assert_eq!(answered.done.len(), 200, "{answered:?}");
    assert!(
        answered.done.iter().all(|(_, code, _)| *code == 0),
        "{answered:?}"
    );
    let sizes = testbed.sh_ok(
        host,
        "cd /var/lib/hostenv/voxbridge && for f in audit.log audit.log.[0-9]*; do echo \"$f $(stat -c %s $f)\"; done",
    );
    let files: Vec<(&str, u64)> = sizes
        .lines()
        .map(|l| {
            let (name, size) = l.split_once(' ').unwrap();
            (name, size.parse().unwrap())
        })
        .collect();
    let names: Vec<&str> = files.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        names,
        ["audit.log", "audit.log.1", "audit.log.2"],
        "{sizes}"
    );
    assert!(files.iter().all(|(_, size)| *size <= 8192), "{sizes}");

    testbed.put(host, LIMITS, "audit-log-keep 2\naudit-log-keep 3\n");
    let refused = Talk::new().talk(testbed, host, "lock voxbridge staging shared");
    assert!(!refused.acquired, "{refused:?}");
    let said = refused.stderr.clone();
    assert!(
        said.contains("/etc/hostenv/limits.conf`: line 2: `audit-log-keep` is given twice"),
        "{refused:?}"
    );
    testbed.sh_ok(host, &format!("rm {LIMITS}"));
}

/// The service user owns the target's directory and the staged file: it
/// swaps in a file of its own, or rewrites the staged one, between a run's
/// stage and switch. The switch refuses either, naming the staged file, and
/// the target stays as it was; untouched, the staged file is switched in.
pub(super) fn switch_installs_only_what_stage_wrote(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let host = hosts[0];
    for how in ["replace", "rewrite"] {
        let before = file_on(testbed, host, TARGET);
        let swapped = drive(
            testbed,
            host,
            "root",
            &format!("swap {how}"),
            "lock voxbridge staging exclusive",
        );
        let answers = swapped["answers"].as_array().unwrap();
        assert_eq!(answers[1][1], 0, "{how}: the stage: {swapped:#}");
        assert_eq!(answers[2][1], 3, "{how}: the switch: {swapped:#}");
        assert!(
            answers[2][2]
                .as_str()
                .unwrap()
                .contains("`/opt/voxbridge/.env.hostenv-new` is not the file this run staged"),
            "{swapped:#}"
        );
        assert_eq!(file_on(testbed, host, TARGET), before, "{how}");
        testbed.sh_ok(host, &format!("rm -f {STAGED}"));
    }
    let honest = drive(
        testbed,
        host,
        "root",
        "swap none",
        "lock voxbridge staging exclusive",
    );
    assert_eq!(honest["answers"][2][1], 0, "{honest:#}");
    assert_eq!(file_on(testbed, host, TARGET).1, "STAGED=\"by the run\"\n");
}
