//! Template units: instances restarted one at a time, each checked.

use crate::testbed::TestHost;
use pretty_assertions::assert_eq;
use serde_json::json;

use super::*;

pub(super) fn instances_restart_one_at_a_time_each_checked_before_the_next(
    deployer: &Deployer,
    hosts: &[&TestHost],
) {
    write_voxcore_contract(deployer);
    let testbed = deployer.testbed;
    let secrets = map(&[
        ("VOXCORE_SECRET", "CANARY-voxcore-ordered"),
        ("OPENAI_API_KEY", "CANARY-openai-ordered"),
    ]);
    let request = json!({
        "apiVersion": "hostenv/v1", "kind": "Deploy", "service": "voxcore",
        "contract": "voxcore.env.example",
        "hosts": [{"host": hosts[2].addr, "instances": ["1", "2"]}],
        "env": {"VOXCORE_SECRET": {"secretEnv": "VOXCORE_SECRET"}, "OPENAI_API_KEY": {"secretEnv": "OPENAI_API_KEY"},
                "LOG_LEVEL": {"value": "info"}},
        "ssh": testbed.ssh_settings("root"),
        "verify": [
            {"url": "http://{host}:9000/health/fleet", "intervalMs": 100, "deadlineMs": 8000, "consecutive": 1},
            {"url": "http://{host}:910{instance}/health/worker", "intervalMs": 100, "deadlineMs": 8000, "consecutive": 1}
        ]
    });
    let run = deployer.run("deploy", &request, &secrets);
    assert_eq!(run.code, 0, "{}", run.stdout);
    let result = run.json();
    let steps: Vec<&str> = result["hosts"][0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .filter(|name| *name == "restart" || *name == "verify")
        .collect();
    assert_eq!(steps, ["restart", "verify", "restart", "verify", "verify"]);
    let urls: Vec<&str> = result["hosts"][0]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["url"].as_str().unwrap())
        .collect();
    let addr = &hosts[2].addr;
    assert_eq!(
        urls,
        [
            format!("http://{addr}:9101/health/worker"),
            format!("http://{addr}:9102/health/worker"),
            format!("http://{addr}:9000/health/fleet")
        ]
    );
}

pub(super) fn voxcore_instances_restart_on_two_hosts(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    write_voxcore_contract(deployer);
    let secrets = map(&[
        ("VOXCORE_SECRET", "CANARY-voxcore-secret-1"),
        ("OPENAI_API_KEY", "CANARY-openai-key-1"),
    ]);
    let request = json!({
        "apiVersion": "hostenv/v1", "kind": "Deploy", "service": "voxcore",
        "contract": "voxcore.env.example",
        "hosts": [{"host": hosts[0].addr, "instances": ["sock1", "sock2"]}, {"host": hosts[1].addr, "instances": ["sock1"]}],
        "env": {"VOXCORE_SECRET": {"secretEnv": "VOXCORE_SECRET"}, "OPENAI_API_KEY": {"secretEnv": "OPENAI_API_KEY"},
                "LOG_LEVEL": {"value": "info"}},
        "ssh": testbed.ssh_settings("root"),
        "verify": [{"url": "http://{host}:9000/health/fleet", "intervalMs": 100, "deadlineMs": 8000, "consecutive": 2}]
    });
    let run = deployer.run("deploy", &request, &secrets);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let result = run.json();
    assert_eq!(statuses(&result), ["deployed", "deployed"]);
    assert_eq!(
        result["hosts"][0]["units"],
        json!([{"unit": "voxcore@sock1.service", "restarted": true}, {"unit": "voxcore@sock2.service", "restarted": true}])
    );
    let active = testbed.sh_ok(
        testbed.host(0),
        "systemctl is-active voxcore@sock1.service voxcore@sock2.service",
    );
    assert_eq!(active, "active\nactive\n");
    // Without `instances`, the running instances are found on the host.
    let mut request = request.clone();
    request["hosts"] = json!([hosts[0].addr]);
    request["restart"] = json!({"force": true});
    let result = deployer.run("deploy", &request, &secrets).json();
    assert_eq!(statuses(&result), ["unchanged"]);
    assert_eq!(
        result["hosts"][0]["units"].as_array().unwrap().len(),
        2,
        "{result}"
    );
    // A host with no instance of the template cannot be restarted.
    request["hosts"] = json!([hosts[2].addr]);
    let result = deployer.run("deploy", &request, &secrets).json();
    assert_eq!(result["hosts"][0]["error"]["kind"], "noInstances");
}

/// The voxcore contract in the deployer's working directory.
fn write_voxcore_contract(deployer: &Deployer) {
    std::fs::write(
        deployer.work.path().join("voxcore.env.example"),
        "VOXCORE_SECRET=\nOPENAI_API_KEY=\nLOG_LEVEL=info\n",
    )
    .unwrap();
}
