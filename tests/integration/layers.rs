//! The crate's layers point one way (`src/lib.rs`): a module uses only its
//! own layer and the layers before it, and the host program (`host/`, a
//! package of its own, re-exported as `crate::host`) uses nothing of the
//! rest. Read from the source: every `crate::NAME` a code line names, and the
//! host package's dependencies.

use std::collections::BTreeSet;
use std::path::Path;

use crate::common::repo_root;

/// The top-level modules in order: each may use those at or before it.
const LAYERS: [&str; 8] = [
    "protocol",
    "settings",
    "render",
    "prepare",
    "transport",
    "deploy",
    "commands",
    "cli",
];

/// Modules outside the order: what they may use.
fn allowed(module: &str) -> Option<Allowed> {
    match module {
        // The program on each host (`host/`): nothing of the agent's side.
        "host" => Some(Allowed::Nothing),
        // Test-only pause points, usable from any layer.
        "fault" => Some(Allowed::Nothing),
        // The fuzz targets' invariants, above every layer.
        "fuzzing" => Some(Allowed::Everything),
        _ => LAYERS
            .iter()
            .position(|layer| *layer == module)
            .map(Allowed::UpTo),
    }
}

#[derive(Debug, Clone, Copy)]
enum Allowed {
    Nothing,
    UpTo(usize),
    Everything,
}

fn may_use(user: &str, used: &str) -> bool {
    if user == used || used == "fault" {
        return true;
    }
    match (allowed(user), allowed(used)) {
        (Some(Allowed::Nothing), _) => false,
        (Some(Allowed::Everything), _) => true,
        // The host program's name checks are facts every layer may rely on.
        (Some(Allowed::UpTo(_)), Some(Allowed::Nothing)) => used == "host",
        (Some(Allowed::UpTo(at)), Some(Allowed::UpTo(of))) => of <= at,
        _ => false,
    }
}

/// Every `crate::NAME` on a line of code (comments and doc comments aside).
fn crate_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        let code = code.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                names.insert(name);
            }
            rest = after;
        }
        // `use crate::{a, b}` names several at once.
        if let Some(group) = code.strip_prefix("use crate::{") {
            for name in group.split(['}', ',', ';']).map(str::trim) {
                let first = name.split("::").next().unwrap_or_default();
                if !first.is_empty() {
                    names.insert(first.to_string());
                }
            }
        }
    }
    names
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_module_uses_only_the_layers_before_it() {
    let src = repo_root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    let mut seen = BTreeSet::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let first = relative.components().next().unwrap().as_os_str();
        let module = first.to_string_lossy().trim_end_matches(".rs").to_string();
        // The binaries use the library from outside, as any user would.
        if ["main", "lib", "bin"].contains(&module.as_str()) {
            continue;
        }
        assert!(
            allowed(&module).is_some(),
            "`src/{}` is in no layer: add it to LAYERS or to `allowed`",
            relative.display()
        );
        seen.insert(module.clone());
        let text = std::fs::read_to_string(file).unwrap();
        for used in crate_names(&text) {
            if !may_use(&module, &used) {
                wrong.push(format!("src/{} uses crate::{used}", relative.display()));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "arrows the wrong way:\n{}",
        wrong.join("\n")
    );
    // Every layer is there: a renamed folder cannot pass by matching nothing.
    for layer in LAYERS {
        assert!(seen.contains(layer), "no module `{layer}` under src/");
    }
}

#[test]
fn the_layer_rule_catches_a_wrong_arrow() {
    assert!(may_use("deploy", "transport"));
    assert!(may_use("transport", "transport"));
    assert!(!may_use("protocol", "commands"));
    assert!(!may_use("settings", "prepare"));
    assert!(!may_use("host", "protocol"));
    assert!(may_use("prepare", "host"));
    assert_eq!(
        crate_names("use crate::protocol::error::Error;\n// crate::cli\nlet x = crate::deploy::y; // crate::commands\nuse crate::{render, settings::catalog};"),
        ["deploy", "protocol", "render", "settings"]
            .map(String::from)
            .into_iter()
            .collect()
    );
}

/// The host program is a package of its own so that what runs as root
/// builds alone, static, from a few crates: it depends on nothing of the
/// agent's (no SSH, TLS, JSON or HTTP code) and on these alone.
#[test]
fn the_host_program_depends_on_nothing_of_the_agents() {
    let manifest = std::fs::read_to_string(repo_root().join("host/Cargo.toml")).unwrap();
    let dependencies: Vec<&str> = manifest
        .split("\n[dependencies]\n")
        .nth(1)
        .expect("host/Cargo.toml has [dependencies]")
        .lines()
        .take_while(|line| !line.starts_with('['))
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|line| line.split([' ', '=']).next().unwrap())
        .collect();
    assert_eq!(dependencies, ["rustix", "sha2"], "{manifest}");
    let tree = std::process::Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-p",
            "hostenv-host",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(
        tree.status.success(),
        "{}",
        String::from_utf8_lossy(&tree.stderr)
    );
    let tree = String::from_utf8_lossy(&tree.stdout);
    for agent_only in ["hostenv ", "ssh2", "openssl", "ureq", "serde"] {
        assert!(
            !tree.contains(agent_only),
            "the host program builds {agent_only}:\n{tree}"
        );
    }
}
