//! The checked-in schemas are exactly what the binary generates.

use std::collections::BTreeMap;

use pretty_assertions::assert_eq;

use crate::common::{repo_root, run_hostenv};

fn assert_schema_current(which: &str) {
    let run = run_hostenv(&["schema", which], &repo_root(), &BTreeMap::new(), None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let path = repo_root().join(format!("schema/{which}.schema.json"));
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        checked_in, run.stdout,
        "{} is stale: regenerate it with `cargo run -- schema {which} > schema/{which}.schema.json`",
        path.display()
    );
}

#[test]
fn request_schema_is_current() {
    assert_schema_current("request");
}

#[test]
fn result_schema_is_current() {
    assert_schema_current("result");
}

#[test]
fn version_schema_is_current() {
    assert_schema_current("version");
}

/// Within v1 a release may add result fields (docs/protocol.md): the result
/// schema leaves every object open, so a consumer validating with it keeps
/// accepting what a later release adds; requests stay closed.
#[test]
fn results_are_open_to_added_fields_and_requests_are_not() {
    let read = |which: &str| -> String {
        std::fs::read_to_string(repo_root().join(format!("schema/{which}.schema.json"))).unwrap()
    };
    for which in ["result", "version"] {
        assert!(
            !read(which).contains("\"additionalProperties\": false"),
            "{which}.schema.json closes an object"
        );
    }
    assert!(read("request").contains("\"additionalProperties\": false"));
}

#[test]
fn every_example_request_validates_against_the_request_schema() {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("schema/request.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let mut seen = 0;
    for entry in std::fs::read_dir(repo_root().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let request: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let errors: Vec<String> = validator
                .iter_errors(&request)
                .map(|e| e.to_string())
                .collect();
            assert!(errors.is_empty(), "{}: {errors:?}", path.display());
            seen += 1;
        }
    }
    assert!(
        seen >= 4,
        "expected an example request per service and the console"
    );
}

#[test]
fn version_json_lists_the_supported_api_version() {
    let run = run_hostenv(&["version", "--json"], &repo_root(), &BTreeMap::new(), None);
    assert_eq!(run.code, 0);
    let version = run.json();
    assert_eq!(version["apiVersions"], serde_json::json!(["hostenv/v1"]));
    assert_eq!(version["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(version["hostProtocol"], hostenv::host::PROTOCOL);
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("schema/version.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    assert!(validator.is_valid(&version), "{version:#}");
    // The digest of the catalog the Groovy steps load: the same file, byte for byte.
    let catalog = std::fs::read(repo_root().join("resources/io/hostenv/catalog.json")).unwrap();
    let out = std::process::Command::new("sha256sum")
        .arg(repo_root().join("resources/io/hostenv/catalog.json"))
        .output()
        .unwrap();
    let hex = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert!(!catalog.is_empty());
    assert_eq!(version["catalogDigest"], format!("sha256:{hex}"));
}
