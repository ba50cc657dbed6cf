//! The console's build-time `.env` read back by the real readers: the npm
//! packages dotenv + dotenv-expand, and Vite's own `loadEnv` (tests/node,
//! installed by `npm ci --prefix tests/node`, which scripts/test.sh runs).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use hostenv::render::dotenv;
use pretty_assertions::assert_eq;
use serde_json::Value;

use crate::common::{repo_root, run_hostenv, TempDir};

fn read_with_node(dir: &Path) -> Value {
    let node_dir = repo_root().join("tests/node");
    assert!(
        node_dir.join("node_modules/vite").is_dir(),
        "tests/node has no node_modules: run `npm ci --prefix tests/node` (scripts/test.sh does)"
    );
    let output = Command::new("node")
        .arg(node_dir.join("read-env.mjs"))
        .arg(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .expect("run node");
    assert!(
        output.status.success(),
        "node failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("node prints JSON")
}

const PIECES: &[&str] = &[
    "'",
    "\"",
    "`",
    "$",
    "${VITE_X}",
    "$HOME",
    "\\",
    "\\$",
    "\\n",
    "#",
    " ",
    "\t",
    "\n",
    "=",
    "a",
    "Z",
    "9",
    "é",
    "✓",
    "https://",
    "%",
    "{",
    "}",
    "export ",
];

#[test]
fn generated_values_read_back_exactly_through_dotenv_and_vite() {
    let mut seed: u64 = 0x1234_5678_9ABC_DEF1;
    let mut next = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let mut entries: Vec<(String, String)> = Vec::new();
    let mut refused = 0;
    while entries.len() < 600 {
        let value: String = (0..next(16)).map(|_| PIECES[next(PIECES.len())]).collect();
        if dotenv::quote(&value).is_ok() {
            entries.push((format!("VITE_K{}", entries.len()), value));
        } else {
            refused += 1;
        }
    }
    assert!(
        refused < entries.len() / 2,
        "refused {refused} of {}",
        entries.len() + refused
    );
    for must in ["'", "\"", "$", "\n", "\\n", "#"] {
        assert!(
            entries.iter().any(|(_, v)| v.contains(must)),
            "no value with {must:?}"
        );
    }
    let dir = TempDir::new("vite");
    let text = dotenv::render(entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
    std::fs::write(dir.path().join(".env"), &text).unwrap();
    let read = read_with_node(dir.path());
    let expected: serde_json::Map<String, Value> = entries
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    assert_eq!(
        read["dotenv"],
        Value::Object(expected.clone()),
        "dotenv + dotenv-expand"
    );
    assert_eq!(read["vite"], Value::Object(expected), "vite loadEnv");
}

#[test]
fn build_env_output_is_what_vite_loads() {
    let dir = TempDir::new("build-env");
    std::fs::write(
        dir.path().join(".env.example"),
        "VITE_API_URL=\nVITE_PRICE=\nVITE_NOTE=\n",
    )
    .unwrap();
    let request = serde_json::json!({
        "apiVersion": "hostenv/v1", "kind": "BuildEnv", "contract": ".env.example",
        "env": {
            "VITE_API_URL": {"value": "https://api.example/v1?x=1#top"},
            "VITE_PRICE": {"value": "costs $5 or ${VITE_API_URL}"},
            "VITE_NOTE": {"value": "it's \"quoted\"\nand multi-line"}
        }
    });
    let run = run_hostenv(
        &["build-env"],
        dir.path(),
        &BTreeMap::new(),
        Some(request.to_string().as_bytes()),
    );
    assert_eq!(run.code, 0, "{}", run.stdout);
    let read = read_with_node(dir.path());
    let expected = serde_json::json!({
        "VITE_API_URL": "https://api.example/v1?x=1#top",
        "VITE_PRICE": "costs $5 or ${VITE_API_URL}",
        "VITE_NOTE": "it's \"quoted\"\nand multi-line",
    });
    assert_eq!(read["vite"], expected);
    assert_eq!(read["dotenv"], expected);
}
