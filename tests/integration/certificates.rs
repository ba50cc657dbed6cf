//! SSH user certificates against a host whose sshd trusts only a user CA (no
//! authorized keys at all), as teams that sign keys with Vault, Teleport or
//! step-ca run them: a `-cert.pub` beside the key is offered as OpenSSH would,
//! a certificate can be named (a path, or base64 content), and one that is
//! expired, not yet valid or for another principal is named as such.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use serde_json::{json, Value};

use crate::deploy::{secrets, statuses, voxbridge_request, Deployer};
use crate::testbed::{TestHost, Testbed};

fn keygen(args: &[&str]) {
    let output = Command::new("ssh-keygen").args(args).output().unwrap();
    assert!(output.status.success(), "ssh-keygen {args:?}: {output:?}");
}

/// A copy of the testbed's client key at `name` (with its .pub), signed by
/// the CA for `principal` over `validity` (ssh-keygen -V) when given.
fn key(dir: &Path, name: &str, signed: Option<(&str, &str)>, client: &Path) -> PathBuf {
    let path = dir.join(name);
    std::fs::copy(client, &path).unwrap();
    std::fs::copy(
        client.with_extension("pub"),
        dir.join(format!("{name}.pub")),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    if let Some((principal, validity)) = signed {
        let ca = dir.join("ca");
        let public = dir.join(format!("{name}.pub"));
        keygen(&[
            "-q",
            "-s",
            ca.to_str().unwrap(),
            "-I",
            &format!("ci-{name}"),
            "-n",
            principal,
            "-V",
            validity,
            public.to_str().unwrap(),
        ]);
    }
    path
}

/// The host's sshd trusts only certificates signed by `ca`.
fn trust_only_the_ca(testbed: &Testbed, host: &TestHost, ca: &Path) {
    // Where the host's sshd can read it (its /tmp is its own).
    let trusted = testbed.dir.join("user-ca.pub");
    std::fs::copy(ca, &trusted).unwrap();
    let ca = trusted.as_path();
    testbed.reconfigure_sshd(host, |text| {
        text.lines()
            .map(|line| {
                if line.starts_with("AuthorizedKeysFile ") {
                    format!(
                        "AuthorizedKeysFile none\nTrustedUserCAKeys {}\n",
                        ca.display()
                    )
                } else {
                    format!("{line}\n")
                }
            })
            .collect()
    });
}

fn deploy(deployer: &Deployer, request: &Value, extra: &[(&str, String)]) -> Value {
    let mut env: BTreeMap<String, String> = secrets("cert");
    for (name, value) in extra {
        env.insert(name.to_string(), value.clone());
    }
    deployer.run("deploy", request, &env).json()
}

fn error(result: &Value) -> (String, String) {
    let error = &result["hosts"][0]["error"];
    (
        error["kind"].as_str().unwrap_or_default().into(),
        error["message"].as_str().unwrap_or_default().into(),
    )
}

#[test]
fn a_host_that_trusts_only_a_user_ca_takes_a_valid_certificate() {
    let testbed = Testbed::start(1);
    let deployer = Deployer::new(&testbed, "certificates");
    let host = testbed.host(0);
    let dir = deployer.work.path().join("keys");
    std::fs::create_dir_all(&dir).unwrap();
    keygen(&[
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-C",
        "user-ca",
        "-f",
        dir.join("ca").to_str().unwrap(),
    ]);
    trust_only_the_ca(&testbed, host, &dir.join("ca.pub"));

    let client = &testbed.client_key;
    let mut request = voxbridge_request(&testbed, &[host], "root", json!({}));
    request["ssh"]["identityFileEnv"] = json!("CERT_KEY");
    let with_key = |path: &Path| [("CERT_KEY", path.display().to_string())];

    // The key alone is no longer enough.
    let plain = key(&dir, "plain", None, client);
    let result = deploy(&deployer, &request, &with_key(&plain));
    assert_eq!(error(&result).0, "authFailed", "{result:#}");

    // A certificate beside the key is offered with it.
    let valid = key(&dir, "valid", Some(("root", "-5m:+1h")), client);
    assert!(dir.join("valid-cert.pub").exists());
    let result = deploy(&deployer, &request, &with_key(&valid));
    assert_eq!(statuses(&result), ["deployed"], "{result:#}");

    // Expired, not yet valid, or for another principal: named, not offered.
    for (name, principal, validity, says) in [
        (
            "expired",
            "root",
            "20200101:20200102",
            "expired at 2020-01-02",
        ),
        ("early", "root", "+1d:+2d", "is not valid before"),
        ("other", "deploy", "-5m:+1h", "is for `deploy`, not `root`"),
    ] {
        let path = key(&dir, name, Some((principal, validity)), client);
        let result = deploy(&deployer, &request, &with_key(&path));
        let (kind, message) = error(&result);
        assert_eq!(kind, "certificateUnusable", "{name}: {result:#}");
        assert!(
            message.contains(&format!("`ci-{name}`")) && message.contains(says),
            "{message}"
        );
    }

    // Named explicitly: a path variable, or base64 content with a base64 key (Bitbucket).
    let mut named = request.clone();
    named["ssh"]["certificateFileEnv"] = json!("CERT_FILE");
    let result = deploy(
        &deployer,
        &named,
        &[
            ("CERT_KEY", plain.display().to_string()),
            (
                "CERT_FILE",
                dir.join("valid-cert.pub").display().to_string(),
            ),
        ],
    );
    assert_eq!(statuses(&result), ["unchanged"], "{result:#}");
    let engine = &base64::engine::general_purpose::STANDARD;
    let mut content = request.clone();
    content["ssh"] = json!({
        "user": "root",
        "knownHosts": testbed.known_hosts.to_str().unwrap(),
        "identityEnv": "KEY_B64",
        "certificateEnv": "CERT_B64",
    });
    let result = deploy(
        &deployer,
        &content,
        &[
            ("KEY_B64", engine.encode(std::fs::read(&plain).unwrap())),
            (
                "CERT_B64",
                engine.encode(std::fs::read(dir.join("valid-cert.pub")).unwrap()),
            ),
        ],
    );
    assert_eq!(statuses(&result), ["unchanged"], "{result:#}");
    // Something that is not a certificate is refused before any host.
    let result = deploy(
        &deployer,
        &named,
        &[
            ("CERT_KEY", plain.display().to_string()),
            ("CERT_FILE", dir.join("plain.pub").display().to_string()),
        ],
    );
    assert_eq!(
        result["error"]["field"], "/ssh/certificateFileEnv",
        "{result:#}"
    );
}
