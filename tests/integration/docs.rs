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
            let target = page.parent().unwrap().join(&link);
            assert!(
                target.exists() && target.starts_with(&root) && !link.starts_with(".."),
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
