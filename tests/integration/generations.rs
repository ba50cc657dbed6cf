//! The host generations fleets run: testbed hosts booted from Debian trees
//! (`scripts/setup.sh` makes them with debootstrap), each running that
//! suite's own systemd as PID 1, its own sshd, sudo and python3. Each suite
//! runs the scenarios that prove its row of README's compatibility table; this
//! machine's own generation (Debian 12) runs every scenario in `deploy/`.

use pretty_assertions::assert_eq;
use serde_json::json;

use crate::common::{assert_no_leak, Run};
use crate::deploy::access::the_deploy_user_works_through_sudo;
use crate::deploy::basics::{first_deploy_installs_and_restarts, same_request_changes_nothing};
use crate::deploy::failures::failing_health_check_rolls_back;
use crate::deploy::{
    file_on, health, run_scenarios, scenario, secrets, statuses, sudoers_rules, voxbridge_request,
    Deployer, Scenario,
};
use crate::rotation::a_rotation_and_its_undo;
use crate::testbed::{System, TestHost, Testbed};

const SCENARIOS: &[Scenario] = &[
    scenario!(first_deploy_installs_and_restarts),
    scenario!(the_hosts_run_their_own_generation),
    scenario!(same_request_changes_nothing),
    scenario!(a_unit_started_in_its_files_second_is_not_restarted),
    scenario!(the_reader_reads_as_this_hosts_systemd),
    scenario!(a_host_program_that_cannot_run_there_is_not_installed),
    scenario!(failing_health_check_rolls_back),
    scenario!(the_largest_environment_hostenv_allows_starts_the_service),
    scenario!(the_deploy_user_works_through_sudo),
    scenario!(a_deploy_user_needs_the_system_bus_to_leave_a_unit_alone),
    scenario!(a_rotation_and_its_undo),
];

/// Three hosts of `suite`, and every scenario above on them.
fn on_generation(suite: &'static str) {
    let testbed = Testbed::start_systems(&[System::Debian(suite); 3]);
    let deployer = Deployer::new(&testbed, suite);
    let hosts: Vec<&TestHost> = testbed.hosts.iter().collect();
    run_scenarios(&deployer, &hosts, &SCENARIOS.iter().collect::<Vec<_>>());
}

#[test]
fn debian_11_bullseye_hosts() {
    on_generation("bullseye");
}

#[test]
fn debian_13_trixie_hosts() {
    on_generation("trixie");
}

#[test]
fn debian_sid_hosts() {
    on_generation("sid");
}

/// What runs is the tree's own programs, not this machine's: the versions
/// each host reports (printed, for the compatibility table).
fn the_hosts_run_their_own_generation(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    for host in hosts {
        let versions = testbed.sh_ok(
            host,
            "systemctl --version | head -n 1; dpkg-query -W openssh-server; sudo -V | head -n 1; python3 -V; \
             ldd --version | head -n 1; ps -o comm= -p 1",
        );
        eprintln!(
            "{} ({:?}): {}",
            host.hostname,
            host.system,
            versions.replace('\n', " | ")
        );
        let systemd: u32 = versions
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .expect("systemctl --version");
        let System::Debian(suite) = host.system else {
            panic!("a generation host runs a Debian tree");
        };
        match suite {
            "bullseye" => assert_eq!(systemd, 247, "{versions}"),
            "trixie" => assert_eq!(systemd, 257, "{versions}"),
            _ => assert!(systemd > 257, "{versions}"),
        }
        assert!(
            versions.trim_end().ends_with("systemd"),
            "PID 1: {versions}"
        );
    }
}

/// An unchanged deploy restarts nothing even when the unit last started in
/// the very second its file was written: systemd 247's `systemctl show`
/// prints whole seconds there, and the monotonic start tells them apart.
fn a_unit_started_in_its_files_second_is_not_restarted(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let host = hosts[0];
    let main_pid = "systemctl show -p ExecMainPID voxbridge.service";
    // The unit restarts; its file was written in that same second, before it
    // (its mtime a microsecond into the second the unit started in).
    let seconds = testbed.sh_ok(
        host,
        "systemctl restart voxbridge.service; \
         s=$(date -u -d \"$(TZ=UTC systemctl show -p ExecMainStartTimestamp --value voxbridge.service)\" +%s); \
         touch -d @$s.000001 /opt/voxbridge/.env; stat -c %Y /opt/voxbridge/.env; echo $s",
    );
    let seconds: Vec<&str> = seconds.lines().collect();
    assert_eq!(
        seconds[0], seconds[1],
        "the file and the start share a second"
    );
    let pid_before = testbed.sh_ok(host, main_pid);
    let request = voxbridge_request(testbed, &[host], "root", json!({}));
    let run = deployer.run("deploy", &request, &secrets("one"));
    assert_eq!(run.code, 0, "{}", run.stdout);
    let result = run.json();
    assert_eq!(statuses(&result), ["unchanged"]);
    assert_eq!(
        result["hosts"][0]["units"],
        json!([{"unit": "voxbridge.service", "restarted": false}])
    );
    assert_eq!(
        pid_before,
        testbed.sh_ok(host, main_pid),
        "no unit restarted"
    );
}

/// What hostenv puts on a host is a static program that ran there first: one
/// built for another CPU, or one the host cannot execute, fails the host with
/// `hostProgramUnusable` and the host's own words, and leaves nothing behind;
/// a dynamically linked one never leaves the agent.
fn a_host_program_that_cannot_run_there_is_not_installed(deployer: &Deployer, hosts: &[&TestHost]) {
    let testbed = deployer.testbed;
    let host = hosts[1];
    let request = voxbridge_request(testbed, &[host], "root", json!({}));
    let programs = deployer.work.path();
    let real = std::fs::read(crate::testbed::static_host_program()).unwrap();
    // The same program, its ELF header saying aarch64.
    let mut arm = real.clone();
    arm[18..20].copy_from_slice(&183u16.to_le_bytes());
    std::fs::write(programs.join("hostenv-host-aarch64"), &arm).unwrap();
    let left_behind = || {
        testbed
            .sh_ok(host, "ls -a /usr/local/sbin")
            .lines()
            .filter(|name| name.starts_with(".hostenv-host") || *name == "hostenv-host")
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let attempt = |program: &std::path::Path| {
        testbed.sh_ok(host, "rm -f /usr/local/sbin/hostenv-host");
        let program = [(
            "HOSTENV_HOST_PROGRAM".to_string(),
            program.display().to_string(),
        )];
        let child = deployer.spawn_with("deploy", &request, &secrets("one"), &program.into());
        let output = child.wait_with_output().unwrap();
        let run = Run {
            code: output.status.code().unwrap(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        let canaries: Vec<String> = secrets("one").into_values().collect();
        assert_no_leak("stdout", &run.stdout, &canaries);
        assert_no_leak("stderr", &run.stderr, &canaries);
        assert_eq!(run.code, 1, "{}", run.stdout);
        let error = run.json()["hosts"][0]["error"].clone();
        assert_eq!(error["kind"], "hostProgramUnusable", "{error}");
        assert_eq!(left_behind(), Vec::<String>::new(), "{error}");
        error["message"].as_str().unwrap().to_string()
    };

    let message = attempt(&programs.join("hostenv-host-aarch64"));
    assert!(
        message.contains("this host is x86_64, the host program is built for aarch64"),
        "{message}"
    );
    // A host whose /usr/local/sbin is mounted noexec: the program goes in, does not run, goes.
    testbed.sh_ok(host, "mount -t tmpfs -o noexec tmpfs /usr/local/sbin");
    let message = attempt(&crate::testbed::static_host_program());
    testbed.sh_ok(host, "umount /usr/local/sbin");
    assert!(message.contains("does not run there"), "{message}");
    assert!(message.contains("Permission denied"), "{message}");
    // A build linked to this machine's C library (hostenv's own, here) never leaves the agent.
    let message = attempt(std::path::Path::new(env!("CARGO_BIN_EXE_hostenv")));
    assert!(message.contains("dynamically linked"), "{message}");
    // The static build goes in, and the service is as the first deploy left it.
    let run = deployer.run("deploy", &request, &secrets("one"));
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(statuses(&run.json()), ["unchanged"]);
    assert_eq!(left_behind(), ["hostenv-host"]);
    let (meta, _) = file_on(testbed, host, "/opt/voxbridge/.env");
    assert_eq!(meta, "voxbridge:voxbridge 600");
    assert_eq!(
        health(host, 8080, "/health")["fingerprints"]["JWT_SECRET"],
        crate::deploy::fingerprint(&secrets("one")["JWT_SECRET"])
    );
}

/// A file whose values come close to the most a process environment holds
/// (`MAX_ENVIRONMENT_BYTES`, Linux's bound under systemd's default stack
/// limit) is deployed, and the service starts with it: hostenv's limit is
/// one every generation's systemd and kernel take.
fn the_largest_environment_hostenv_allows_starts_the_service(
    deployer: &Deployer,
    hosts: &[&TestHost],
) {
    let testbed = deployer.testbed;
    let host = hosts[2];
    let work = deployer.work.path();
    let big: Vec<String> = (0..15).map(|i| format!("BIG_{i:02}")).collect();
    let contract: String = crate::deploy::VOXBRIDGE_CONTRACT.to_string()
        + &big.iter().map(|k| format!("{k}=\n")).collect::<String>();
    std::fs::write(work.join("big.env.example"), contract).unwrap();
    let mut env = secrets("one");
    // Quoted, the file is over the 2 MiB v219 reads: every host here runs v247 or later.
    let mut request = voxbridge_request(
        testbed,
        &[host],
        "root",
        json!({"contract": "big.env.example", "target": {"systemdMin": 247}}),
    );
    for (index, key) in big.iter().enumerate() {
        let value: String = format!("{index:02} \"quoted\" $NOT_EXPANDED ")
            .repeat(6000)
            .chars()
            .take(130_000)
            .collect();
        let path = work.join(key);
        std::fs::write(&path, value).unwrap();
        env.insert(key.clone(), path.display().to_string());
        request["env"][key] = json!({"secretFileEnv": key});
    }
    let run = deployer.run("deploy", &request, &env);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(statuses(&run.json()), ["deployed"]);
    let bytes: u64 = testbed
        .sh_ok(host, "stat -c %s /opt/voxbridge/.env")
        .trim()
        .parse()
        .unwrap();
    assert!(bytes > 1_950_000, "{bytes}");
    let in_service = testbed.sh_ok(
        host,
        "tr '\\0' '\\n' < /proc/$(systemctl show -p MainPID --value voxbridge.service)/environ | grep -c '^BIG_'",
    );
    assert_eq!(in_service.trim(), "15");
    // Back to what the first deploy left.
    let back = voxbridge_request(testbed, &[host], "root", json!({}));
    let run = deployer.run("deploy", &back, &secrets("one"));
    assert_eq!(run.code, 0, "{}", run.stdout);
}

/// Lines no hostenv writer produces but other tools do (quotes of both
/// kinds, escapes, line breaks and a CR after a backslash, a comment ending
/// in a backslash): what this host's systemd puts in a service's environment
/// is what hostenv's reader of its generation reads, key for key. `plan` and
/// `drift` read the hosts' current files with these readers.
pub(crate) fn the_reader_reads_as_this_hosts_systemd(deployer: &Deployer, hosts: &[&TestHost]) {
    use hostenv::render::systemd::{parse_as, Generation};
    let testbed = deployer.testbed;
    let host = hosts[0];
    let file = "P_A=\"x\\\\y\\$z\\q\\\"\"\nP_B=\"l\\\nm\"\nP_C=\"l\\\rm\"\nP_D='a\\'b'\n\
                P_E=  spaced  value  \nP_F=un\\ quoted\\#x ; not a comment\n\
                # a comment \\\nP_G=after-the-comment\nP_H='single \"double\" $x'\n\
                P_I=\"tab\tin \\`tick\\`\"\nP_J=\"two\nlines\"\n  P_K = 'trimmed'  \n\
                P_L='it'\"'\"'s \\\nnext'\n";
    // P_L is how hostenv writes such a value for hosts of v241 or later.
    let p_l = "P_L='it'\"'\"'s \\\nnext'\n";
    let spelled = hostenv::render::systemd::render_for([("P_L", "it's \\\nnext")], Some(241));
    assert!(spelled.ends_with(p_l) && file.ends_with(p_l), "{spelled:?}");
    testbed.put(host, "/run/probe.env", file);
    testbed.put(
        host,
        "/etc/systemd/system/probe-env.service",
        "[Service]\nType=oneshot\nEnvironmentFile=/run/probe.env\n\
         ExecStart=/usr/bin/env -0\nStandardOutput=file:/run/probe.out\n",
    );
    let version: u32 = testbed
        .sh_ok(host, "systemctl --version | head -n 1 | cut -d' ' -f2")
        .trim()
        .parse()
        .unwrap();
    testbed.sh_ok(
        host,
        "systemctl daemon-reload && systemctl start probe-env.service",
    );
    let out = testbed.sh_ok(host, "cat /run/probe.out");
    testbed.sh_ok(host, "rm /etc/systemd/system/probe-env.service /run/probe.env /run/probe.out; systemctl daemon-reload");
    let mut systemd: Vec<(String, String)> = out
        .split('\0')
        .filter(|entry| entry.starts_with("P_"))
        .filter_map(|entry| entry.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    systemd.sort();
    let parsed = parse_as(file, Generation::of(version));
    let mut hostenv: Vec<(String, String)> = parsed
        .assignments
        .into_iter()
        .map(|a| (a.key, a.value))
        .collect();
    if version == 247 {
        // hostenv holds v247 to dropping a value with a control character
        // other than TAB and LF (read from upstream's code), and so refuses
        // to write one for a v247 host; Debian 11's 247.3 keeps it. The
        // reader is on the safe side of the one difference.
        let dropped: Vec<&str> = parsed.dropped.iter().map(|a| a.key.as_str()).collect();
        assert_eq!(dropped, ["P_C"]);
        hostenv.push(("P_C".into(), "l\\\rm".into()));
    }
    hostenv.sort();
    assert_eq!(hostenv, systemd, "systemd v{version} ({:?})", host.system);
}

/// A deploy user's run reads when a unit started with `systemctl show` as
/// that user, which asks systemd through the system bus (root's own runs use
/// systemd's private socket). With the bus, an unchanged deploy restarts
/// nothing; without it, the start cannot be read, so the unit is restarted:
/// the safe side, and what README's compatibility section says.
fn a_deploy_user_needs_the_system_bus_to_leave_a_unit_alone(
    deployer: &Deployer,
    hosts: &[&TestHost],
) {
    let testbed = deployer.testbed;
    let host = hosts[0];
    let request = voxbridge_request(
        testbed,
        &[host],
        "deploy",
        json!({"allowSharedChange": true}),
    );
    testbed.grant_sudo(host, &sudoers_rules(deployer, &request));
    let restarted = |label: &str| {
        let run = deployer.run("deploy", &request, &secrets("bus"));
        assert_eq!(run.code, 0, "{label}: {}", run.stdout);
        let result = run.json();
        result["hosts"][0]["units"][0]["restarted"]
            .as_bool()
            .unwrap()
    };
    restarted("first");
    let with_bus = restarted("with the bus");
    testbed.sh_ok(host, "systemctl stop dbus.socket dbus.service");
    let without_bus = restarted("without the bus");
    testbed.sh_ok(host, "systemctl start dbus.socket");
    assert!(!with_bus, "an unchanged deploy restarted the unit");
    assert!(
        without_bus,
        "without the bus the start time was read after all"
    );
    let back = voxbridge_request(testbed, &[host], "root", json!({"allowSharedChange": true}));
    assert_eq!(deployer.run("deploy", &back, &secrets("one")).code, 0);
}
