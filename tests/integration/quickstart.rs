//! The quickstart is run as written. Every ```sh block that follows a
//! `<!-- quickstart -->` line in README.md (and, separately, in
//! docs/getting-started.md) is run line by line, in one shell, from the
//! repository's root, against a fresh testbed host that answers to the
//! name the pages use (`app-1.internal`, through an /etc/hosts of the run's
//! own mount namespace). A line's `# exit N` comment is the exit status it
//! must have (0 when it says none). The reader's machine is played by a
//! HOME whose `~/.ssh/id_ed25519` the host authorizes for root, and a PATH
//! that starts with the built `hostenv` (the pages' install step).
//!
//! Afterwards the host must hold what the pages say it holds.

use std::process::Command;

use crate::common::{assert_no_leak, repo_root, TempDir};
use crate::deploy::{file_on, fingerprint, health};
use crate::testbed::Testbed;

/// The host name the pages use.
const HOST_NAME: &str = "app-1.internal";

/// One command line of a page, with the exit status its comment promises.
struct Line {
    text: String,
    exit: i32,
}

/// The quickstart blocks of a Markdown page, as lines.
fn quickstart_lines(page: &str) -> Vec<Line> {
    let mut lines = Vec::new();
    let mut marked = false;
    let mut inside = false;
    for line in page.lines() {
        if inside {
            if line.trim_start().starts_with("```") {
                inside = false;
                continue;
            }
            let text = line.trim();
            if text.is_empty() || text.starts_with('#') {
                continue;
            }
            let exit = text
                .split_once("# exit ")
                .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            lines.push(Line {
                text: text.to_string(),
                exit,
            });
        } else if line.trim() == "<!-- quickstart -->" {
            marked = true;
        } else if marked && line.trim_start().starts_with("```sh") {
            inside = true;
            marked = false;
        } else if !line.trim().is_empty() {
            marked = false;
        }
    }
    lines
}

/// A shell script that runs each line and stops at the first that exits
/// other than promised, naming it.
fn script(lines: &[Line]) -> String {
    let mut script = String::from("set +e\n");
    for (number, line) in lines.iter().enumerate() {
        // The lines that set secrets are not echoed: the output is searched for them.
        let shown = if line.text.starts_with("export ") {
            format!("$ (line {}: export)", number + 1)
        } else {
            format!("$ {}", line.text)
        };
        script.push_str(&format!(
            "printf '%s\\n' {quoted} >&2\n{text}\nrc=$?\nif [ \"$rc\" -ne {exit} ]; then echo \"quickstart line {n} exited $rc, the page says {exit}\" >&2; exit 99; fi\n",
            quoted = shell_quote(&shown),
            text = line.text,
            exit = line.exit,
            n = number + 1,
        ));
    }
    script
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Runs `page`'s quickstart against a fresh host; the host and the run's output.
fn run_page(page: &str) -> (Testbed, String) {
    let text = std::fs::read_to_string(repo_root().join(page)).unwrap();
    let lines = quickstart_lines(&text);
    assert!(
        lines.iter().any(|l| l.text.contains("hostenv deploy")),
        "{page} has no quickstart block with a deploy"
    );
    let testbed = Testbed::start(1);
    let host = testbed.host(0);
    let reader = TempDir::new("quickstart");
    let home = reader.path().join("home");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    std::fs::copy(&testbed.client_key, home.join(".ssh/id_ed25519")).unwrap();
    let hosts = reader.path().join("hosts");
    std::fs::write(
        &hosts,
        format!("127.0.0.1 localhost\n{} {HOST_NAME}\n", host.addr),
    )
    .unwrap();
    let script_path = reader.path().join("quickstart.sh");
    std::fs::write(&script_path, script(&lines)).unwrap();
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_hostenv"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg("mount --bind \"$1\" /etc/hosts && exec sh \"$2\"")
        .args(["sh", hosts.to_str().unwrap(), script_path.to_str().unwrap()])
        .current_dir(repo_root())
        .env_clear()
        .env("PATH", path)
        .env("HOME", &home)
        .output()
        .expect("unshare");
    let shown = format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{page}'s quickstart failed\n{shown}"
    );
    (testbed, shown)
}

/// The values a page exports for `KEY` (`export KEY=value`), in page order.
fn exported(page: &str, key: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo_root().join(page)).unwrap();
    quickstart_lines(&text)
        .iter()
        .flat_map(|line| {
            line.text
                .split_whitespace()
                .filter_map(|word| word.strip_prefix(&format!("{key}=")))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// README's tour: check, plan, deploy, a second deploy with a new JWT_SECRET,
/// rollback, drift. The host ends on the first JWT_SECRET, healthy, its file
/// the service user's with mode 600, and no secret was printed.
#[test]
fn the_readme_tour_runs_as_written() {
    let page = "README.md";
    let (testbed, shown) = run_page(page);
    let host = testbed.host(0);
    let jwt = exported(page, "JWT_SECRET");
    assert_eq!(jwt.len(), 2, "the tour sets JWT_SECRET twice: {jwt:?}");
    let (meta, _) = file_on(&testbed, host, "/opt/voxbridge/.env");
    assert_eq!(meta, "voxbridge:voxbridge 600");
    // The rollback put the first value back, and the service runs on it.
    assert_eq!(
        health(host, 8080, "/health")["fingerprints"]["JWT_SECRET"],
        fingerprint(&jwt[0])
    );
    let mut secrets = jwt.clone();
    secrets.extend(exported(page, "MONGODB_URI"));
    assert_no_leak("the tour's output", &shown, &secrets);
}

/// docs/getting-started.md: the known_hosts entry made with ssh-keyscan and
/// a first deploy, after which the host runs on the page's values.
#[test]
fn the_getting_started_page_runs_as_written() {
    let page = "docs/getting-started.md";
    // The request the page shows is the file it runs.
    let request =
        std::fs::read_to_string(repo_root().join("examples/quickstart/voxbridge.json")).unwrap();
    let text = std::fs::read_to_string(repo_root().join(page)).unwrap();
    assert!(
        text.contains(&format!("```json\n{request}```")),
        "{page} does not show examples/quickstart/voxbridge.json as it is"
    );
    let (testbed, shown) = run_page(page);
    let host = testbed.host(0);
    let (meta, _) = file_on(&testbed, host, "/opt/voxbridge/.env");
    assert_eq!(meta, "voxbridge:voxbridge 600");
    let jwt = exported(page, "JWT_SECRET");
    assert_eq!(
        health(host, 8080, "/health")["fingerprints"]["JWT_SECRET"],
        fingerprint(jwt.last().expect("the page sets JWT_SECRET"))
    );
    assert_no_leak("the page's output", &shown, &jwt);
}

#[test]
fn exit_comments_are_read() {
    let lines = quickstart_lines(
        "<!-- quickstart -->\n```sh\n# a comment\nhostenv plan x   # exit 4: pending\nhostenv deploy x\n```\n```sh\nnot run\n```\n",
    );
    let read: Vec<(&str, i32)> = lines.iter().map(|l| (l.text.as_str(), l.exit)).collect();
    assert_eq!(
        read,
        [
            ("hostenv plan x   # exit 4: pending", 4),
            ("hostenv deploy x", 0)
        ]
    );
}
