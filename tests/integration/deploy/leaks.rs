//! Secrets stay in the target files: not in outputs, commands, journals; rejected requests and hostile fields touch no host.

use crate::common::assert_no_leak;
use crate::testbed::TestHost;
use pretty_assertions::assert_eq;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::Command;

use super::*;

/// Fields that may hold any text (the audit trail's `by` and `buildUrl`, a
/// literal value, a secret) carry shell built to break out: quotes, `;`,
/// `$()`, backticks, newlines, a leading `-`. They reach the hosts only on
/// stdin, so nothing runs: no command executed on a host mentions the marker,
/// no marker file appears, and the values arrive intact. (Names, users, units,
/// paths and instances built the same way are refused: tests/cases.)
pub(super) fn shell_in_accepted_fields_never_runs(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let payload = |tag: &str| {
        format!(
            "-x';touch /tmp/injected-{tag};'$(touch /tmp/injected-{tag})`touch /tmp/injected-{tag}`\"\n; touch /tmp/injected-{tag} #"
        )
    };
    let mut request = voxbridge_request(
        testbed,
        &hosts[..1],
        "deploy",
        json!({
            "allowSharedChange": true,
            "audit": {"by": payload("by"), "buildUrl": format!("https://ci.example/{}", payload("url"))}
        }),
    );
    request["env"]["LOG_LEVEL"] = json!({"value": payload("value")});
    testbed.grant_sudo(hosts[0], &sudoers_rules(deployer, &request));
    let mut values = secrets("injection");
    values.insert("JWT_SECRET".into(), payload("secret"));
    let trace = ExecTrace::start(testbed, &hosts[..1], "injection");
    let run = deployer.run("deploy", &request, &values);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(statuses(&run.json()), ["deployed"]);
    trace.assert_clean("hostenv-host\", \"lock", &["injected-".to_string()]);
    let found = testbed.sh(hosts[0], "ls /tmp /opt /var/lib/hostenv / | grep injected");
    assert_eq!(
        String::from_utf8_lossy(&found.stdout),
        "",
        "an injected command ran"
    );
    let file = testbed.sh_ok(hosts[0], "cat /opt/voxbridge/.env");
    let read = hostenv::render::systemd::parse(&file);
    let value_of = |key: &str| {
        read.assignments
            .iter()
            .find(|a| a.key == key)
            .map(|a| a.value.clone())
    };
    assert_eq!(value_of("LOG_LEVEL"), Some(payload("value")));
    assert_eq!(value_of("JWT_SECRET"), Some(payload("secret")));
    let log = testbed.sh_ok(hosts[0], "tail -n 1 /var/lib/hostenv/voxbridge/audit.log");
    let line: Value = serde_json::from_str(log.trim()).unwrap();
    assert_eq!(line["by"], json!(payload("by")));
}

/// A listener stands where the host would be; a request rejected before any
/// host (an unset secret, an unset SSH key variable) never knocks.
pub(super) fn a_rejected_request_opens_no_connection(deployer: &Deployer) {
    let testbed = deployer.testbed;
    let listener =
        std::net::TcpListener::bind(("127.77.0.250", 2222)).expect("bind a stand-in host");
    listener.set_nonblocking(true).unwrap();
    let mut request = voxbridge_request(testbed, &[], "root", json!({}));
    request["hosts"] = json!([{"host": "127.77.0.250", "port": 2222}]);
    let mut unset = secrets("rejected");
    unset.remove("JWT_SECRET");
    let run = deployer.run("deploy", &request, &unset);
    assert_eq!(run.code, 2, "{}", run.stdout);
    assert_eq!(run.json()["error"]["kind"], "keyProblems");
    assert_eq!(run.json()["hosts"], json!([]));
    request["ssh"]["identityFileEnv"] = json!("NO_SUCH_KEY_VARIABLE");
    let run = deployer.run("deploy", &request, &secrets("rejected"));
    assert_eq!(run.code, 2, "{}", run.stdout);
    assert_eq!(run.json()["error"]["field"], "/ssh/identityFileEnv");
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("a rejected request connected to the host: {other:?}"),
    }
}

/// Canary secrets go through check, plan, deploy (success, failed health with
/// rollback, through sudo), rollback, drift, a rotation across voxcore and
/// voxdialler, its drift and its rollback; afterwards they are nowhere but in
/// the target files, their backups and the services' own main processes: not
/// in stdout, stderr or any JUnit file, not in any command line or environment
/// executed on the hosts (execve traced from sshd), not in the journals or the
/// audit logs, not in any other file on the hosts or in the working directory,
/// not in any other process's environment — raw, JSON-escaped, base64,
/// URL-encoded, shell-quoted or escaped as in an env file.
pub(super) fn secrets_stay_in_the_target_files(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let good = secrets("contained");
    let mut bad = secrets("rolled-back");
    bad.insert("MONGODB_URI".into(), good["MONGODB_URI"].clone());
    let (first, second) = (
        crate::rotation::contained_generation("window-one"),
        crate::rotation::contained_generation("window-two"),
    );
    let canaries: Vec<String> = [&good, &bad, &first, &second]
        .iter()
        .flat_map(|m| m.values().cloned())
        .collect();
    let junit = |name: &str| deployer.work.path().join(format!("{name}.junit.xml"));
    // Every action with its JUnit file; stdout and stderr searched for every canary.
    let run = |action: &str, name: &str, request: &Value, values: &BTreeMap<String, String>| {
        let file = junit(name);
        let run = deployer.run_args(
            &[action, "--junit", file.to_str().unwrap()],
            request,
            values,
        );
        assert_no_leak("stdout", &run.stdout, &canaries);
        assert_no_leak("stderr", &run.stderr, &canaries);
        let xml = std::fs::read_to_string(&file).expect("the JUnit file");
        assert_no_leak(&format!("the JUnit file of {name}"), &xml, &canaries);
        run.json()
    };

    let trace = ExecTrace::start(testbed, hosts, "contained");

    let request = voxbridge_request(testbed, hosts, "root", json!({"allowSharedChange": true}));
    assert_eq!(run("check", "check", &request, &good)["ok"], true);
    assert_eq!(
        statuses(&run("plan", "plan", &request, &good)),
        ["planned", "planned", "planned"]
    );
    let result = run("deploy", "deploy", &request, &good);
    assert_eq!(
        statuses(&result),
        ["deployed", "deployed", "deployed"],
        "{result}"
    );
    let mut failing = voxbridge_request(
        testbed,
        &hosts[..1],
        "root",
        json!({"verify": quick_verify(1000)}),
    );
    failing["env"]["HEALTH_MODE"] = json!({"value": "fail"});
    assert_eq!(
        statuses(&run("deploy", "failing", &failing, &bad)),
        ["rolledBack"]
    );
    let sudo_request = voxbridge_request(
        testbed,
        &hosts[1..2],
        "deploy",
        json!({"allowSharedChange": true}),
    );
    testbed.grant_sudo(hosts[1], &sudoers_rules(deployer, &sudo_request));
    assert_eq!(
        statuses(&run("deploy", "sudo-bad", &sudo_request, &bad)),
        ["deployed"]
    );
    // Back to the good file, the one the sudo deploy replaced.
    assert_eq!(
        statuses(&run(
            "rollback",
            "rollback",
            &sudo_request,
            &BTreeMap::new()
        )),
        ["restored"]
    );
    assert_eq!(
        statuses(&run("drift", "drift", &request, &good)),
        ["inSync", "inSync", "inSync"]
    );

    // A rotation of VOXCORE_SECRET across the fleet and the dialler, and its rollback.
    crate::rotation::write_contracts(deployer.work.path());
    let rotation = crate::rotation::rotation_request(testbed, hosts);
    for (name, values) in [("window-one", &first), ("window-two", &second)] {
        let result = run("deploy", name, &rotation, values);
        assert_eq!(result["ok"], true, "{result}");
    }
    let result = run("drift", "window-drift", &rotation, &second);
    assert_eq!(result["shared"][0]["identical"], true);
    let result = run("rollback", "window-rollback", &rotation, &BTreeMap::new());
    assert_eq!(result["ok"], true, "{result}");

    trace.assert_clean("hostenv-host\", \"lock", &canaries);

    let patterns = testbed.dir.join("canary-patterns");
    // grep reads one pattern per line, so a multi-line form is searched line by line.
    let forms: Vec<String> = canaries
        .iter()
        .flat_map(|c| crate::common::leak_forms(c))
        .flat_map(|form| form.lines().map(str::to_string).collect::<Vec<_>>())
        .collect();
    std::fs::write(&patterns, forms.join("\n") + "\n").unwrap();
    let patterns = patterns.display();
    for host in hosts {
        let journal = testbed.sh_ok(host, "journalctl --no-pager -o verbose");
        assert!(
            journal.contains("hostenv"),
            "the journal saw no deploy on {}",
            host.addr
        );
        assert_no_leak(
            &format!("the journal of {}", host.addr),
            &journal,
            &canaries,
        );
        let files = testbed.sh(
            host,
            &format!(
                "grep -rlF -f {patterns} /opt /run /tmp /var/lib /var/log /etc/systemd/system 2>/dev/null"
            ),
        );
        let files = String::from_utf8_lossy(&files.stdout).into_owned();
        // The search works: it finds the target file itself.
        assert!(files.lines().any(|f| f == "/opt/voxbridge/.env"), "{files}");
        let elsewhere: Vec<&str> = files
            .lines()
            .filter(|f| {
                !["voxbridge", "voxcore", "voxdialler"]
                    .iter()
                    .any(|service| {
                        *f == format!("/opt/{service}/.env")
                            || f.starts_with(&format!("/var/lib/hostenv/{service}/env."))
                    })
            })
            .collect();
        assert!(
            elsewhere.is_empty(),
            "files holding a secret on {}: {elsewhere:?}",
            host.addr
        );
        // The services' own main processes get the values by design; nothing else may.
        let services = testbed.sh_ok(
            host,
            "systemctl show -p MainPID --value voxbridge.service 'voxcore@*.service' voxdialler.service | grep -v '^0$' | tr '\\n' ' '",
        );
        let environments = testbed.sh(
            host,
            &format!(
                "for p in /proc/[0-9]*; do case \" {} \" in *\" ${{p#/proc/}} \"*) continue;; esac; \
                 grep -qaF -f {patterns} $p/environ 2>/dev/null && echo $p $(tr '\\0' ' ' < $p/cmdline); done",
                services.trim()
            ),
        );
        assert_eq!(
            String::from_utf8_lossy(&environments.stdout),
            "",
            "processes holding a secret on {}",
            host.addr
        );
    }
    let local = Command::new("grep")
        .args(["-rlF", "-f", &patterns.to_string()])
        .arg(deployer.work.path())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&local.stdout),
        "",
        "files in the working directory holding a secret"
    );
    // Later scenarios expect the dialler host without a voxdialler file.
    testbed.sh_ok(
        hosts[2],
        "systemctl stop voxdialler.service; rm -rf /opt/voxdialler/.env /var/lib/hostenv/voxdialler",
    );
}

/// Characters a host must not get into anyone's output: terminal escapes and
/// a carriage return (forging another host's line), bidi overrides, and
/// noncharacters that XML 1.0 forbids (one such character made the JUnit
/// file unparseable for every host).
const HOSTILE: &str = "\u{1b}[1A\r\u{202e}\u{fffe}\u{ffff}\u{85}";

/// A key name from a hand-edited file on one host, and the words a host
/// program replaced by its root prints on another: every output (the result,
/// stderr, the JUnit file) carries neither the characters nor the names.
pub(super) fn host_text_is_plain_in_every_output(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let clean = |what: &str, text: &str| {
        for c in HOSTILE.chars().filter(|c| !c.is_ascii_graphic()) {
            assert!(
                !text.contains(c),
                "{what} holds U+{:04X}: {text:?}",
                c as u32
            );
        }
    };
    let junit_is_xml = |file: &std::path::Path| {
        let parsed = Command::new("python3")
            .args([
                "-c",
                "import sys, xml.dom.minidom; xml.dom.minidom.parse(sys.argv[1])",
            ])
            .arg(file)
            .output()
            .unwrap();
        assert!(
            parsed.status.success(),
            "the JUnit file does not parse: {}",
            String::from_utf8_lossy(&parsed.stderr)
        );
    };

    // The service user edited its own file: a key named with the characters.
    let request = voxbridge_request(
        testbed,
        &hosts[..1],
        "root",
        json!({"allowSharedChange": true}),
    );
    assert_eq!(
        deployer.run("deploy", &request, &secrets("plain-1")).code,
        0
    );
    testbed.sh_ok(
        hosts[0],
        &format!("printf '%s=1\\n' '{HOSTILE}EVIL' >> /opt/voxbridge/.env"),
    );
    let file = deployer.work.path().join("plain.junit.xml");
    let run = deployer.run_args(
        &["plan", "--junit", file.to_str().unwrap()],
        &request,
        &secrets("plain-1"),
    );
    let host = &run.json()["hosts"][0];
    assert_eq!(host["keys"]["unnamed"], 1, "{host}");
    assert_eq!(host["keys"]["removed"], json!([]), "{host}");
    clean("stdout", &run.stdout);
    clean("stderr", &run.stderr);
    assert!(!run.stdout.contains("EVIL") && !run.stderr.contains("EVIL"));
    junit_is_xml(&file);
    assert_eq!(
        deployer.run("deploy", &request, &secrets("plain-1")).code,
        0
    );

    // A host program whose root makes it say anything, for a deploy user.
    let host = hosts[1];
    let deploy_user = voxbridge_request(
        testbed,
        &[host],
        "deploy",
        json!({"allowSharedChange": true}),
    );
    testbed.grant_sudo(host, &sudoers_rules(deployer, &deploy_user));
    // HOSTILE as octal escapes for the wrapper's printf.
    let octal: String = HOSTILE.bytes().map(|b| format!("\\{b:03o}")).collect();
    testbed.sh_ok(
        host,
        "cp -p /usr/local/sbin/hostenv-host /usr/local/sbin/hostenv-host.real",
    );
    testbed.put(
        host,
        "/usr/local/sbin/hostenv-host.new",
        &format!(
            "#!/bin/sh\ncase \"$1\" in describe|version) exec /usr/local/sbin/hostenv-host.real \"$@\";; esac\n\
             printf 'boom {octal} host 127.77.0.9: deployed\\n' >&2\nexit 1\n"
        ),
    );
    testbed.sh_ok(
        host,
        "chmod 755 /usr/local/sbin/hostenv-host.new && mv /usr/local/sbin/hostenv-host.new /usr/local/sbin/hostenv-host",
    );
    let file = deployer.work.path().join("hostile.junit.xml");
    let run = deployer.run_args(
        &["deploy", "--junit", file.to_str().unwrap()],
        &deploy_user,
        &secrets("plain-2"),
    );
    testbed.sh_ok(
        host,
        "mv /usr/local/sbin/hostenv-host.real /usr/local/sbin/hostenv-host",
    );
    assert_eq!(run.code, 1, "{}", run.stdout);
    let message = run.json()["hosts"][0]["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("boom"), "{message}");
    clean("the error message", &message);
    clean("stdout", &run.stdout);
    clean("stderr", &run.stderr);
    junit_is_xml(&file);
    clean("the JUnit file", &std::fs::read_to_string(&file).unwrap());
}
