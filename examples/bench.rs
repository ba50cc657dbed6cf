//! The benchmark behind BENCHMARKS.md (run it with `scripts/bench.sh`, as root).
//!
//! On one testbed of 50 hosts, deploys voxbridge (render, upload, install with
//! mode 600 and owner, restart, wait healthy) to 1, 10 and 50 hosts three ways,
//! alternating them within each repetition: `hostenv deploy` (release build),
//! `ansible-playbook` (bench/playbook.yml: pipelining, ControlPersist, no fact
//! gathering, forks = hosts), and the lower bound, bare parallel OpenSSH `ssh`
//! commands doing the same steps followed by one `curl` each. Every run changes
//! the file, so every run restarts every unit. Prints medians, ratios and
//! hostenv's peak RSS, and writes them to target/bench/results.md.

#[allow(dead_code)]
#[path = "../tests/integration/testbed.rs"]
mod testbed;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

const SIZES: [usize; 3] = [1, 10, 50];
const TOOLS: [&str; 3] = ["hostenv", "ansible", "ssh"];

struct Bench<'a> {
    testbed: &'a testbed::Testbed,
    root: PathBuf,
    work: PathBuf,
}

fn secrets(marker: &str) -> BTreeMap<String, String> {
    [
        ("JWT_SECRET", "bench-jwt-secret-value"),
        ("MONGODB_URI", "mongodb://bench:bench@db.internal/voxbridge"),
        ("REDIS_URL", "redis://:bench@cache.internal:6379/0"),
        ("BENCH_LOG_LEVEL", marker),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

impl Bench<'_> {
    fn hosts(&self, n: usize) -> Vec<&testbed::TestHost> {
        self.testbed.hosts.iter().take(n).collect()
    }

    /// Runs one tool on `n` hosts; returns (seconds, hostenv's peak RSS in KiB and CPU seconds).
    fn run(&self, tool: &str, n: usize, marker: &str) -> (f64, Option<(u64, f64)>) {
        let started = Instant::now();
        let rss = match tool {
            "hostenv" => Some(self.hostenv(n, marker)),
            "ansible" => {
                self.ansible(n, marker);
                None
            }
            _ => {
                self.ssh(n, marker);
                None
            }
        };
        let seconds = started.elapsed().as_secs_f64();
        let host = &self.testbed.hosts[n - 1];
        let file = self.testbed.sh_ok(host, "cat /opt/voxbridge/.env");
        assert!(
            file.contains(marker),
            "{tool} did not deploy {marker} to {}",
            host.addr
        );
        (seconds, rss)
    }

    /// Runs hostenv; returns (peak RSS in KiB, user + system CPU seconds).
    fn hostenv(&self, n: usize, marker: &str) -> (u64, f64) {
        let request = serde_json::json!({
            "apiVersion": "hostenv/v1", "kind": "Deploy", "service": "voxbridge",
            "contract": self.work.join("voxbridge.env.example"),
            "hosts": self.hosts(n).iter().map(|h| h.addr.clone()).collect::<Vec<_>>(),
            "env": {
                "JWT_SECRET": {"secretEnv": "JWT_SECRET"}, "MONGODB_URI": {"secretEnv": "MONGODB_URI"},
                "REDIS_URL": {"secretEnv": "REDIS_URL"}, "MONGODB_DB": {"value": "voxbridge"},
                "LOG_LEVEL": {"value": marker}
            },
            "allowSharedChange": true,
            "ssh": self.testbed.ssh_settings("root"),
            "rollout": {"parallel": n},
            "verify": [{"url": "http://{host}:8080/health", "intervalMs": 200, "deadlineMs": 30000, "consecutive": 1}]
        });
        let path = self.work.join("request.json");
        std::fs::write(&path, request.to_string()).unwrap();
        let mut env = secrets(marker);
        env.insert(
            "TESTBED_SSH_KEY".into(),
            self.testbed.client_key.display().to_string(),
        );
        let output = Command::new("/usr/bin/time")
            .args(["-f", "peak-rss-kib %M cpu-seconds %U %S"])
            .arg(self.root.join("target/release/hostenv"))
            .args(["deploy", "--request"])
            .arg(&path)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(&env)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "hostenv: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        let fields: Vec<&str> = stderr
            .lines()
            .find_map(|l| l.strip_prefix("peak-rss-kib "))
            .expect("GNU time's report")
            .split_whitespace()
            .collect();
        let number = |i: usize| fields[i].parse::<f64>().expect("a number");
        (number(0) as u64, number(2) + number(3))
    }

    fn ansible(&self, n: usize, marker: &str) {
        let mut inventory = String::from("[targets]\n");
        for host in self.hosts(n) {
            inventory.push_str(&format!("{} ansible_host={}\n", host.hostname, host.addr));
        }
        inventory.push_str(&format!(
            "[targets:vars]\nansible_user=root\nansible_ssh_private_key_file={}\nansible_python_interpreter=/usr/bin/python3\n\
             [local]\nlocalhost ansible_connection=local ansible_python_interpreter={}\n",
            self.testbed.client_key.display(),
            self.root.join("target/bench/venv/bin/python").display()
        ));
        std::fs::write(self.work.join("inventory"), inventory).unwrap();
        std::fs::write(
            self.work.join("ansible.cfg"),
            format!(
                "[defaults]\nforks = 50\nhost_key_checking = True\ngathering = explicit\nstdout_callback = default\n\
                 retry_files_enabled = False\ninterpreter_python = /usr/bin/python3\n\
                 [ssh_connection]\npipelining = True\ncontrol_path_dir = {}\n\
                 ssh_args = -o ControlMaster=auto -o ControlPersist=60s -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes\n",
                self.work.join("cp").display(),
                self.testbed.known_hosts.display()
            ),
        )
        .unwrap();
        let output = Command::new(self.root.join("target/bench/venv/bin/ansible-playbook"))
            .arg("-i")
            .arg(self.work.join("inventory"))
            .arg(self.root.join("bench/playbook.yml"))
            .env("ANSIBLE_CONFIG", self.work.join("ansible.cfg"))
            .env("ANSIBLE_LOCAL_TEMP", self.work.join("tmp"))
            .env("ANSIBLE_HOME", self.work.join("home"))
            .envs(secrets(marker))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "ansible: {}",
            String::from_utf8_lossy(&output.stdout)
        );
    }

    fn ssh(&self, n: usize, marker: &str) {
        let env = secrets(marker);
        let file = format!(
            "JWT_SECRET=\"{}\"\nMONGODB_URI=\"{}\"\nMONGODB_DB=\"voxbridge\"\nREDIS_URL=\"{}\"\nLOG_LEVEL=\"{marker}\"\n",
            env["JWT_SECRET"], env["MONGODB_URI"], env["REDIS_URL"]
        );
        let path = self.work.join("lower-bound.env");
        std::fs::write(&path, file).unwrap();
        let mut script = String::from("set -e\n");
        for host in self.hosts(n) {
            script.push_str(&format!(
                "(ssh -i {key} -o BatchMode=yes -o UserKnownHostsFile={kh} -o ControlMaster=no root@{addr} \
                 'umask 077; cat > /opt/voxbridge/.env.lb && chown voxbridge:voxbridge /opt/voxbridge/.env.lb && \
                  mv -f /opt/voxbridge/.env.lb /opt/voxbridge/.env && systemctl restart voxbridge.service' < {file} \
                 && curl -sf -o /dev/null http://{addr}:8080/health) &\n",
                key = self.testbed.client_key.display(),
                kh = self.testbed.known_hosts.display(),
                addr = host.addr,
                file = path.display()
            ));
        }
        script
            .push_str("fail=0; for job in $(jobs -p); do wait $job || fail=1; done; exit $fail\n");
        let status = Command::new("bash").arg("-c").arg(script).status().unwrap();
        assert!(status.success(), "the lower bound failed");
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

fn main() {
    let repetitions: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf();
    eprintln!("starting 50 testbed hosts");
    let testbed = testbed::Testbed::start(50);
    // Every run restarts every unit, many times a minute: lift systemd's start limit.
    for host in &testbed.hosts {
        testbed.sh_ok(
            host,
            "mkdir -p /etc/systemd/system/voxbridge.service.d && \
             printf '[Unit]\\nStartLimitIntervalSec=0\\n' > /etc/systemd/system/voxbridge.service.d/bench.conf && \
             systemctl daemon-reload",
        );
    }
    let work = testbed.dir.join("bench");
    std::fs::create_dir_all(work.join("cp")).unwrap();
    std::fs::write(
        work.join("voxbridge.env.example"),
        "JWT_SECRET=\nMONGODB_URI=\nMONGODB_DB=voxbridge\nREDIS_URL=\nLOG_LEVEL=info\n",
    )
    .unwrap();
    let bench = Bench {
        testbed: &testbed,
        root: root.clone(),
        work,
    };

    let mut times: BTreeMap<(usize, &str), Vec<f64>> = BTreeMap::new();
    let mut rss: BTreeMap<usize, u64> = BTreeMap::new();
    let mut cpu: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    // One untimed warm-up of each tool (first SSH logins, Python imports).
    for tool in TOOLS {
        bench.run(tool, 1, &format!("warmup-{tool}"));
    }
    for n in SIZES {
        for rep in 0..repetitions {
            for offset in 0..TOOLS.len() {
                let tool = TOOLS[(rep + offset) % TOOLS.len()];
                let (seconds, peak) = bench.run(tool, n, &format!("bench-{tool}-{n}-{rep}"));
                eprintln!(
                    "{n:>2} hosts  {tool:<8} {seconds:>7.2} s{}",
                    peak.map(|(p, c)| format!("  peak RSS {} MiB, CPU {c:.2} s", p / 1024))
                        .unwrap_or_default()
                );
                times.entry((n, tool)).or_default().push(seconds);
                if let Some((peak, seconds)) = peak {
                    let max = rss.entry(n).or_default();
                    *max = (*max).max(peak);
                    cpu.entry(n).or_default().push(seconds);
                }
            }
        }
    }

    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let mut out = format!(
        "Measured {} UTC on {} ({} cores), {repetitions} repetitions per cell, tools alternating.\n\n\
         | hosts | hostenv (s) | ansible-playbook (s) | bare ssh (s) | ansible / hostenv | hostenv / bare ssh | hostenv peak RSS | hostenv CPU (s) |\n\
         |---|---|---|---|---|---|---|---|\n",
        hostenv::audit::rfc3339(std::time::SystemTime::now()),
        model,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    for n in SIZES {
        let mut median_of = |tool| median(times.get_mut(&(n, tool)).unwrap());
        let (h, a, s) = (median_of("hostenv"), median_of("ansible"), median_of("ssh"));
        out.push_str(&format!(
            "| {n} | {h:.2} | {a:.2} | {s:.2} | {:.1}x | {:.2}x | {:.1} MiB | {:.2} |\n",
            a / h,
            h / s,
            rss[&n] as f64 / 1024.0,
            median(cpu.get_mut(&n).unwrap())
        ));
    }
    println!("{out}");
    std::fs::create_dir_all(root.join("target/bench")).unwrap();
    std::fs::write(root.join("target/bench/results.md"), &out).unwrap();
}
