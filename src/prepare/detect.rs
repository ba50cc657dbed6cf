//! The one credential detector: does a literal look like a secret? Used to refuse
//! credential-looking `value`s (they would be shown in results), BuildEnv values
//! (they would be baked into a public bundle) and, later, by `lint`.
//!
//! It says why in words that never quote the value.

/// Prefixes of well-known token formats, each with the least number of
/// characters that must follow it for a match.
const TOKEN_PREFIXES: &[(&str, usize)] = &[
    ("ghp_", 30),
    ("gho_", 30),
    ("ghu_", 30),
    ("ghs_", 30),
    ("ghr_", 30),
    ("github_pat_", 40),
    ("glpat-", 20),
    ("xoxb-", 20),
    ("xoxp-", 20),
    ("xoxa-", 20),
    ("xoxs-", 20),
    ("xapp-", 20),
    ("sk-", 20),
    ("sk_live_", 16),
    ("rk_live_", 16),
    ("sk_test_", 16),
    ("AKIA", 16),
    ("ASIA", 16),
    ("AIza", 30),
    ("SG.", 30),
    ("npm_", 30),
    ("pypi-", 30),
    ("hf_", 30),
    ("dop_v1_", 40),
    ("shpat_", 20),
];

/// Strings at least this long are measured for entropy.
const MIN_ENTROPY_LENGTH: usize = 20;
/// Bits per character above which a mixed letters-and-digits string counts as random.
const ENTROPY_THRESHOLD: f64 = 4.0;
/// Hex strings this long are keys or digests.
const MIN_HEX_LENGTH: usize = 32;

/// Why `value` looks like a credential, or None.
pub fn credential_reason(value: &str) -> Option<String> {
    if value.contains("PRIVATE KEY-----") || value.contains("PRIVATE KEY BLOCK-----") {
        return Some("it holds a private key block".into());
    }
    if has_uri_password(value) {
        return Some("it is a URI with a password (`user:password@`)".into());
    }
    for token in tokens(value) {
        if let Some(prefix) = token_prefix(token) {
            return Some(format!(
                "it holds a token with the well-known prefix `{prefix}`"
            ));
        }
        if looks_random(token) {
            return Some("it holds a long high-entropy string".into());
        }
    }
    None
}

/// Maximal runs of characters that tokens, keys and base64 are made of.
fn tokens(value: &str) -> impl Iterator<Item = &str> {
    value
        .split(|c: char| !(c.is_ascii_alphanumeric() || "+/=_-.".contains(c)))
        .filter(|token| !token.is_empty())
}

fn token_prefix(token: &str) -> Option<&'static str> {
    TOKEN_PREFIXES.iter().find_map(|(prefix, min_rest)| {
        let rest = token.strip_prefix(prefix)?;
        let body = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || "_-".contains(*c))
            .count();
        (body >= *min_rest).then_some(*prefix)
    })
}

fn looks_random(token: &str) -> bool {
    // Dots separate host names and versions; a JWT's three parts are each random.
    token.split('.').any(|part| {
        let part = part.trim_end_matches('=');
        if part.len() >= MIN_HEX_LENGTH && part.chars().all(|c| c.is_ascii_hexdigit()) {
            return true;
        }
        part.len() >= MIN_ENTROPY_LENGTH
            && part.chars().any(|c| c.is_ascii_digit())
            && part.chars().any(|c| c.is_ascii_alphabetic())
            && shannon_entropy(part) >= ENTROPY_THRESHOLD
    })
}

fn shannon_entropy(text: &str) -> f64 {
    let mut counts = [0usize; 256];
    for byte in text.bytes() {
        counts[byte as usize] += 1;
    }
    let total = text.len() as f64;
    counts
        .iter()
        .filter(|count| **count > 0)
        .map(|count| {
            let p = *count as f64 / total;
            -p * p.log2()
        })
        .sum()
}

/// `scheme://user:password@host`, with a non-empty password.
fn has_uri_password(value: &str) -> bool {
    value.match_indices("://").any(|(at, _)| {
        let authority_end = value[at + 3..]
            .find(['/', '?', '#', ' '])
            .map_or(value.len(), |end| at + 3 + end);
        let authority = &value[at + 3..authority_end];
        match authority.rfind('@') {
            Some(at_sign) => authority[..at_sign]
                .split_once(':')
                .is_some_and(|(_, password)| !password.is_empty()),
            None => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_credentials() {
        let flagged = [
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjE=\n-----END OPENSSH PRIVATE KEY-----",
            "-----BEGIN PGP PRIVATE KEY BLOCK-----",
            "mongodb://app:s3cret@db.internal:27017/voxbridge",
            "redis://:hunter2@cache:6379/0",
            "ghp_0123456789abcdefghijABCDEFGHIJ0123",
            "xoxb-123456789012-abcdefghijklmnop",
            "sk-proj-abcdefghijklmnopqrstuvwx",
            "AKIAIOSFODNN7EXAMPLE",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            "c2VjcmV0LXZhbHVlLXRoYXQtaXMtbG9uZy1lbm91Z2gK7x9Q",
            "Xq3vB7nK2pL9mR4tY8wZ1cF6",
            "0123456789abcdef0123456789abcdef",
        ];
        for value in flagged {
            assert!(credential_reason(value).is_some(), "not flagged: {value}");
        }
    }

    #[test]
    fn leaves_ordinary_config_alone() {
        let fine = [
            "info",
            "voxbridge",
            "https://api.example.com/v1/health",
            "mongodb://db.internal:27017/voxbridge",
            "redis://cache:6379/0",
            "123e4567-e89b-12d3-a456-426614174000",
            "#1f2937",
            "ori_console_token",
            "application_configuration_value",
            "/opt/voxbridge/certs/ca.pem",
            "VOXCORE_WORKER_SOCKET_DIRECTORY",
            "1.2.3-beta.4+build.20261128",
            "skeleton-key",
            "",
        ];
        for value in fine {
            assert_eq!(credential_reason(value), None, "flagged: {value}");
        }
    }

    #[test]
    fn reasons_never_quote_the_value() {
        let value = "mongodb://app:s3cret@db";
        assert!(!credential_reason(value).unwrap().contains("s3cret"));
    }
}
