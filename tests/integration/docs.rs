//! The documentation points only at things that exist: every relative link in
//! the Markdown pages at the top of the repository (and under docs/) names a
//! file or directory of the repository.

use crate::common::repo_root;

/// The `](target)` links of a Markdown text, less web links and anchors.
fn relative_links(text: &str) -> Vec<String> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split_once(')').map(|(target, _)| target))
        .map(|target| target.split('#').next().unwrap_or_default().to_string())
        .filter(|target| {
            !target.is_empty() && !target.contains("://") && !target.starts_with("mailto:")
        })
        .collect()
}

#[test]
fn every_relative_link_in_the_docs_exists() {
    let root = repo_root();
    let mut pages: Vec<std::path::PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    if let Ok(docs) = std::fs::read_dir(root.join("docs")) {
        pages.extend(
            docs.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "md")),
        );
    }
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
