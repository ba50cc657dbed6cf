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
//!
//! `latency [REPETITIONS]` puts a delay relay (bench/relay.rs) between the
//! tools and every host and runs each cell at RTT 0 and 60 ms: the difference
//! over 60 ms is the number of round trips a tool pays, per tool and per
//! hostenv step (from the result's step timings). `canary [REPETITIONS]` does
//! the same for hostenv alone: a one-batch deploy of 1 and 10 hosts and a
//! canary deploy of 10 (one host, then nine), with the steps of a host that
//! waited for its batch. `scale [REPETITIONS]` runs hostenv alone on 100 and
//! 200 hosts and records its CPU time and peak RSS.

#[allow(dead_code)]
#[path = "../tests/integration/testbed.rs"]
mod testbed;

#[path = "../bench/relay.rs"]
mod relay;

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
    /// The address each tool reaches host i at: its own, or its relay's.
    addrs: Vec<String>,
    /// A known_hosts file for those addresses.
    known_hosts: PathBuf,
    /// Each Ansible run starts without a live ControlMaster (the cold case).
    cold_ansible: bool,
}

/// What one run of a tool measured.
#[derive(Default)]
struct Measured {
    seconds: f64,
    /// hostenv only: peak RSS in KiB and user + system CPU seconds.
    rss_and_cpu: Option<(u64, f64)>,
    /// hostenv only: one host's step durations in ms, summed by step name
    /// (the first host's; for a canary deploy, the second's, which waited
    /// for its batch).
    steps: BTreeMap<String, f64>,
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

impl<'a> Bench<'a> {
    /// Every tool reaches the hosts at their own addresses.
    fn direct(testbed: &'a testbed::Testbed, root: &Path, work: PathBuf) -> Bench<'a> {
        Bench {
            addrs: testbed.hosts.iter().map(|h| h.addr.clone()).collect(),
            known_hosts: testbed.known_hosts.clone(),
            testbed,
            root: root.to_path_buf(),
            work,
            cold_ansible: false,
        }
    }

    fn hosts(&self, n: usize) -> Vec<&testbed::TestHost> {
        self.testbed.hosts.iter().take(n).collect()
    }

    /// Runs one tool on `n` hosts.
    fn run(&self, tool: &str, n: usize, marker: &str) -> Measured {
        let started = Instant::now();
        let mut measured = match tool {
            "hostenv" => self.hostenv(n, marker, serde_json::json!({"parallel": n}), 0),
            "hostenv-canary" => {
                let rollout = serde_json::json!({"canary": 1, "parallel": n});
                self.hostenv(n, marker, rollout, 1.min(n - 1))
            }
            "ansible" => {
                self.ansible(n, marker);
                Measured::default()
            }
            _ => {
                self.ssh(n, marker);
                Measured::default()
            }
        };
        measured.seconds = started.elapsed().as_secs_f64();
        let host = &self.testbed.hosts[n - 1];
        let file = self.testbed.sh_ok(host, "cat /opt/voxbridge/.env");
        assert!(
            file.contains(marker),
            "{tool} did not deploy {marker} to {}",
            host.addr
        );
        measured
    }

    /// Runs hostenv with `rollout`; its peak RSS, CPU time and the steps of
    /// host `steps_of`.
    fn hostenv(
        &self,
        n: usize,
        marker: &str,
        rollout: serde_json::Value,
        steps_of: usize,
    ) -> Measured {
        let request = serde_json::json!({
            "apiVersion": "hostenv/v1", "kind": "Deploy", "service": "voxbridge",
            "contract": self.work.join("voxbridge.env.example"),
            "hosts": self.addrs[..n].to_vec(),
            "env": {
                "JWT_SECRET": {"secretEnv": "JWT_SECRET"}, "MONGODB_URI": {"secretEnv": "MONGODB_URI"},
                "REDIS_URL": {"secretEnv": "REDIS_URL"}, "MONGODB_DB": {"value": "voxbridge"},
                "LOG_LEVEL": {"value": marker}
            },
            "allowSharedChange": true,
            "ssh": {"user": "root", "knownHosts": self.known_hosts, "identityFileEnv": "TESTBED_SSH_KEY"},
            "rollout": rollout,
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
        let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let mut steps = BTreeMap::new();
        for step in result["hosts"][steps_of]["steps"]
            .as_array()
            .into_iter()
            .flatten()
        {
            *steps
                .entry(step["name"].as_str().unwrap().to_string())
                .or_default() += step["ms"].as_f64().unwrap();
        }
        Measured {
            seconds: 0.0,
            rss_and_cpu: Some((number(0) as u64, number(2) + number(3))),
            steps,
        }
    }

    fn ansible(&self, n: usize, marker: &str) {
        let mut inventory = String::from("[targets]\n");
        for (host, addr) in self.hosts(n).iter().zip(&self.addrs) {
            inventory.push_str(&format!("{} ansible_host={addr}\n", host.hostname));
        }
        let control = if self.cold_ansible {
            // A fresh control directory: no ControlMaster of an earlier run is reused.
            self.work.join(format!("cp-{marker}"))
        } else {
            self.work.join("cp")
        };
        std::fs::create_dir_all(&control).unwrap();
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
                control.display(),
                self.known_hosts.display()
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
        if self.cold_ansible {
            // Its ControlMasters would linger for 60 s, each holding an sshd
            // session on a host: stop them, so runs do not pile up.
            let _ = Command::new("pkill")
                .arg("-f")
                .arg(control.display().to_string())
                .status();
        }
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
        for addr in &self.addrs[..n] {
            script.push_str(&format!(
                "(ssh -i {key} -o BatchMode=yes -o UserKnownHostsFile={kh} -o ControlMaster=no root@{addr} \
                 'umask 077; cat > /opt/voxbridge/.env.lb && chown voxbridge:voxbridge /opt/voxbridge/.env.lb && \
                  mv -f /opt/voxbridge/.env.lb /opt/voxbridge/.env && systemctl restart voxbridge.service' < {file} \
                 && curl -sf -o /dev/null http://{addr}:8080/health) &\n",
                key = self.testbed.client_key.display(),
                kh = self.known_hosts.display(),
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

/// The testbed of `count` hosts, with systemd's start limit lifted (every run
/// restarts every unit, many times a minute), and the benchmark's contract.
fn start(count: usize) -> (testbed::Testbed, PathBuf) {
    eprintln!("starting {count} testbed hosts");
    let testbed = testbed::Testbed::start(count);
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
    (testbed, work)
}

fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    format!(
        "{} UTC on {} ({} cores)",
        hostenv::rfc3339(std::time::SystemTime::now()),
        model,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    )
}

fn write_results(root: &Path, name: &str, out: &str) {
    println!("{out}");
    std::fs::create_dir_all(root.join("target/bench")).unwrap();
    std::fs::write(root.join("target/bench").join(name), out).unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, repetitions) = match args.first().map(String::as_str) {
        Some(mode @ ("latency" | "canary" | "scale")) => (mode.to_string(), args.get(1)),
        _ => ("loopback".to_string(), args.first()),
    };
    let repetitions: usize = repetitions.and_then(|a| a.parse().ok()).unwrap_or(5);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf();
    match mode.as_str() {
        "latency" => latency(&root, repetitions),
        "canary" => canary(&root, repetitions),
        "scale" => scale(&root, repetitions),
        _ => loopback(&root, repetitions),
    }
}

/// hostenv, Ansible and bare ssh on 1, 10 and 50 hosts over loopback.
fn loopback(root: &Path, repetitions: usize) {
    let (testbed, work) = start(50);
    let bench = Bench::direct(&testbed, root, work);

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
                let measured = bench.run(tool, n, &format!("bench-{tool}-{n}-{rep}"));
                eprintln!(
                    "{n:>2} hosts  {tool:<8} {:>7.2} s{}",
                    measured.seconds,
                    measured
                        .rss_and_cpu
                        .map(|(p, c)| format!("  peak RSS {} MiB, CPU {c:.2} s", p / 1024))
                        .unwrap_or_default()
                );
                times.entry((n, tool)).or_default().push(measured.seconds);
                if let Some((peak, seconds)) = measured.rss_and_cpu {
                    let max = rss.entry(n).or_default();
                    *max = (*max).max(peak);
                    cpu.entry(n).or_default().push(seconds);
                }
            }
        }
    }

    let mut out = format!(
        "Measured {}, {repetitions} repetitions per cell, tools alternating.\n\n\
         | hosts | hostenv (s) | ansible-playbook (s) | bare ssh (s) | ansible / hostenv | hostenv / bare ssh | hostenv peak RSS | hostenv CPU (s) |\n\
         |---|---|---|---|---|---|---|---|\n",
        machine()
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
    write_results(root, "results.md", &out);
}

/// The one-way delay of the latency benchmark: RTT 60 ms.
const ONE_WAY: std::time::Duration = std::time::Duration::from_millis(30);

/// A delay relay in front of every host (127.78.0.N for the host at
/// 127.77.0.N, SSH and HTTP), and a bench whose tools reach the hosts through it.
fn through_relay<'a>(
    testbed: &'a testbed::Testbed,
    root: &Path,
    work: PathBuf,
) -> (relay::Relay, Bench<'a>) {
    let pairs: Vec<(String, String)> = testbed
        .hosts
        .iter()
        .map(|h| {
            let last = h.addr.rsplit('.').next().unwrap();
            (format!("127.78.0.{last}"), h.addr.clone())
        })
        .collect();
    let relay = relay::Relay::start(&pairs, &[22, 8080]);
    let known_hosts = work.join("relay_known_hosts");
    let mut lines = String::new();
    for line in std::fs::read_to_string(&testbed.known_hosts)
        .unwrap()
        .lines()
    {
        let (addr, key) = line.split_once(' ').unwrap();
        let relayed = pairs.iter().find(|(_, up)| up == addr).unwrap();
        lines.push_str(&format!("{} {key}\n", relayed.0));
    }
    std::fs::write(&known_hosts, lines).unwrap();
    let bench = Bench {
        addrs: pairs.iter().map(|(listen, _)| listen.clone()).collect(),
        known_hosts,
        testbed,
        root: root.to_path_buf(),
        work,
        cold_ansible: true,
    };
    (relay, bench)
}

/// Medians through the relay, per cell (hosts, tool) and RTT in ms.
#[derive(Default)]
struct Delayed {
    times: BTreeMap<(usize, &'static str, u128), Vec<f64>>,
    steps: BTreeMap<(usize, &'static str, String, u128), Vec<f64>>,
}

impl Delayed {
    /// Runs every cell at RTT 0 and 60 ms, `repetitions` times, the tools of
    /// one size alternating.
    fn measure(
        bench: &Bench,
        relay: &relay::Relay,
        cells: &[(usize, &'static str)],
        repetitions: usize,
    ) -> Delayed {
        let mut delayed = Delayed::default();
        let delays = [std::time::Duration::ZERO, ONE_WAY];
        for rep in 0..repetitions {
            for delay in delays {
                relay.set_delay(delay);
                for offset in 0..cells.len() {
                    let (n, tool) = cells[(rep + offset) % cells.len()];
                    let rtt = delay.as_millis() * 2;
                    let measured = bench.run(tool, n, &format!("lat-{tool}-{n}-{rep}-{rtt}"));
                    eprintln!(
                        "{n:>2} hosts  RTT {rtt:>2} ms  {tool:<14} {:>7.2} s",
                        measured.seconds
                    );
                    delayed
                        .times
                        .entry((n, tool, rtt))
                        .or_default()
                        .push(measured.seconds);
                    for (step, ms) in measured.steps {
                        delayed
                            .steps
                            .entry((n, tool, step, rtt))
                            .or_default()
                            .push(ms);
                    }
                }
            }
        }
        relay.set_delay(std::time::Duration::ZERO);
        delayed
    }

    /// " t0 / t60 | round trips |" for one cell.
    fn cell(&mut self, n: usize, tool: &'static str) -> String {
        let rtt60 = ONE_WAY.as_millis() * 2;
        let t0 = median(self.times.get_mut(&(n, tool, 0)).unwrap());
        let t60 = median(self.times.get_mut(&(n, tool, rtt60)).unwrap());
        format!(
            " {t0:.2} / {t60:.2} | {:.1} |",
            (t60 - t0) * 1000.0 / rtt60 as f64
        )
    }

    /// The per-step table of one cell.
    fn steps_table(&mut self, n: usize, tool: &'static str) -> String {
        let rtt60 = ONE_WAY.as_millis() * 2;
        let mut out = format!(
            "| step | RTT 0 (ms) | RTT {rtt60} ms (ms) | round trips |\n|---|---|---|---|\n"
        );
        let names: std::collections::BTreeSet<String> = self
            .steps
            .keys()
            .filter(|(m, t, _, _)| (*m, *t) == (n, tool))
            .map(|(_, _, step, _)| step.clone())
            .collect();
        for name in names {
            let mut at = |rtt: u128| {
                self.steps
                    .get_mut(&(n, tool, name.clone(), rtt))
                    .map(|v| median(v))
                    .unwrap_or(0.0)
            };
            let (m0, m60) = (at(0), at(rtt60));
            out.push_str(&format!(
                "| {name} | {m0:.0} | {m60:.0} | {:.1} |\n",
                (m60 - m0) / rtt60 as f64
            ));
        }
        out
    }
}

/// Every tool through the delay relay, at RTT 0 and 60 ms; round trips per
/// tool, and per hostenv step at one host.
fn latency(root: &Path, repetitions: usize) {
    let (testbed, work) = start(50);
    let (relay, bench) = through_relay(&testbed, root, work);
    for tool in TOOLS {
        bench.run(tool, 1, &format!("warmup-{tool}"));
    }
    let mut delayed = Delayed::default();
    for n in SIZES {
        let cells: Vec<(usize, &'static str)> = TOOLS.iter().map(|tool| (n, *tool)).collect();
        let measured = Delayed::measure(&bench, &relay, &cells, repetitions);
        delayed.times.extend(measured.times);
        delayed.steps.extend(measured.steps);
    }
    let rtt60 = ONE_WAY.as_millis() * 2;
    let mut out = format!(
        "Measured {}, {repetitions} repetitions per cell, every tool through the delay relay \
         (bench/relay.rs), tools alternating; round trips = (median at RTT {rtt60} ms − median at RTT 0) / {rtt60} ms.\n\n\
         | hosts | hostenv RTT 0 / {rtt60} ms (s) | hostenv round trips | ansible RTT 0 / {rtt60} ms (s) | ansible round trips | bare ssh RTT 0 / {rtt60} ms (s) | bare ssh round trips |\n\
         |---|---|---|---|---|---|---|\n",
        machine()
    );
    for n in SIZES {
        out.push_str(&format!("| {n} |"));
        for tool in TOOLS {
            out.push_str(&delayed.cell(n, tool));
        }
        out.push('\n');
    }
    out.push_str("\nhostenv at one host, per step (the result's step timings, medians):\n\n");
    out.push_str(&delayed.steps_table(1, "hostenv"));
    write_results(root, "latency.md", &out);
}

/// hostenv alone through the delay relay: a one-batch deploy of 1 and 10
/// hosts and a canary deploy of 10 (the canary, then the nine others).
fn canary(root: &Path, repetitions: usize) {
    let (testbed, work) = start(10);
    let (relay, bench) = through_relay(&testbed, root, work);
    bench.run("hostenv", 1, "warmup-hostenv");
    let cells = [(1, "hostenv"), (10, "hostenv"), (10, "hostenv-canary")];
    let mut delayed = Delayed::measure(&bench, &relay, &cells, repetitions);
    let rtt60 = ONE_WAY.as_millis() * 2;
    let mut out = format!(
        "Measured {}, {repetitions} repetitions per cell, hostenv alone through the delay relay \
         (bench/relay.rs), cells alternating; round trips = (median at RTT {rtt60} ms − median at RTT 0) / {rtt60} ms.\n\n\
         | deploy | hosts | RTT 0 / {rtt60} ms (s) | round trips |\n|---|---|---|---|\n",
        machine()
    );
    for (n, tool) in cells {
        let what = if tool == "hostenv" {
            "one batch"
        } else {
            "canary 1, then the rest"
        };
        out.push_str(&format!("| {what} | {n} |{}\n", delayed.cell(n, tool)));
    }
    out.push_str("\nPer step, a host of a one-batch deploy of 10 (the first):\n\n");
    out.push_str(&delayed.steps_table(10, "hostenv"));
    out.push_str("\nPer step, a host of the canary deploy's second batch:\n\n");
    out.push_str(&delayed.steps_table(10, "hostenv-canary"));
    write_results(root, "canary.md", &out);
}

/// hostenv alone on 100 and 200 hosts: time, CPU and peak RSS, also per host.
fn scale(root: &Path, repetitions: usize) {
    let (testbed, work) = start(200);
    let bench = Bench::direct(&testbed, root, work);
    bench.run("hostenv", 1, "warmup-hostenv");
    let mut out = format!(
        "Measured {}, {repetitions} repetitions per cell, hostenv alone over loopback.\n\n\
         | hosts | hostenv (s) | CPU (s) | CPU per host (ms) | peak RSS | peak RSS per host (KiB) |\n\
         |---|---|---|---|---|---|\n",
        machine()
    );
    for n in [50, 100, 200] {
        let (mut seconds, mut cpu, mut peak) = (Vec::new(), Vec::new(), 0u64);
        for rep in 0..repetitions {
            let measured = bench.run("hostenv", n, &format!("scale-{n}-{rep}"));
            let (rss, used) = measured.rss_and_cpu.unwrap();
            eprintln!(
                "{n:>3} hosts  hostenv {:>7.2} s  CPU {used:.2} s  peak RSS {} MiB",
                measured.seconds,
                rss / 1024
            );
            seconds.push(measured.seconds);
            cpu.push(used);
            peak = peak.max(rss);
        }
        let used = median(&mut cpu);
        out.push_str(&format!(
            "| {n} | {:.2} | {used:.2} | {:.1} | {:.1} MiB | {:.0} |\n",
            median(&mut seconds),
            used * 1000.0 / n as f64,
            peak as f64 / 1024.0,
            peak as f64 / n as f64
        ));
    }
    write_results(root, "scale.md", &out);
}
