//! The Jenkins library (`vars/`) under Groovy 2.4.21, the Groovy Jenkins runs,
//! with the pipeline steps stubbed (tests/groovy/Pipeline.groovy) and the
//! stubbed `sh` running the binary this build made. The tests themselves are
//! Groovy (tests/groovy/steps_test.groovy); this drives them: the `offline`
//! suite on its own, the `testbed` suite inside the deploy scenarios.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use serde_json::json;

use crate::common::{repo_root, TempDir};
use crate::deploy::{expected_voxbridge_file, file_on, secrets, Deployer};
use crate::testbed::TestHost;

/// JAVA_HOME as set, or the JDK the `java` on PATH belongs to.
fn java_home() -> PathBuf {
    if let Some(home) = std::env::var_os("JAVA_HOME") {
        return PathBuf::from(home);
    }
    let java = Command::new("sh")
        .args(["-c", "readlink -f \"$(command -v java)\""])
        .output()
        .expect("sh runs");
    let java = PathBuf::from(String::from_utf8_lossy(&java.stdout).trim());
    java.parent()
        .and_then(|bin| bin.parent())
        .expect("java lives in <home>/bin")
        .to_path_buf()
}

/// Runs one suite of steps_test.groovy; its output, after asserting it passed.
fn groovy(suite: &str, extra: &[(&str, String)]) -> String {
    let work = TempDir::new(&format!("groovy-{suite}"));
    let root = repo_root();
    let output = Command::new("groovy")
        .arg("-cp")
        .arg(format!(
            "{}:{}",
            root.join("tests/groovy/stubs").display(),
            root.join("tests/groovy").display()
        ))
        .arg(root.join("tests/groovy/steps_test.groovy"))
        .arg(suite)
        .current_dir(work.path())
        .env("JAVA_HOME", java_home())
        .env("HOSTENV_REPO", &root)
        .env("HOSTENV_BINARY", env!("CARGO_BIN_EXE_hostenv"))
        .env("HOSTENV_HOST_BINARY", crate::testbed::static_host_program())
        .env("HOSTENV_WORK", work.path())
        .envs(extra.iter().map(|(k, v)| (*k, v)))
        .output()
        .expect("groovy runs (the `groovy` package, scripts/setup.sh)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the Groovy suite `{suite}` failed:\n{stdout}\n{stderr}"
    );
    assert!(!stdout.contains("FAILED"), "{stdout}");
    stdout
}

#[test]
fn the_library_pins_this_version() {
    let engine = std::fs::read_to_string(repo_root().join("vars/hostenv.groovy")).unwrap();
    let pinned = format!(
        "static final String BINARY_VERSION = '{}'",
        env!("CARGO_PKG_VERSION")
    );
    assert!(
        engine.contains(&pinned),
        "vars/hostenv.groovy must say {pinned}"
    );
}

#[test]
fn library_steps_under_groovy() {
    let out = groovy("offline", &[]);
    // Every test ran, not just the first few.
    assert_eq!(
        out.lines().filter(|l| l.starts_with("ok ")).count(),
        24,
        "{out}"
    );
}

/// `hostenvDeploy`, `hostenvPlan` and `hostenvDrift` against the testbed's
/// hosts; afterwards the hosts hold the first generation's file.
pub(crate) fn steps_on_the_testbed(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let store = |generation: &str| {
        let values = secrets(generation);
        let mut store = BTreeMap::new();
        for (id, key) in [
            ("tb-jwt", "JWT_SECRET"),
            ("tb-mongo", "MONGODB_URI"),
            ("tb-redis", "REDIS_URL"),
        ] {
            store.insert(id, json!({"type": "string", "value": values[key]}));
        }
        let key = std::fs::read_to_string(&testbed.client_key).unwrap();
        store.insert(
            "testbed-key",
            json!({"type": "sshUserPrivateKey", "content": key}),
        );
        store.insert(
            "plan-key",
            json!({"type": "string", "value": "CANARY-groovy-plan-key-5f1d2c9a8b7e6f40"}),
        );
        store
    };
    let config = json!({
        "hosts": hosts.iter().map(|h| h.addr.clone()).collect::<Vec<_>>(),
        "knownHosts": testbed.known_hosts,
        "contract": crate::deploy::VOXBRIDGE_CONTRACT,
        "store": {"first": store("groovy-one"), "second": store("groovy-two")},
    });
    let out = groovy("testbed", &[("TESTBED_JSON", config.to_string())]);
    assert_eq!(
        out.lines().filter(|l| l.starts_with("ok ")).count(),
        5,
        "{out}"
    );
    for host in hosts {
        assert_eq!(
            file_on(testbed, host, "/opt/voxbridge/.env"),
            (
                "voxbridge:voxbridge 600".to_string(),
                expected_voxbridge_file(&secrets("groovy-one"))
            ),
            "{}",
            host.addr
        );
    }
}

/// A Jenkins admin's first day on a testbed host, step by step as
/// docs/jenkins.md walks it: the library's credential map with the staging
/// environment's SSH key credential (its username is the login user) and
/// known_hosts file credential; `hostenvRequest` writes the request; root
/// runs `host-install` with it and installs the rules `sudoers` prints for it;
/// `hostenvDeploy` deploys staging as the deploy user. Prints each step's time.
pub(crate) fn a_jenkins_admins_first_day(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let host = hosts[1];
    let day = TempDir::new("first-day");
    let values = secrets("first-day");
    let key = std::fs::read_to_string(&testbed.client_key).unwrap();
    let store: serde_json::Map<String, serde_json::Value> = [
        ("tb-jwt", "JWT_SECRET"),
        ("tb-mongo", "MONGODB_URI"),
        ("tb-redis", "REDIS_URL"),
    ]
    .into_iter()
    .map(|(id, k)| {
        (
            id.to_string(),
            json!({"type": "string", "value": values[k]}),
        )
    })
    .collect();
    let config = json!({
        "dir": day.path(),
        "hosts": [host.addr],
        "knownHosts": testbed.known_hosts,
        "key": key,
        "contract": crate::deploy::VOXBRIDGE_CONTRACT,
        "store": store,
    })
    .to_string();
    let mut times = Vec::new();
    let started = Instant::now();
    groovy(
        "first-day",
        &[
            ("FIRST_DAY_JSON", config.clone()),
            ("FIRST_DAY_PHASE", "request".into()),
        ],
    );
    times.push(("hostenvRequest (Groovy harness)", started.elapsed()));

    // Root's part, with the file the pipeline wrote: the variables it names
    // set to a root login's key, as docs/jenkins.md says.
    let request = day
        .path()
        .join("workspace/hostenv-requests/voxbridge-staging.json");
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&request).unwrap()).unwrap();
    let ssh = &file["ssh"];
    let root_login: BTreeMap<String, String> = [
        (
            ssh["identityFileEnv"].as_str().unwrap(),
            testbed.client_key.display().to_string(),
        ),
        (ssh["passphraseEnv"].as_str().unwrap(), String::new()),
        (ssh["userEnv"].as_str().unwrap(), "root".to_string()),
        (
            ssh["knownHostsFileEnv"].as_str().unwrap(),
            testbed.known_hosts.display().to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let catalog = repo_root().join("resources/io/hostenv/catalog.json");
    let (request_arg, catalog_arg) = (request.to_str().unwrap(), catalog.to_str().unwrap());
    let started = Instant::now();
    let installed = crate::common::run_hostenv(
        &[
            "host-install",
            "--request",
            request_arg,
            "--catalog",
            catalog_arg,
        ],
        day.path(),
        &root_login,
        None,
    );
    assert_eq!(
        installed.code, 0,
        "{}\n{}",
        installed.stdout, installed.stderr
    );
    times.push(("hostenv host-install (root)", started.elapsed()));
    let started = Instant::now();
    let rules = crate::common::run_hostenv(
        &[
            "sudoers",
            "--request",
            request_arg,
            "--catalog",
            catalog_arg,
        ],
        day.path(),
        &BTreeMap::new(),
        None,
    );
    assert_eq!(rules.code, 0, "{}", rules.stdout);
    assert!(
        rules.stdout.contains("lock voxbridge staging exclusive"),
        "{}",
        rules.stdout
    );
    testbed.grant_sudo(host, &rules.stdout);
    times.push(("hostenv sudoers + visudo (root)", started.elapsed()));

    let started = Instant::now();
    groovy(
        "first-day",
        &[
            ("FIRST_DAY_JSON", config),
            ("FIRST_DAY_PHASE", "deploy".into()),
        ],
    );
    times.push(("hostenvDeploy staging (Groovy harness)", started.elapsed()));
    assert_eq!(
        file_on(testbed, host, "/opt/voxbridge/.env"),
        (
            "voxbridge:voxbridge 600".to_string(),
            // The map's staging environment logs at debug.
            expected_voxbridge_file(&values).replace("LOG_LEVEL=\"info\"", "LOG_LEVEL=\"debug\"")
        )
    );
    let log = testbed.sh_ok(host, "tail -n 1 /var/lib/hostenv/voxbridge/audit.log");
    assert!(log.contains("\"staging\""), "{log}");
    for (step, took) in times {
        eprintln!("first day: {step}: {:.1} s", took.as_secs_f64());
    }
}
