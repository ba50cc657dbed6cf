//! The systemd EnvironmentFile writer against the independent reader, over
//! thousands of generated values, and the bytes of a rendered file.

use std::collections::BTreeMap;

use hostenv::catalog::Catalog;
use hostenv::check::prepare;
use hostenv::render::systemd::{self, MAX_ASSIGNMENT_BYTES};
use hostenv::request::Deployment;
use hostenv::secret::ExposeSecret;
use pretty_assertions::assert_eq;

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Characters that matter to the grammar, plus ordinary and multi-byte ones.
const PIECES: &[&str] = &[
    "\"", "'", "\\", "$", "`", "#", ";", "=", " ", "\t", "\n", "\r", "\r\n", "${X}", "$HOME",
    "\\n", "\\\"", "a", "Z", "0", "_", "-", ".", "/", ":", "@", "é", "✓", "𝄞", "\u{7f}", "\u{1}",
    "{", "}", "export ", "KEY=",
];

fn generated_value(rng: &mut Rng) -> String {
    let len = rng.below(40);
    (0..len).map(|_| PIECES[rng.below(PIECES.len())]).collect()
}

#[test]
fn thousands_of_generated_values_read_back_exactly() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut checked = 0;
    for round in 0..400 {
        let entries: Vec<(String, String)> = (0..10)
            .map(|i| (format!("KEY_{round}_{i}"), generated_value(&mut rng)))
            .collect();
        for (key, value) in &entries {
            assert_eq!(systemd::check(key, value), Ok(()), "{value:?}");
        }
        let text = systemd::render(entries.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let parsed = systemd::parse(&text);
        assert!(parsed.lines_without_assignment.is_empty(), "{text:?}");
        let read: Vec<(String, String)> = parsed
            .assignments
            .into_iter()
            .map(|a| (a.key, a.value))
            .collect();
        assert_eq!(read, entries);
        checked += entries.len();
    }
    assert_eq!(checked, 4000);
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
    assert_eq!(systemd::parse(&text).assignments[0].value, longest);
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
    assert_eq!(
        files,
        [
            format!("{header}B=\"two words\"\nA=\"multi\nline \\`x\\` \\\\\"\nC=\"\\$HOME \\\"q\\\"\"\n"),
            format!("{header}B=\"two words\"\nA=\"multi\nline \\`x\\` \\\\\"\nC=\"per host\"\n"),
        ]
    );
    assert_eq!(render(), files, "same input, same bytes");
}
