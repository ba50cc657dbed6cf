//! Request limits and the command line's own errors, which still answer in JSON.

use std::collections::BTreeMap;

use crate::common::{repo_root, run_hostenv};

#[test]
fn a_request_over_one_mebibyte_is_refused_unread() {
    let padding = "x".repeat(1024 * 1024);
    let request =
        format!("{{\"apiVersion\":\"hostenv/v1\",\"kind\":\"Deploy\",\"service\":\"{padding}\"}}");
    let run = run_hostenv(
        &["check"],
        &repo_root(),
        &BTreeMap::new(),
        Some(request.as_bytes()),
    );
    assert_eq!(run.code, 2);
    let result = run.json();
    assert_eq!(result["error"]["kind"], "requestTooLarge");
    assert_eq!(result["hosts"], serde_json::json!([]));
}

#[test]
fn a_usage_error_still_prints_one_result_document() {
    let run = run_hostenv(
        &["check", "--no-such-flag"],
        &repo_root(),
        &BTreeMap::new(),
        None,
    );
    assert_eq!(run.code, 2);
    assert_eq!(run.json()["error"]["kind"], "usage");
    assert!(run.stderr.contains("--no-such-flag"));
}

#[test]
fn a_missing_request_file_is_its_own_error() {
    let run = run_hostenv(
        &["check", "--request", "/nonexistent/request.json"],
        &repo_root(),
        &BTreeMap::new(),
        None,
    );
    assert_eq!(run.code, 2);
    assert_eq!(run.json()["error"]["kind"], "requestUnreadable");
}
