//! Running the real binary the way CI does: a request in, one JSON document out.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// stdout must be exactly one JSON document; a result also keeps the
    /// protocol's contract (`assert_outcome_contract`).
    pub fn json(&self) -> Value {
        let document: Value = serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{}", self.stdout));
        if document["kind"] == "Result" {
            assert_outcome_contract(&document, self.code);
        }
        document
    }
}

/// `exitCode` is the process's exit code, `ok` is true exactly when it is 0,
/// and `error` is set exactly when `ok` is false. Every result any test reads
/// through `Run::json` is held to it, whatever the action.
pub fn assert_outcome_contract(result: &Value, code: i32) {
    assert_eq!(
        result["exitCode"], code,
        "exitCode is not the exit code: {result:#}"
    );
    assert_eq!(
        result["ok"],
        code == 0,
        "ok does not follow the exit code: {result:#}"
    );
    assert_eq!(
        result["error"].is_null(),
        code == 0,
        "error must be set exactly when ok is false: {result:#}"
    );
    if code != 0 {
        assert!(result["error"]["kind"].is_string() && result["error"]["message"].is_string());
    }
}

/// Runs `hostenv args` in `cwd` with exactly `env` (plus PATH) and `stdin`.
pub fn run_hostenv(
    args: &[&str],
    cwd: &Path,
    env: &BTreeMap<String, String>,
    stdin: Option<&[u8]>,
) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hostenv"));
    command
        .args(args)
        .current_dir(cwd)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("start hostenv");
    let mut input = child.stdin.take().expect("stdin");
    // A refused oversized request may close stdin early; that is not a test failure.
    let _ = input.write_all(stdin.unwrap_or_default());
    drop(input);
    let output = child.wait_with_output().expect("wait for hostenv");
    Run {
        code: output.status.code().expect("exit code"),
        stdout: String::from_utf8(output.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(output.stderr).expect("stderr is UTF-8"),
    }
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path =
            std::env::temp_dir().join(format!("hostenv-test-{}-{label}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// The forms a leaked secret could take in text: raw, JSON-escaped, base64,
/// URL-encoded, shell-quoted, and backslash-escaped as in an env file.
pub fn leak_forms(secret: &str) -> Vec<String> {
    use base64::Engine;
    let json = serde_json::to_string(secret).expect("json");
    let mut escaped = String::new();
    for c in secret.chars() {
        if matches!(c, '"' | '\\' | '`' | '$') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    let mut forms = vec![
        secret.to_string(),
        json[1..json.len() - 1].to_string(),
        base64::engine::general_purpose::STANDARD.encode(secret),
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(secret),
        url_encode(secret),
        format!("'{}'", secret.replace('\'', r"'\''")),
        escaped,
    ];
    forms.sort();
    forms.dedup();
    forms
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Panics naming the canary and the channel when any form of any canary appears.
pub fn assert_no_leak(channel: &str, text: &str, canaries: &[String]) {
    for canary in canaries {
        for form in leak_forms(canary) {
            assert!(
                !text.contains(&form),
                "a secret canary (form {form:?}) leaked on {channel}:\n{text}"
            );
        }
    }
}
