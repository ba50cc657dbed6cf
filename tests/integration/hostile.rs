//! Hostile input, generated: any bytes as a value either render and read back
//! exactly or are refused by key name; any JSON document, and any valid request
//! with one part replaced by arbitrary JSON, is a request or a rejection with
//! exit 2 — never a panic, never an echoed value.

use std::collections::BTreeMap;

use hostenv::prepare;
use hostenv::render::systemd;
use hostenv::Catalog;
use hostenv::Exit;
use hostenv::ExposeSecret;
use hostenv::{Deployment, Request};
use proptest::prelude::*;
use serde_json::{json, Value};

use crate::common::{repo_root, TempDir};

/// Bytes that matter to the grammars, to the detector and to UTF-8, mixed with any byte.
fn value_bytes() -> impl Strategy<Value = Vec<u8>> {
    let interesting = prop::sample::select(vec![
        b'"', b'\'', b'\\', b'$', b'`', b'#', b'=', b' ', b'\t', b'\n', b'\r', 0, 0x7f, 0xc3, 0xa9,
        0xff, 0xe2, 0x9c, 0x93, b'{', b'}',
    ]);
    prop::collection::vec(prop_oneof![any::<u8>(), interesting, b'a'..=b'z'], 0..300)
}

fn deployment(contract: &std::path::Path, key: &str, source: Value) -> Deployment {
    serde_json::from_value(json!({
        "service": "voxbridge",
        "contract": contract,
        "hosts": ["api-1.internal"],
        "env": {key: source}
    }))
    .unwrap()
}

/// Any JSON value, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z_]{1,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Every JSON pointer inside `value`.
fn pointers(value: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                pointers(v, format!("{at}/{k}"), out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                pointers(v, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_as_a_secret_file_render_exactly_or_are_refused_by_key(bytes in value_bytes()) {
        let work = TempDir::new("hostile-value");
        let contract = work.path().join("c.env.example");
        std::fs::write(&contract, "SECRET_FILE_KEY=\n").unwrap();
        let secret = work.path().join("secret");
        std::fs::write(&secret, &bytes).unwrap();
        let env: BTreeMap<String, String> =
            [("SECRET_PATH".to_string(), secret.display().to_string())].into();
        let deployment = deployment(&contract, "SECRET_FILE_KEY", json!({"secretFileEnv": "SECRET_PATH"}));
        let prepared = prepare(&deployment, "", &env, &Catalog::builtin()).unwrap();
        let key = &prepared.resolution.keys[0];
        prop_assert_eq!(&key.name, "SECRET_FILE_KEY");
        if key.status.is_problem() {
            // Refused by key name, never by quoting the value.
            let message = key.message.clone().unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes);
            let text = text.trim();
            prop_assert!(text.len() < 6 || !message.contains(text), "{}", message);
            prop_assert!(prepared.resolution.files.is_empty());
        } else {
            let file = &prepared.resolution.files[0];
            let mut expected = String::from_utf8(bytes.clone()).expect("accepted bytes are UTF-8");
            // One trailing line end is dropped, a Windows one (`\r\n`) whole.
            if let Some(line) = expected.strip_suffix("\r\n").or_else(|| expected.strip_suffix('\n')) {
                expected = line.to_string();
            }
            prop_assert_eq!(file.values[0].1.expose_secret(), expected.as_str());
            let read = systemd::parse(file.text.expose_secret());
            prop_assert_eq!(read.assignments.len(), 1);
            prop_assert_eq!(&read.assignments[0].value, &expected);
        }
    }

    #[test]
    fn any_string_from_the_environment_renders_exactly_or_is_refused(value in ".{0,200}") {
        let work = TempDir::new("hostile-env");
        let contract = work.path().join("c.env.example");
        std::fs::write(&contract, "ENV_KEY=\n").unwrap();
        let env: BTreeMap<String, String> = [("BOUND".to_string(), value.clone())].into();
        let deployment = deployment(&contract, "ENV_KEY", json!({"secretEnv": "BOUND"}));
        let prepared = prepare(&deployment, "", &env, &Catalog::builtin()).unwrap();
        if prepared.resolution.keys[0].status.is_problem() {
            prop_assert!(prepared.resolution.files.is_empty());
        } else {
            let read = systemd::parse(prepared.resolution.files[0].text.expose_secret());
            prop_assert_eq!(&read.assignments[0].value, &value);
        }
    }

    #[test]
    fn any_json_document_is_a_request_or_a_rejection(document in any_json()) {
        let bytes = serde_json::to_vec(&document).unwrap();
        hostenv::fuzzing::request(&bytes);
        // And the whole binary, in process: one result document, exit 0 or 2.
        let work = TempDir::new("hostile-json");
        let path = work.path().join("request.json");
        std::fs::write(&path, &bytes).unwrap();
        let outcome = hostenv::main_with_args(
            ["hostenv", "check", "--request", path.to_str().unwrap()].map(Into::into),
            &BTreeMap::<String, String>::new(),
        );
        prop_assert!(outcome.exit_code == 0 || outcome.exit_code == Exit::Rejected.code());
        let result: Value = serde_json::from_str(&outcome.stdout).unwrap();
        prop_assert_eq!(&result["kind"], "Result");
    }

    #[test]
    fn a_valid_request_with_any_part_replaced_is_checked_or_rejected(
        pick in any::<prop::sample::Index>(),
        replacement in any_json(),
    ) {
        let case = repo_root().join("tests/cases/deploy-host-overrides");
        let mut request: Value =
            serde_json::from_slice(&std::fs::read(case.join("request.json")).unwrap()).unwrap();
        request["contract"] = json!(case.join(request["contract"].as_str().unwrap()));
        let mut paths = Vec::new();
        pointers(&request, String::new(), &mut paths);
        let path = paths[pick.index(paths.len())].clone();
        if path.is_empty() {
            request = replacement;
        } else {
            *request.pointer_mut(&path).unwrap() = replacement;
        }
        let bytes = serde_json::to_vec(&request).unwrap();
        hostenv::fuzzing::request(&bytes);
        if let Ok(Request::Deploy(deployment)) = hostenv::parse_request(&bytes) {
            let env: BTreeMap<String, String> = BTreeMap::new();
            if let Err(error) = prepare(&deployment, "", &env, &Catalog::builtin()) {
                prop_assert_eq!(error.exit(), Exit::Rejected, "{}", error);
            }
        }
    }
}
