//! The main job, end to end, on throwaway local hosts: three testbed hosts
//! (real systemd as PID 1 in its own namespaces, real sshd on 127.77.0.2-4,
//! the Vox units running stand-in services). First `hostenv deploy` of
//! examples/voxbridge.json to the first host with the stand-in credentials of
//! examples/example.env; then examples/rotation.json (voxcore on the first two
//! hosts, voxdialler on the third) is deployed, and `VOXCORE_SECRET` is rotated
//! on both services in one window. Each JSON result goes to stdout, and what
//! landed on the hosts to stderr. Everything is stopped and removed at the end.
//! Needs root (namespaces, cgroups); `scripts/example.sh` installs the packages
//! and runs it.

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

/// Writes `request` beside the testbed and runs `hostenv ACTION --request` on
/// it with `env` bound, printing the result.
fn run(
    testbed: &testbed::Testbed,
    action: &str,
    name: &str,
    request: &serde_json::Value,
    env: &BTreeMap<String, String>,
) -> i32 {
    let path = testbed.dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(request).unwrap()).unwrap();
    eprintln!("== hostenv {action} --request {}", path.display());
    let outcome = hostenv::main_with_args(
        ["hostenv", action, "--request", path.to_str().unwrap()].map(Into::into),
        env,
    );
    print!("{}", outcome.stdout);
    outcome.exit_code
}

fn read_example(root: &Path, name: &str) -> serde_json::Value {
    let path = root.join("examples").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).expect("example request"))
        .expect("valid JSON")
}

fn main() -> ExitCode {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    eprintln!("== starting three throwaway hosts (systemd + sshd in their own namespaces)");
    let testbed = testbed::Testbed::start(3);
    let hosts: Vec<&testbed::TestHost> = testbed.hosts.iter().collect();
    let mut env = example_env(root);
    env.insert(
        "TESTBED_SSH_KEY".into(),
        testbed.client_key.display().to_string(),
    );

    // examples/voxbridge.json, pointed at the first host.
    let mut request = read_example(root, "voxbridge.json");
    request["hosts"] = serde_json::json!([hosts[0].addr]);
    request["contract"] = serde_json::json!(root.join("examples/voxbridge/.env.example"));
    request["ssh"] = testbed.ssh_settings("root");
    let deployed = run(&testbed, "deploy", "voxbridge-local.json", &request, &env);
    eprintln!("== on the host:");
    eprint!(
        "{}",
        testbed.sh_ok(
            hosts[0],
            "stat -c '%n  owner %U:%G  mode %a  %s bytes' /opt/voxbridge/.env; \
             echo \"voxbridge.service: $(systemctl is-active voxbridge.service)\""
        )
    );

    // examples/rotation.json: the fleet on hosts 1-2 (one voxcore@1 each), the dialler on host 3.
    let mut rotation = read_example(root, "rotation.json");
    for (index, deployment) in rotation["deployments"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .enumerate()
    {
        let service = deployment["service"].as_str().unwrap().to_string();
        deployment["contract"] =
            serde_json::json!(root.join(format!("examples/{service}/.env.example")));
        deployment["hosts"] = if index == 0 {
            serde_json::json!([{"host": hosts[0].addr, "instances": ["1"]}, {"host": hosts[1].addr, "instances": ["1"]}])
        } else {
            serde_json::json!([hosts[2].addr])
        };
        deployment["ssh"] = testbed.ssh_settings("root");
    }
    let installed = run(&testbed, "deploy", "rotation-local.json", &rotation, &env);
    eprintln!("== the credential store gets a new VOXCORE_SECRET; the same request rotates it");
    env.insert(
        "VOXCORE_SECRET".into(),
        "example-voxcore-secret-rotated-not-real".into(),
    );
    let rotated = run(&testbed, "deploy", "rotation-local.json", &rotation, &env);
    eprintln!("== on the hosts:");
    for (host, unit, path) in [
        (hosts[0], "voxcore@1.service", "/opt/voxcore/.env"),
        (hosts[1], "voxcore@1.service", "/opt/voxcore/.env"),
        (hosts[2], "voxdialler.service", "/opt/voxdialler/.env"),
    ] {
        eprint!(
            "{}",
            testbed.sh_ok(
                host,
                &format!("stat -c \"$(hostname) %n  owner %U:%G  mode %a\" {path}; echo \"  {unit}: $(systemctl is-active {unit})\"")
            )
        );
    }
    eprintln!("== stopping the hosts");
    drop(testbed);
    let worst = [deployed, installed, rotated]
        .into_iter()
        .max()
        .unwrap_or(0);
    ExitCode::from(worst as u8)
}
