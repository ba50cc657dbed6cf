//! The Jenkins library (`vars/`) under Groovy 2.4.21, the Groovy Jenkins runs,
//! with the pipeline steps stubbed (tests/groovy/Pipeline.groovy) and the
//! stubbed `sh` running the binary this build made. The tests themselves are
//! Groovy (tests/groovy/steps_test.groovy); this drives them: the `offline`
//! suite on its own, the `testbed` suite inside the deploy scenarios.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

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
