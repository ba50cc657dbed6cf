//! The documentation points only at things that exist: every relative link in
//! the Markdown pages at the top of the repository (and under docs/) names a
//! file or directory of the repository.

use crate::common::repo_root;

/// The `](target)` links of a Markdown text, less web links and anchors.
fn relative_links(text: &str) -> Vec<String> {
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
