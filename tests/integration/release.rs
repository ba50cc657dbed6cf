//! The release (scripts/release.sh): a deterministic archive whose checksum
//! verifies, fully static binaries, and the static `hostenv` deploying to a
//! testbed host, where it installs the static `hostenv-host`.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use crate::common::{repo_root, TempDir};
use crate::deploy::{expected_voxbridge_file, file_on, secrets, voxbridge_request, Deployer};
use crate::testbed::Testbed;

fn run(command: &mut Command) -> String {
    String::from_utf8_lossy(&crate::testbed::run(command).stdout).into_owned()
}

/// ldd says so for a static executable (glibc's "not a dynamic executable",
/// or "statically linked" for a static PIE).
fn is_static(ldd: &std::process::Output) -> bool {
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&ldd.stdout),
        String::from_utf8_lossy(&ldd.stderr)
    );
    said.contains("statically linked") || said.contains("not a dynamic executable")
}

#[test]
fn the_release_is_static_verifiable_and_deploys() {
    // The testbed first: it is taken by one test at a time, so no other
    // test's hosts wait on two cores busy with a cold static build (a fresh
    // clone's build once starved a handshake past its timeout).
    let testbed = Testbed::start(1);
    let built = run(Command::new("bash")
        .arg("scripts/release.sh")
        .current_dir(repo_root())
        .stderr(Stdio::inherit()));
    let archive = repo_root().join(built.lines().last().unwrap().trim());
    let dist = archive.parent().unwrap();
    let version = env!("CARGO_PKG_VERSION");
    assert!(archive.ends_with(format!("hostenv-{version}-x86_64-linux.tar.gz")));
    run(Command::new("sha256sum")
        .args(["-c", "--ignore-missing", "SHA256SUMS"])
        .current_dir(dist));

    let unpacked = TempDir::new("release");
    run(Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(unpacked.path()));
    // SHA256SUMS names the archive and both programs in it: all three hold.
    std::fs::copy(dist.join("SHA256SUMS"), unpacked.path().join("SHA256SUMS")).unwrap();
    std::fs::copy(&archive, unpacked.path().join(archive.file_name().unwrap())).unwrap();
    let sums = run(Command::new("sha256sum")
        .args(["-c", "SHA256SUMS"])
        .current_dir(unpacked.path()));
    assert_eq!(
        sums.lines().filter(|l| l.ends_with(": OK")).count(),
        3,
        "{sums}"
    );
    let dir = unpacked
        .path()
        .join(format!("hostenv-{version}-x86_64-linux"));
    for program in ["hostenv", "hostenv-host"] {
        let ldd = Command::new("ldd").arg(dir.join(program)).output().unwrap();
        assert!(is_static(&ldd), "{program} is not static: {ldd:?}");
    }
    let reported: serde_json::Value = serde_json::from_str(&run(
        Command::new(dir.join("hostenv")).args(["version", "--json"])
    ))
    .unwrap();
    assert_eq!(reported["version"], version);
    assert_eq!(reported["testFeatures"], serde_json::json!([]));
    // The pages the archive ships read on their own: every relative link of
    // the README, SECURITY, CHANGELOG and docs/ resolves inside it.
    let mut pages = vec![
        dir.join("README.md"),
        dir.join("SECURITY.md"),
        dir.join("CHANGELOG.md"),
    ];
    pages.extend(
        std::fs::read_dir(dir.join("docs"))
            .unwrap()
            .map(|entry| entry.unwrap().path()),
    );
    let mut missing = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        for link in crate::docs::relative_links(&text) {
            let target = page.parent().unwrap().join(&link);
            if !target.exists() {
                missing.push(format!("{} → {link}", page.display()));
            }
        }
    }
    assert!(missing.is_empty(), "the archive lacks: {missing:#?}");

    // The static binary deploys; as root it installs the static host program beside it.
    let deployer = Deployer::new(&testbed, "release");
    let host = testbed.host(0);
    let request = voxbridge_request(&testbed, &[host], "root", serde_json::json!({}));
    let values = secrets("static");
    let output = deployer
        .spawn_program(
            &dir.join("hostenv"),
            &["deploy"],
            &request,
            &values,
            &BTreeMap::new(),
        )
        .wait_with_output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(result["hosts"][0]["status"], "deployed");
    assert_eq!(
        file_on(&testbed, host, "/opt/voxbridge/.env"),
        (
            "voxbridge:voxbridge 600".to_string(),
            expected_voxbridge_file(&values)
        )
    );
    let installed = testbed.sh(host, "ldd /usr/local/sbin/hostenv-host");
    assert!(is_static(&installed), "{installed:?}");

    // The released binary, unchanged, deploys a service it was never built
    // with: a fourth one added to a copy of the catalog.
    let (catalog, request) = crate::deploy::a_fourth_service(&testbed, host, deployer.work.path());
    let token = BTreeMap::from([(
        "NOTES_TOKEN".to_string(),
        "CANARY-release-notes-1f2e".to_string(),
    )]);
    let output = deployer
        .spawn_program(
            &dir.join("hostenv"),
            &["deploy", "--catalog", catalog.to_str().unwrap()],
            &request,
            &token,
            &BTreeMap::new(),
        )
        .wait_with_output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert_eq!(
        file_on(&testbed, host, "/opt/voxnotes/.env").0,
        "voxnotes:voxnotes 600"
    );
}
