//! Real hosts on this one machine (DESIGN.md §6): each testbed host is real
//! systemd as PID 1 in its own PID, mount, UTS and cgroup namespaces, with
//! OpenSSH on its own loopback address, real unit files for the Vox services,
//! and `tests/testbed/service.py` behind them. Everything is stopped by PID and
//! removed when the `Testbed` is dropped.
//!
//! Shared by the integration tests and `examples/local_deploy.rs`.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where the hosts listen: `<prefix><2..>`. Override with HOSTENV_TESTBED_PREFIX.
fn address_prefix() -> String {
    std::env::var("HOSTENV_TESTBED_PREFIX").unwrap_or_else(|_| "127.77.0.".to_string())
}

const INOTIFY_INSTANCES: &str = "/proc/sys/fs/inotify/max_user_instances";
const WANTED_INOTIFY_INSTANCES: u64 = 1024;

/// Service users and the non-root deploy user, in every host's own /etc/passwd.
const ACCOUNTS: &[(&str, u32, &str, &str)] = &[
    ("voxbridge", 61001, "/opt/voxbridge", "/usr/sbin/nologin"),
    ("voxcore", 61002, "/opt/voxcore", "/usr/sbin/nologin"),
    ("voxdialler", 61003, "/opt/voxdialler", "/usr/sbin/nologin"),
    ("deploy", 61010, "/tmp", "/bin/bash"),
];

/// The programs a testbed host runs: this machine's own (Debian 12), or those
/// of another Debian suite's tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    Machine,
    Debian(&'static str),
}

/// Where `scripts/setup.sh` keeps the suites' trees. Override with HOSTENV_TESTBED_TREES.
fn trees_dir() -> PathBuf {
    std::env::var_os("HOSTENV_TESTBED_TREES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/hostenv-testbed"))
}

impl System {
    /// The root of the files the host starts from.
    pub fn root(self) -> PathBuf {
        match self {
            System::Machine => PathBuf::from("/"),
            System::Debian(suite) => trees_dir().join(suite),
        }
    }
}

pub struct TestHost {
    /// The address, which requests use as the host name.
    pub addr: String,
    pub hostname: String,
    pub system: System,
    launcher: Child,
    pub pid1: u32,
}

pub struct Testbed {
    pub dir: PathBuf,
    pub hosts: Vec<TestHost>,
    pub known_hosts: PathBuf,
    /// Authorized for root and deploy on every host.
    pub client_key: PathBuf,
    /// Authorized nowhere.
    pub stranger_key: PathBuf,
    inotify_before: Option<String>,
    /// One testbed at a time per process: they share addresses and a directory.
    _exclusive: std::sync::MutexGuard<'static, ()>,
}

static IN_USE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds the testbed's addresses for a program that brings up hosts of its
/// own (the README's main job), so no testbed of this process starts meanwhile.
pub fn hold_addresses() -> std::sync::MutexGuard<'static, ()> {
    IN_USE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `command`, which must succeed; its output.
pub fn run(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn keygen(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    run(Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "hostenv-testbed",
            "-f",
        ])
        .arg(path));
}

impl Testbed {
    /// Brings up `count` hosts and waits until each one's sshd answers.
    pub fn start(count: usize) -> Testbed {
        Testbed::start_systems(&vec![System::Machine; count])
    }

    /// Brings up one host per entry of `systems`, in that order.
    pub fn start_systems(systems: &[System]) -> Testbed {
        // A test that failed with the testbed up poisons the lock; the next may still go.
        let exclusive = IN_USE
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for tool in [
            "/usr/sbin/sshd",
            "/usr/lib/systemd/systemd",
            "/usr/bin/python3",
            "/usr/bin/sudo",
        ] {
            for system in systems {
                let path = system.root().join(tool.trim_start_matches('/'));
                assert!(
                    path.exists(),
                    "{} is missing: run scripts/setup.sh, which installs the testbed's packages and makes the Debian trees",
                    path.display()
                );
            }
        }
        static_host_program();
        remove_stale_testbeds();
        let dir = PathBuf::from(format!("/var/tmp/hostenv-testbed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("keys")).unwrap();
        std::fs::copy(
            repo_root().join("tests/testbed/service.py"),
            dir.join("service.py"),
        )
        .unwrap();
        std::fs::copy(
            repo_root().join("tests/testbed/launch.sh"),
            dir.join("launch.sh"),
        )
        .unwrap();
        write(&dir.join("bashrc"), "# plain testbed .bashrc\n");
        for target in [
            "sysinit",
            "basic",
            "multi-user",
            "default",
            "sockets",
            "timers",
            "paths",
            "slices",
            "local-fs",
            "network",
            "network-online",
            "shutdown",
            "emergency",
            "rescue",
        ] {
            write(
                &dir.join(format!("stub/{target}.target")),
                &format!("[Unit]\nDescription=testbed stub {target}\n"),
            );
        }
        write(
            &dir.join("stub/testbed.target"),
            "[Unit]\nDescription=testbed host\nWants=systemd-journald.service testbed-sshd.service\n",
        );
        // journald, so services log where they would in production and tests
        // can search the journal; no /dev/log socket, as /dev is the machine's.
        write(
            &dir.join("stub/systemd-journald.socket"),
            "[Unit]\nDescription=Journal socket (testbed)\nDefaultDependencies=no\nBefore=sockets.target\n\
             [Socket]\nListenDatagram=/run/systemd/journal/socket\nListenStream=/run/systemd/journal/stdout\n\
             PassCredentials=yes\nPassSecurity=yes\nSocketMode=0666\nService=systemd-journald.service\n",
        );
        write(
            &dir.join("stub/systemd-journald.service"),
            "[Unit]\nDescription=Journal (testbed)\nDefaultDependencies=no\nRequires=systemd-journald.socket\n\
             After=systemd-journald.socket\n[Service]\nType=notify\nExecStart=/lib/systemd/systemd-journald\n\
             Sockets=systemd-journald.socket\nRuntimeDirectory=systemd/journal\nRuntimeDirectoryPreserve=yes\n\
             Restart=always\nRestartSec=0\n",
        );
        let client_key = dir.join("keys/client");
        let stranger_key = dir.join("keys/stranger");
        keygen(&client_key);
        keygen(&stranger_key);
        let client_public = std::fs::read_to_string(dir.join("keys/client.pub")).unwrap();
        write(&dir.join("authorized/root"), &client_public);
        write(&dir.join("authorized/deploy"), &client_public);

        let inotify_before = std::fs::read_to_string(INOTIFY_INSTANCES).ok();
        if inotify_before
            .as_deref()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|v| v < WANTED_INOTIFY_INSTANCES)
        {
            std::fs::write(INOTIFY_INSTANCES, WANTED_INOTIFY_INSTANCES.to_string()).unwrap();
        }
        let mut testbed = Testbed {
            known_hosts: dir.join("known_hosts"),
            dir,
            hosts: Vec::new(),
            client_key,
            stranger_key,
            inotify_before,
            _exclusive: exclusive,
        };
        let mut known_hosts = String::new();
        for (index, system) in systems.iter().enumerate() {
            let addr = format!("{}{}", address_prefix(), index + 2);
            let hostname = format!("tb-{}", index + 1);
            known_hosts.push_str(&testbed.prepare_host(&hostname, &addr, *system));
        }
        write(&testbed.known_hosts, &known_hosts);
        for (index, system) in systems.iter().enumerate() {
            let addr = format!("{}{}", address_prefix(), index + 2);
            let hostname = format!("tb-{}", index + 1);
            let host = testbed.launch(&hostname, addr, *system);
            testbed.hosts.push(host);
        }
        testbed
    }

    /// Writes the host's accounts, sudo rules, units and sshd config; returns its known_hosts line.
    fn prepare_host(&self, hostname: &str, addr: &str, system: System) -> String {
        let host_dir = self.dir.join("hosts").join(hostname);
        let dir = self.dir.display();
        keygen(&host_dir.join("ssh_host_ed25519_key"));
        let host_public =
            std::fs::read_to_string(host_dir.join("ssh_host_ed25519_key.pub")).unwrap();

        // The host's own files start from those of its system.
        let etc = |file: &str| {
            std::fs::read_to_string(system.root().join("etc").join(file)).unwrap_or_default()
        };
        if let System::Debian(_) = system {
            write(&host_dir.join("tree"), system.root().to_str().unwrap());
        }
        let mut passwd = etc("passwd");
        let mut group = etc("group");
        let mut shadow = etc("shadow");
        for (name, id, home, shell) in ACCOUNTS {
            passwd.push_str(&format!("{name}:x:{id}:{id}::{home}:{shell}\n"));
            group.push_str(&format!("{name}:x:{id}:\n"));
            shadow.push_str(&format!("{name}:*:20000:0:99999:7:::\n"));
        }
        write(&host_dir.join("etc/passwd"), &passwd);
        write(&host_dir.join("etc/group"), &group);
        write(&host_dir.join("etc/shadow"), &shadow);
        write(&host_dir.join("etc/hostname"), &format!("{hostname}\n"));
        // The deploy user starts with no sudo rights; tests grant what `hostenv sudoers` prints.
        write(&host_dir.join("etc/sudoers"), &etc("sudoers"));
        std::fs::set_permissions(
            host_dir.join("etc/sudoers"),
            std::os::unix::fs::PermissionsExt::from_mode(0o440),
        )
        .unwrap();
        let hosts = etc("hosts");
        write(
            &host_dir.join("etc/hosts"),
            &format!("{hosts}\n{addr} {hostname}\n"),
        );
        write(
            &host_dir.join("sshd_config"),
            &format!(
                "ListenAddress {addr}:22\nHostKey {}\nUsePAM no\nStrictModes no\nPidFile none\n\
                 MaxStartups 200:30:400\nSubsystem sftp internal-sftp\nPermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\nAuthorizedKeysFile {dir}/authorized/%u\n{}",
                host_dir.join("ssh_host_ed25519_key").display(),
                // Without PAM nothing answers keyboard-interactive; OpenSSH 8.4 knows the option by its old name.
                if system == System::Debian("bullseye") {
                    "ChallengeResponseAuthentication no\n"
                } else {
                    "KbdInteractiveAuthentication no\n"
                }
            ),
        );
        let units = host_dir.join("units");
        write(
            &units.join("testbed-sshd.service"),
            &format!(
                "[Unit]\nDescription=OpenSSH (testbed)\n[Service]\nRuntimeDirectory=sshd\n\
                 ExecStart=/usr/sbin/sshd -D -e -f {}\n",
                host_dir.join("sshd_config").display()
            ),
        );
        let service = |name: &str, instance: &str, port: u16, path: &str, required: &str| {
            format!(
                "[Unit]\nDescription=Vox {name} (testbed)\n[Service]\nType=notify\nNotifyAccess=main\n\
                 User={name}\nEnvironmentFile=/opt/{name}/.env\n\
                 Environment=TESTBED_SERVICE={name} TESTBED_INSTANCE={instance} TESTBED_BIND={addr} \
                 TESTBED_PORT={port} TESTBED_HEALTH_PATH={path} TESTBED_REQUIRED={required}\n\
                 ExecStart=/usr/bin/python3 {dir}/service.py\nTimeoutStartSec=15\n"
            )
        };
        write(
            &units.join("voxbridge.service"),
            &service(
                "voxbridge",
                "",
                8080,
                "/health",
                "JWT_SECRET,MONGODB_URI,MONGODB_DB,REDIS_URL",
            ),
        );
        write(
            &units.join("voxcore@.service"),
            // A numbered instance also answers on 9100 + its number.
            &service(
                "voxcore",
                "%i",
                9000,
                "/health/fleet",
                "VOXCORE_SECRET,OPENAI_API_KEY",
            )
            .replace(
                "TESTBED_PORT=9000",
                "TESTBED_PORT=9000 TESTBED_INSTANCE_PORT_BASE=9100",
            ),
        );
        write(
            &units.join("voxdialler.service"),
            &service(
                "voxdialler",
                "",
                8090,
                "/health",
                "VOXCORE_SECRET,LIVEKIT_API_KEY,LIVEKIT_API_SECRET,MONGODB_URI",
            ),
        );
        let mut setup = String::from("set -e\n");
        for (name, _, _, _) in &ACCOUNTS[..3] {
            setup.push_str(&format!(
                "mkdir -p /opt/{name}\nchown {name}:{name} /opt/{name}\n"
            ));
        }
        write(&host_dir.join("setup.sh"), &setup);
        let mut fields = host_public.split_whitespace();
        let (kind, key) = (fields.next().unwrap(), fields.next().unwrap());
        format!("{addr} {kind} {key}\n")
    }

    fn launch(&self, hostname: &str, addr: String, system: System) -> TestHost {
        let log = std::fs::File::create(self.dir.join(format!("{hostname}.log"))).unwrap();
        let launcher = Command::new("bash")
            .arg(self.dir.join("launch.sh"))
            .arg(&self.dir)
            .arg(hostname)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("launch a testbed host");
        let deadline = Instant::now() + Duration::from_secs(30);
        let socket: SocketAddr = format!("{addr}:22").parse().unwrap();
        let pid1 = loop {
            let children =
                std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", launcher.id()))
                    .unwrap_or_default();
            if let Some(pid) = children.split_whitespace().next() {
                if TcpStream::connect_timeout(&socket, Duration::from_millis(200)).is_ok() {
                    break pid.parse().unwrap();
                }
            }
            assert!(
                Instant::now() < deadline,
                "testbed host {hostname} did not come up; see {}",
                self.dir.join(format!("{hostname}.log")).display()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        TestHost {
            addr,
            hostname: hostname.to_string(),
            system,
            launcher,
            pid1,
        }
    }

    pub fn host(&self, index: usize) -> &TestHost {
        &self.hosts[index]
    }

    /// Runs a shell command as root inside a host, outside of SSH and hostenv.
    pub fn sh(&self, host: &TestHost, script: &str) -> Output {
        Command::new("nsenter")
            .args([
                "-t",
                &host.pid1.to_string(),
                "-m",
                "-p",
                "-u",
                "-C",
                "--",
                "/bin/sh",
                "-c",
                script,
            ])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .output()
            .expect("nsenter")
    }

    /// Like `sh`, but panics unless the command succeeds; returns stdout.
    pub fn sh_ok(&self, host: &TestHost, script: &str) -> String {
        let output = self.sh(host, script);
        assert!(
            output.status.success(),
            "`{script}` on {} failed: {}",
            host.hostname,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Writes `content` to `path` on a host (root-owned unless chowned after).
    pub fn put(&self, host: &TestHost, path: &str, content: &str) {
        let mut child = Command::new("nsenter")
            .args([
                "-t",
                &host.pid1.to_string(),
                "-m",
                "-p",
                "--",
                "/bin/sh",
                "-c",
                "cat > \"$1\"",
                "sh",
                path,
            ])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(content.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
    }

    /// The machine-side PID of the host's sshd listener, for tracing.
    pub fn sshd_pid(&self, host: &TestHost) -> u32 {
        let config = self.sshd_config(host);
        let output = run(Command::new("pgrep")
            .args(["-o", "-f"])
            .arg(format!("sshd -D -e -f {}", config.display())));
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .expect("sshd pid")
    }

    /// Rewrites the host's sshd configuration with `edit`, restarts its sshd
    /// and waits until it listens again: read from the socket table, not by
    /// connecting, since a test's firewall may close the port to this process.
    pub fn reconfigure_sshd(&self, host: &TestHost, edit: impl FnOnce(&str) -> String) {
        let config = self.sshd_config(host);
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(&config, edit(&text)).unwrap();
        self.sh_ok(host, "systemctl restart testbed-sshd.service");
        self.wait_for_sshd(host);
    }

    fn sshd_config(&self, host: &TestHost) -> PathBuf {
        self.dir
            .join("hosts")
            .join(&host.hostname)
            .join("sshd_config")
    }

    fn wait_for_sshd(&self, host: &TestHost) {
        std::thread::sleep(Duration::from_millis(300));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let listening = run(Command::new("ss")
                .arg("-Hltn")
                .arg("src")
                .arg(format!("{}:22", host.addr)));
            if !String::from_utf8_lossy(&listening.stdout).trim().is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("sshd on {} did not come back", host.addr);
    }

    /// Replaces the host's extra sudo rules with `rules` (checked by visudo).
    pub fn grant_sudo(&self, host: &TestHost, rules: &str) {
        let base =
            std::fs::read_to_string(host.system.root().join("etc/sudoers")).unwrap_or_default();
        self.put(host, "/tmp/sudoers.new", &format!("{base}\n{rules}"));
        // In place: /etc/sudoers is a bind mount, which cannot be renamed over.
        self.sh_ok(host, "visudo -c -q -f /tmp/sudoers.new && cat /tmp/sudoers.new > /etc/sudoers && rm /tmp/sudoers.new");
    }

    /// The SSH settings a request needs to reach these hosts as `user`.
    pub fn ssh_settings(&self, user: &str) -> serde_json::Value {
        serde_json::json!({
            "user": user,
            "knownHosts": self.known_hosts.to_str().unwrap(),
            "identityFileEnv": "TESTBED_SSH_KEY",
            "connectTimeoutMs": 10000,
            "ioTimeoutMs": 20000
        })
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for host in &mut self.hosts {
            // Killing PID 1 of a PID namespace kills every process in it.
            let _ = Command::new("kill")
                .args(["-KILL", &host.pid1.to_string()])
                .status();
            let _ = host.launcher.kill();
            let _ = host.launcher.wait();
            let cgroup = PathBuf::from(format!(
                "/sys/fs/cgroup/unified/hostenv-{}-{}",
                self.dir.file_name().unwrap().to_str().unwrap(),
                host.hostname
            ));
            remove_cgroup(&cgroup, Instant::now() + Duration::from_secs(5));
        }
        if let Some(before) = &self.inotify_before {
            let _ = std::fs::write(INOTIFY_INSTANCES, before.trim());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The host program hostenv installs: only a static build, in a cargo build
/// tree the musl build of its own profile (`LocalProgram`). Builds it once per
/// process (as `scripts/host-program.sh` does), so the hosts get this tree's
/// code, and returns its path.
pub fn static_host_program() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().unwrap();
            let profile_dir = exe
                .ancestors()
                .find(|dir| {
                    dir.file_name()
                        .is_some_and(|name| name == "debug" || name == "release")
                })
                .expect("run from cargo's target directory")
                .to_path_buf();
            let profile = profile_dir.file_name().unwrap().to_owned();
            let mut command = Command::new(env!("CARGO"));
            command
                .args(["build", "--quiet", "--locked", "-p", "hostenv-host"])
                .args(["--target", "x86_64-unknown-linux-musl"])
                .current_dir(repo_root());
            if profile == "release" {
                command.arg("--release");
            }
            run(&mut command);
            profile_dir
                .parent()
                .unwrap()
                .join("x86_64-unknown-linux-musl")
                .join(profile)
                .join("hostenv-host")
        })
        .clone()
}

/// A run that was killed (not dropped) leaves its hosts running: stop every
/// process in their cgroups and remove what they left, before starting anew.
fn remove_stale_testbeds() {
    let Ok(entries) = std::fs::read_dir("/var/tmp") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("hostenv-testbed-") else {
            continue;
        };
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let alive = state
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'));
        if alive {
            continue;
        }
        if let Ok(cgroups) = std::fs::read_dir("/sys/fs/cgroup/unified") {
            for cgroup in cgroups.flatten() {
                if cgroup
                    .file_name()
                    .to_string_lossy()
                    .starts_with(&format!("hostenv-{name}-"))
                {
                    let _ = std::fs::write(cgroup.path().join("cgroup.kill"), "1");
                    remove_cgroup(&cgroup.path(), Instant::now() + Duration::from_secs(5));
                }
            }
        }
        let _ = std::fs::remove_dir_all(entry.path());
    }
}

/// Removes a cgroup tree bottom-up, retrying while its last processes exit.
fn remove_cgroup(path: &Path, deadline: Instant) {
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&entry.path(), deadline);
            }
        }
    }
    while path.exists() && std::fs::remove_dir(path).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}
