//! The main job, end to end, on a throwaway local host: one testbed host (real
//! systemd as PID 1 in its own namespaces, real sshd on 127.77.0.2, the
//! voxbridge unit and a stand-in service), then `hostenv deploy` of
//! examples/voxbridge.json to it with the stand-in credentials of
//! examples/example.env, the JSON result on stdout, and what landed on the host.
//! Everything is stopped and removed at the end. Needs root (namespaces,
//! cgroups); `scripts/example.sh` installs the packages and runs it.

#[allow(dead_code)]
#[path = "../tests/integration/testbed.rs"]
mod testbed;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

fn example_env(root: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(root.join("examples/example.env"))
        .expect("examples/example.env")
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn main() -> ExitCode {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    eprintln!("== starting a throwaway host (systemd + sshd in its own namespaces)");
    let testbed = testbed::Testbed::start(1);
    let host = testbed.host(0);

    let mut request: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("examples/voxbridge.json"))
            .expect("examples/voxbridge.json"),
    )
    .expect("valid JSON");
    request["hosts"] = serde_json::json!([host.addr]);
    request["contract"] = serde_json::json!(root.join("examples/voxbridge/.env.example"));
    request["ssh"] = testbed.ssh_settings("root");
    let request_path = testbed.dir.join("voxbridge-local.json");
    std::fs::write(
        &request_path,
        serde_json::to_string_pretty(&request).unwrap(),
    )
    .unwrap();
    eprintln!("== the request ({}):", request_path.display());
    eprintln!("{}", serde_json::to_string_pretty(&request).unwrap());

    let mut env = example_env(root);
    env.insert(
        "TESTBED_SSH_KEY".into(),
        testbed.client_key.display().to_string(),
    );
    eprintln!("== hostenv deploy --request {}", request_path.display());
    let outcome = hostenv::cli::main_with_args(
        [
            "hostenv",
            "deploy",
            "--request",
            request_path.to_str().unwrap(),
        ]
        .map(Into::into),
        &env,
    );
    print!("{}", outcome.stdout);

    eprintln!("== on the host:");
    eprint!(
        "{}",
        testbed.sh_ok(
            host,
            "stat -c '%n  owner %U:%G  mode %a  %s bytes' /opt/voxbridge/.env; \
             echo \"voxbridge.service: $(systemctl is-active voxbridge.service)\""
        )
    );
    eprintln!("== stopping the host");
    drop(testbed);
    ExitCode::from(outcome.exit_code as u8)
}
