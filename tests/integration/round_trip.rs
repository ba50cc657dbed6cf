//! The systemd EnvironmentFile writer against the independent reader of every
//! grammar generation (v219 to v260), over thousands of generated values, and
//! the bytes of a rendered file.

use std::collections::BTreeMap;

use hostenv::prepare;
use hostenv::render::systemd::{self, Generation, Unfit, MAX_ASSIGNMENT_BYTES};
use hostenv::Catalog;
use hostenv::Deployment;
use hostenv::ExposeSecret;
use pretty_assertions::assert_eq;
use proptest::prelude::*;
use proptest::test_runner::{RngAlgorithm, TestRng, TestRunner};

/// Characters that matter to the grammar, plus ordinary and multi-byte ones.
const PIECES: &[&str] = &[
    "\"", "'", "\\", "$", "`", "#", ";", "=", " ", "\t", "\n", "\r", "\r\n", "${X}", "$HOME",
    "\\n", "\\\"", "a", "Z", "0", "_", "-", ".", "/", ":", "@", "é", "✓", "𝄞", "\u{7f}", "\u{1}",
    "{", "}", "export ", "KEY=", "\\ ", "\\\"", "\\\\", "\\#", "\\;", "\\'", "\\\t", "\u{FFFD}",
];

/// Noncharacters: one value in twenty holds one somewhere.
const NONCHARACTERS: &[&str] = &["\u{FDD0}", "\u{FFFF}", "\u{10FFFE}"];

/// A value of up to 40 pieces; one in twenty ends with a noncharacter.
fn generated_value() -> impl Strategy<Value = String> {
    let pieces = prop::collection::vec(prop::sample::select(PIECES), 0..40);
    let noncharacter = prop_oneof![
        19 => Just(None),
        1 => prop::sample::select(NONCHARACTERS).prop_map(Some),
    ];
    (pieces, noncharacter).prop_map(|(pieces, noncharacter)| {
        let mut value = pieces.concat();
        value.extend(noncharacter);
        value
    })
}

/// What the test expects of a value, worked out apart from the writer: a
/// noncharacter fails the whole file everywhere; a newline or CR after a
/// backslash has no spelling every version reads alike.
fn expected_unfit(value: &str) -> Option<Unfit> {
    let noncharacter = value.chars().any(|c| {
        let code = c as u32;
        (0xFDD0..=0xFDEF).contains(&code) || code & 0xFFFE == 0xFFFE
    });
    if noncharacter {
        return Some(Unfit::Noncharacter);
    }
    let after_backslash = value.find('\\').map(|at| &value[at..]);
    after_backslash
        .is_some_and(|rest| rest.contains(['\n', '\r']))
        .then_some(Unfit::NoSpelling)
}

fn pairs(parsed: systemd::Parsed) -> Vec<(String, String)> {
    parsed
        .assignments
        .into_iter()
        .map(|a| (a.key, a.value))
        .collect()
}

#[test]
fn thousands_of_generated_values_read_back_exactly() {
    // Deterministic, so a failure reproduces (and proptest shrinks it).
    let config = ProptestConfig {
        cases: 400,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let counts = std::cell::Cell::new((0, 0, 0));
    let files = prop::collection::vec(generated_value(), 10);
    let outcome = runner.run(&files, |values| {
        let (mut checked, mut refused, mut v247_only) = counts.get();
        let generated: Vec<(String, String)> = values
            .into_iter()
            .enumerate()
            .map(|(i, value)| (format!("KEY_{i}"), value))
            .collect();
        let mut entries = Vec::new();
        let mut modern = Vec::new();
        for (key, value) in generated {
            let unfit = expected_unfit(&value);
            prop_assert_eq!(
                systemd::check(&key, &value).err(),
                unfit.clone(),
                "{:?}",
                value
            );
            match unfit {
                None => entries.push((key, value)),
                Some(Unfit::NoSpelling) => modern.push((key, value)),
                Some(_) => refused += 1,
            }
        }
        // Every generation reads the one spelling back exactly, less what it drops.
        let text = systemd::render(entries.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        for generation in Generation::ALL {
            let parsed = systemd::parse_as(&text, generation);
            prop_assert!(parsed.lines_without_assignment.is_empty(), "{:?}", text);
            let kept: Vec<(String, String)> = entries
                .iter()
                .filter(|(_, v)| generation.drops(v).is_none())
                .cloned()
                .collect();
            prop_assert_eq!(pairs(parsed), kept, "{:?}: {:?}", generation, text);
        }
        // With `target.systemdMin` 241 single quotes carry those v241 keeps.
        let kept_by_v241: Vec<(String, String)> = entries
            .iter()
            .chain(&modern)
            .filter(|(_, v)| Generation::V241.drops(v).is_none())
            .cloned()
            .collect();
        for (key, value) in &kept_by_v241 {
            prop_assert_eq!(
                systemd::check_for(key, value, Some(241)),
                Ok(()),
                "{:?}",
                value
            );
        }
        let text = systemd::render_for(
            kept_by_v241.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            Some(241),
        );
        for generation in Generation::from(241) {
            prop_assert_eq!(
                pairs(systemd::parse_as(&text, generation)),
                kept_by_v241.clone(),
                "{:?}: {:?}",
                generation,
                text
            );
        }
        // With `target.systemdMin` 248 the v247 spelling carries all of them.
        let all: Vec<(String, String)> = entries.iter().chain(&modern).cloned().collect();
        for (key, value) in &all {
            prop_assert_eq!(
                systemd::check_for(key, value, Some(248)),
                Ok(()),
                "{:?}",
                value
            );
        }
        let text =
            systemd::render_for(all.iter().map(|(k, v)| (k.as_str(), v.as_str())), Some(248));
        for generation in Generation::from(248) {
            prop_assert_eq!(
                pairs(systemd::parse_as(&text, generation)),
                all.clone(),
                "{:?}",
                generation
            );
        }
        checked += entries.len();
        v247_only += modern.len();
        counts.set((checked, refused, v247_only));
        Ok(())
    });
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
    let (checked, refused, v247_only) = counts.get();
    assert_eq!(checked + refused + v247_only, 4000);
    assert!(
        checked > 1000 && refused > 100 && v247_only > 100,
        "{checked} {refused} {v247_only}"
    );
}

#[test]
fn values_up_to_the_length_limit_round_trip_and_one_more_byte_is_refused() {
    let key = "BIG";
    let longest = "\"$\\`".repeat((MAX_ASSIGNMENT_BYTES - key.len() - 1) / 4);
    let longest = format!(
        "{longest}{}",
        "x".repeat(MAX_ASSIGNMENT_BYTES - key.len() - 1 - longest.len())
    );
    assert_eq!(key.len() + 1 + longest.len(), MAX_ASSIGNMENT_BYTES);
    assert_eq!(systemd::check(key, &longest), Ok(()));
    let text = systemd::render([(key, longest.as_str())]);
    for generation in Generation::ALL {
        assert_eq!(
            systemd::parse_as(&text, generation).assignments[0].value,
            longest,
            "{generation:?}"
        );
    }
    let over = format!("{longest}y");
    assert!(systemd::check(key, &over).is_err());
}

#[test]
fn a_rendered_host_file_has_exact_deterministic_bytes() {
    let dir = crate::common::TempDir::new("render");
    std::fs::write(dir.path().join(".env.example"), "B=\nA=\nC=\n").unwrap();
    let request = serde_json::json!({
        "service": "billing",
        "contract": dir.path().join(".env.example").to_str().unwrap(),
        "hosts": ["h1", {"host": "h2", "env": {"C": {"value": "per host"}}}],
        "env": {"A": {"secretEnv": "A_SECRET"}, "B": {"value": "two words"}, "C": {"value": "$HOME \"q\""}},
        "target": {"path": "/srv/billing/.env", "owner": "billing"},
        "restart": {"units": ["billing.service"]},
        "verify": []
    });
    let deployment: Deployment = serde_json::from_value(request).unwrap();
    let env: BTreeMap<String, String> =
        [("A_SECRET".to_string(), "multi\nline `x` \\".to_string())].into();
    let render = || {
        let prepared = prepare(&deployment, "", &env, &Catalog::builtin()).unwrap();
        prepared
            .resolution
            .files
            .iter()
            .map(|f| f.text.expose_secret().to_string())
            .collect::<Vec<_>>()
    };
    let files = render();
    let header = "# Managed by hostenv: edits on this host are overwritten by the next deploy.\n";
    // The part before a backslash quoted, the rest escaped; `$` and backtick as they are.
    assert_eq!(
        files,
        [
            format!("{header}B=\"two words\"\nA=\"multi\nline `x` \"\\\\\nC=\"$HOME \\\"q\\\"\"\n"),
            format!("{header}B=\"two words\"\nA=\"multi\nline `x` \"\\\\\nC=\"per host\"\n"),
        ]
    );
    assert_eq!(render(), files, "same input, same bytes");
}
