//! The documentation points only at things that exist: every relative link in
//! the Markdown pages at the top of the repository (and under docs/) names a
//! file or directory of the repository.

use crate::common::repo_root;

/// The `](target)` links of a Markdown text, less web links and anchors.
pub(crate) fn relative_links(text: &str) -> Vec<String> {
    links(text)
        .into_iter()
        .map(|(path, _)| path)
        .filter(|path| !path.is_empty())
        .collect()
}

/// Every `](path#anchor)` link of a Markdown text that is not a web link.
fn links(text: &str) -> Vec<(String, Option<String>)> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split_once(')').map(|(target, _)| target))
        .filter(|target| !target.contains("://") && !target.starts_with("mailto:"))
        .map(|target| match target.split_once('#') {
            Some((path, anchor)) => (path.to_string(), Some(anchor.to_string())),
            None => (target.to_string(), None),
        })
        .collect()
}

/// The anchors GitHub gives a page's headings: lower case, spaces as `-`,
/// everything but letters, digits, `-` and `_` left out.
fn anchors(page: &str) -> Vec<String> {
    // Explicit `<a id="name"></a>` anchors, for a place that is no heading.
    let explicit = page
        .split("<a id=\"")
        .skip(1)
        .filter_map(|rest| rest.split_once('"').map(|(id, _)| id.to_string()));
    page.lines()
        .filter(|line| line.starts_with('#'))
        .map(|line| {
            line.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                    _ => None,
                })
                .collect()
        })
        .chain(explicit)
        .collect()
}

/// The Markdown pages at the top of the repository and under docs/.
fn doc_pages() -> Vec<std::path::PathBuf> {
    let markdown = |dir: std::path::PathBuf| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "md"))
            .collect()
    };
    let root = repo_root();
    let mut pages = markdown(root.clone());
    pages.extend(markdown(root.join("docs")));
    pages
}

/// Every `page.md#anchor` link in the docs names a heading of that page.
#[test]
fn every_anchor_in_the_docs_exists() {
    let pages = doc_pages();
    let mut checked = 0;
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        for (path, anchor) in links(&text) {
            let Some(anchor) = anchor else { continue };
            let target = if path.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(&path)
            };
            let heads = anchors(&std::fs::read_to_string(&target).unwrap());
            assert!(
                heads.contains(&anchor),
                "{} links to `{path}#{anchor}`, which has no such heading",
                page.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} anchors");
    assert_eq!(
        anchors("## Exit 3: a host needs a person"),
        ["exit-3-a-host-needs-a-person"]
    );
}

#[test]
fn every_relative_link_in_the_docs_exists() {
    let root = repo_root();
    let pages = doc_pages();
    assert!(pages.iter().any(|p| p.ends_with("README.md")), "{pages:?}");
    let mut checked = 0;
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        for link in relative_links(&text) {
            let target = page.parent().unwrap().join(&link).canonicalize();
            assert!(
                target.is_ok_and(|t| t.starts_with(root.canonicalize().unwrap())),
                "{} links to `{link}`, which is not in the repository",
                page.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} links");
    assert_eq!(
        relative_links("[a](b.md) [c](https://x) [d](#e) [f](g/h.md#i)"),
        ["b.md", "g/h.md"]
    );
}

/// The arguments a step takes beyond the deployment's own (its last argument
/// to `requestStep` in `vars/<step>.groovy`).
fn own_arguments(step: &str) -> Vec<String> {
    let code = std::fs::read_to_string(repo_root().join(format!("vars/{step}.groovy"))).unwrap();
    let call = code
        .split("requestStep(")
        .nth(1)
        .unwrap_or_else(|| panic!("{step} calls requestStep"));
    let own = call.rsplit_once('[').unwrap().1.split(']').next().unwrap();
    own.split(',')
        .filter_map(|pair| pair.split_once(':'))
        .map(|(name, _)| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .collect()
}

/// A step's help page says which of `hostenvDeploy`'s own arguments it does
/// not take (the step rejects them), and names those it does.
#[test]
fn help_pages_name_what_each_step_takes() {
    let deploy = own_arguments("hostenvDeploy");
    assert!(deploy.contains(&"expectPlan".to_string()), "{deploy:?}");
    for step in [
        "hostenvCheck",
        "hostenvDrift",
        "hostenvPlan",
        "hostenvRollback",
        "hostenvBackups",
    ] {
        let page = std::fs::read_to_string(repo_root().join(format!("vars/{step}.txt"))).unwrap();
        let own = own_arguments(step);
        let code = |name: &str| format!("<code>{name}</code>");
        for name in &own {
            assert!(
                page.contains(&code(name)),
                "vars/{step}.txt does not name `{name}`"
            );
        }
        let refused: Vec<&String> = deploy.iter().filter(|name| !own.contains(name)).collect();
        if refused.is_empty() {
            continue;
        }
        let except = page
            .split("except")
            .nth(1)
            .unwrap_or_else(|| panic!("vars/{step}.txt does not say which arguments it refuses"));
        let listed = except.split(['.', ';']).next().unwrap();
        for name in refused {
            assert!(
                listed.contains(&code(name)),
                "vars/{step}.txt does not list `{name}` among the arguments it refuses"
            );
        }
        assert!(!page.contains("Same arguments"), "vars/{step}.txt");
    }
}

/// The names a schema gives for `name`: the properties of an object (for
/// `Deploy`, `Rotation` and `BuildEnv`, of the request of that kind; for
/// `Result`, of the whole result), or the values of an enum.
fn schema_names(schema: &serde_json::Value, name: &str) -> Vec<String> {
    let object = match name {
        "Deploy" | "Rotation" | "BuildEnv" => schema["oneOf"]
            .as_array()
            .unwrap()
            .iter()
            .find(|kind| kind["properties"]["kind"]["const"] == name)
            .unwrap_or_else(|| panic!("no request of kind {name}")),
        "Result" | "Version" | "Catalog" => schema,
        _ => &schema["$defs"][name],
    };
    if let Some(properties) = object["properties"].as_object() {
        return properties
            .keys()
            // The envelope is listed only where the table is the whole document.
            .filter(|field| {
                ["Result", "Version"].contains(&name)
                    || !["apiVersion", "kind"].contains(&field.as_str())
            })
            .cloned()
            .collect();
    }
    object["oneOf"]
        .as_array()
        .unwrap_or_else(|| panic!("{name} is neither an object nor an enum"))
        .iter()
        .map(|value| value["const"].as_str().unwrap().to_string())
        .collect()
}

/// Every `<!-- schema: request|result NAME -->` table of docs/protocol.md
/// names exactly what the schema has: its first column's backticked names.
#[test]
fn the_protocol_reference_matches_the_schemas() {
    let page = std::fs::read_to_string(repo_root().join("docs/protocol.md")).unwrap();
    let schema = |which: &str| -> serde_json::Value {
        let path = repo_root().join(format!("schema/{which}.schema.json"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    let (request, result, version, catalog) = (
        schema("request"),
        schema("result"),
        schema("version"),
        schema("catalog"),
    );
    let mut documented = Vec::new();
    for section in page.split("<!-- schema: ").skip(1) {
        let (marker, rest) = section.split_once(" -->").unwrap();
        let (which, name) = marker.split_once(' ').unwrap();
        let rows = rest
            .lines()
            .skip_while(|line| !line.starts_with('|'))
            .take_while(|line| line.starts_with('|'))
            .skip(2);
        let mut names: Vec<String> = rows
            .flat_map(|row| {
                let first = row.split('|').nth(1).unwrap().to_string();
                first
                    .split(',')
                    .map(|name| name.trim().trim_matches('`').to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut expected = schema_names(
            match which {
                "request" => &request,
                "version" => &version,
                "catalog" => &catalog,
                _ => &result,
            },
            name,
        );
        names.sort();
        expected.sort();
        assert_eq!(names, expected, "docs/protocol.md's {which} {name} table");
        documented.push(name.to_string());
    }
    for required in [
        "Deploy",
        "HostEntry",
        "Source",
        "Ssh",
        "Jump",
        "Target",
        "Restart",
        "Verify",
        "Rollout",
        "Audit",
        "Rotation",
        "BuildEnv",
        "Result",
        "HostReport",
        "HostStatus",
        "KeyStatus",
        "ErrorKind",
        "FindingKind",
        "SourceKind",
        "Version",
        "Catalog",
    ] {
        assert!(
            documented.iter().any(|d| d == required),
            "docs/protocol.md has no {required} table"
        );
    }
}

/// CONTRIBUTING's case-file table names every field `case.json` may have,
/// as `tests/integration/cases.rs` reads it, and nothing else.
#[test]
fn contributing_describes_the_case_files_cases_rs_reads() {
    let code = std::fs::read_to_string(repo_root().join("tests/integration/cases.rs")).unwrap();
    let body = code
        .split("struct Case {")
        .nth(1)
        .unwrap()
        .split("\n}")
        .next()
        .unwrap();
    let mut fields: Vec<String> = body
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with("//") && !line.starts_with('#'))
        .filter_map(|line| line.split_once(':').map(|(name, _)| name.to_string()))
        .collect();
    fields.sort();
    let page = std::fs::read_to_string(repo_root().join("CONTRIBUTING.md")).unwrap();
    let section = page.split("## Adding a case").nth(1).unwrap();
    let section = section.split("\n## ").next().unwrap();
    let mut documented: Vec<String> = section
        .lines()
        .filter(|line| line.starts_with("| `"))
        .map(|line| line.split('`').nth(1).unwrap().to_string())
        .collect();
    documented.sort();
    assert_eq!(documented, fields, "CONTRIBUTING.md, Adding a case");
    for also in [
        "expected.json",
        "expected-files/",
        "secrets/",
        "HOSTENV_BLESS",
    ] {
        assert!(
            section.contains(also),
            "CONTRIBUTING.md, Adding a case: {also}"
        );
    }
}

/// Every help page's example of a step that builds a request names the
/// environment, which those steps require (no default: a staging run must
/// never bind production's credentials).
#[test]
fn help_page_examples_name_the_environment() {
    for entry in std::fs::read_dir(repo_root().join("vars")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if path.extension().is_none_or(|e| e != "txt")
            || ["hostenv", "hostenvLint", "hostenvBuildEnv"].contains(&name.as_str())
        {
            continue;
        }
        let page = std::fs::read_to_string(&path).unwrap();
        let examples: Vec<&str> = page
            .split(&format!("{name} "))
            .skip(1)
            .filter(|rest| rest.contains("hosts:") || rest.contains("deployments:"))
            .collect();
        assert!(!examples.is_empty(), "vars/{name}.txt has no example");
        for example in examples {
            let call = example.split("</").next().unwrap();
            assert!(
                call.contains("environment:"),
                "vars/{name}.txt: {name} {call}"
            );
        }
    }
}

/// The pages a user reads, and the text `hostenv --help` prints.
fn readable_texts() -> Vec<(String, String)> {
    let root = repo_root();
    let mut texts: Vec<(String, String)> = doc_pages()
        .into_iter()
        .map(|path| {
            let name = path.strip_prefix(&root).unwrap().display().to_string();
            (name, std::fs::read_to_string(&path).unwrap())
        })
        .collect();
    for entry in std::fs::read_dir(root.join("vars")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "txt") {
            let name = path.strip_prefix(&root).unwrap().display().to_string();
            texts.push((name, std::fs::read_to_string(&path).unwrap()));
        }
    }
    let help = crate::common::run_hostenv(&["--help"], &root, &Default::default(), None);
    texts.push(("hostenv --help".into(), help.stdout));
    texts
}

/// Facts said on several pages hold one value, the code's: a page that
/// repeats one with another value fails here, naming the page. The systemd
/// range (oldest and newest generation the reader knows), and each exit code's
/// meaning as docs/protocol.md's table, the one home of the exit codes, gives it.
#[test]
fn facts_said_on_several_pages_hold_one_value() {
    use hostenv::render::systemd::{NEWEST, OLDEST};
    let texts = readable_texts();
    let mut said = 0;
    let mut wrong = Vec::new();
    let checks: [(&str, u32); 4] = [
        (r"v(\d+) \(RHEL 7\)", OLDEST),
        (r"v\d+ \(RHEL 7\) to v(\d+)", NEWEST),
        (r"newest known \(v(\d+)\)", NEWEST),
        (r"reads as v(\d+) does", NEWEST),
    ];
    for (pattern, value) in checks {
        let pattern = regex::Regex::new(pattern).unwrap();
        for (name, text) in &texts {
            for found in pattern.captures_iter(text) {
                said += 1;
                if found[1].parse::<u32>().unwrap() != value {
                    wrong.push(format!("{name}: `{}` (the code says {value})", &found[0]));
                }
            }
        }
    }
    assert!(said >= 6, "the systemd range is said {said} times");

    // The exit codes: each line that lists them names each code by its meaning.
    let protocol = std::fs::read_to_string(repo_root().join("docs/protocol.md")).unwrap();
    let table = protocol.split("## Exit codes").nth(1).unwrap();
    let meaning = [
        (0, "success"),
        (1, "fail"),
        (2, "reject"),
        (3, "person"),
        (4, "differences"),
    ];
    for (code, word) in meaning {
        let row = table
            .lines()
            .find(|line| line.starts_with(&format!("| {code} |")))
            .unwrap_or_else(|| panic!("docs/protocol.md has no row for exit {code}"));
        assert!(row.to_lowercase().contains(word), "{row}");
    }
    let listing = regex::Regex::new(r"Exit codes: ([^\n]+(?:\n[^\n]+)*?)\.").unwrap();
    let mut listed = 0;
    for (name, text) in &texts {
        for found in listing.captures_iter(text) {
            listed += 1;
            let list = found[1].replace('\n', " ").to_lowercase();
            for (code, word) in meaning {
                let Some(rest) = list.split(&format!("{code} ")).nth(1) else {
                    wrong.push(format!("{name}: its exit codes leave out {code}"));
                    continue;
                };
                let own = rest.split(',').next().unwrap_or("");
                if !own.contains(word) {
                    wrong.push(format!("{name}: exit {code} is `{own}`, not {word}"));
                }
            }
        }
    }
    assert!(listed >= 2, "the exit codes are listed {listed} times");
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// The sudo rules a page shows are what `hostenv sudoers` prints for the
/// example request (docs/non-root-hosts.md is their home).
#[test]
fn the_sudo_rules_on_the_pages_are_the_printed_ones() {
    let root = repo_root();
    let printed = crate::common::run_hostenv(
        &[
            "sudoers",
            "--request",
            "examples/voxbridge.json",
            "--user",
            "deploy",
        ],
        &root,
        &Default::default(),
        None,
    );
    assert_eq!(printed.code, 0, "{}", printed.stdout);
    let rules: Vec<&str> = printed
        .stdout
        .lines()
        .filter(|line| line.contains("NOPASSWD"))
        .collect();
    assert_eq!(rules.len(), 2, "{}", printed.stdout);
    let mut shown = 0;
    for (name, text) in readable_texts() {
        for line in text
            .lines()
            .filter(|l| l.starts_with("deploy ALL=(root) NOPASSWD: /usr/local/sbin/hostenv-host"))
        {
            shown += 1;
            assert!(
                rules.contains(&line),
                "{name}: `{line}` is not a rule `hostenv sudoers` prints"
            );
        }
    }
    assert!(shown >= 2, "no page shows the rules");
}

/// The plugin list has one home (docs/jenkins.md#plugins), and wherever the
/// binary's lookup order is said, it is the engine's: the step's `binary`,
/// `HOSTENV_BIN`, the pinned release, `PATH`.
#[test]
fn the_plugin_list_and_the_binary_lookup_are_said_one_way() {
    let mut orders = 0;
    for (name, text) in readable_texts() {
        if name != "docs/jenkins.md" {
            assert!(
                !text.contains("Credentials Binding") && !text.contains("Pipeline Utility Steps"),
                "{name} lists plugins; link docs/jenkins.md#plugins instead"
            );
        }
        for paragraph in text.split("\n\n") {
            let flat = paragraph.replace('\n', " ");
            let (Some(bin), Some(path)) = (flat.find("HOSTENV_BIN"), flat.rfind("PATH")) else {
                continue;
            };
            let Some(release) = flat.find("pinned release") else {
                continue;
            };
            orders += 1;
            assert!(
                bin < release && release < path,
                "{name}: the binary lookup order is `binary`, HOSTENV_BIN, the pinned release, PATH: {flat}"
            );
        }
    }
    assert!(
        orders >= 2,
        "the binary lookup order is said {orders} times"
    );
    let engine = std::fs::read_to_string(repo_root().join("vars/hostenv.groovy")).unwrap();
    let lookup = engine
        .split("String binaryPath(")
        .nth(1)
        .unwrap()
        .split("\n}")
        .next()
        .unwrap();
    assert!(
        lookup.contains("options.binary ?: (env?.HOSTENV_BIN ?: 'hostenv')"),
        "the engine's lookup changed: update the pages and this test"
    );
}
