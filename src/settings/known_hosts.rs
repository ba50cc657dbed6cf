//! known_hosts files: read, checked line by line, and asked which key types
//! they record for a host.

use base64::Engine;

/// A known_hosts file's text. Only a file that does not exist counts as empty
/// (`acceptNew` then records the first host); a file that cannot be read, or
/// is not text, refuses every host rather than trusting every key.
pub fn read_known_hosts(path: &std::path::Path) -> std::result::Result<String, String> {
    let text = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8(bytes)
            .map_err(|_| format!("known_hosts `{}` is not a text file", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(format!("cannot read known_hosts `{}`: {e}", path.display())),
    };
    check_known_hosts(&text)
        .map_err(|problem| format!("known_hosts `{}`: {problem}", path.display()))?;
    Ok(text)
}

/// Every line is a comment, blank, or `HOSTS KEYTYPE BASE64 [COMMENT]` whose
/// key blob names its own type. libssh2 passes over lines it cannot read, so
/// a file that is not known_hosts would otherwise count as empty and
/// `acceptNew` would trust every host. `@cert-authority` and `@revoked` lines
/// cannot be checked through libssh2: ignoring a revocation would trust a
/// revoked key, so they refuse too.
pub fn check_known_hosts(text: &str) -> std::result::Result<(), String> {
    const KEY_TYPES: &[&str] = &[
        "ssh-ed25519",
        "ssh-rsa",
        "ssh-dss",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    ];
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = number + 1;
        if let Some(marker) = line
            .split_whitespace()
            .next()
            .filter(|w| w.starts_with('@'))
        {
            return Err(format!(
                "line {at}: `{marker}` entries cannot be checked by hostenv; keep them in another known_hosts"
            ));
        }
        let mut fields = line.split_whitespace();
        let (Some(_hosts), Some(kind), Some(key)) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(format!("line {at} is not `HOSTS KEYTYPE KEY`"));
        };
        if !KEY_TYPES.contains(&kind) {
            return Err(format!("line {at}: `{kind}` is not a host key type"));
        }
        let blob = base64::engine::general_purpose::STANDARD
            .decode(key)
            .map_err(|_| format!("line {at}: the key is not base64"))?;
        let named = blob
            .get(..4)
            .map(|n| u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize)
            .and_then(|n| blob.get(4..4 + n));
        if named != Some(kind.as_bytes()) {
            return Err(format!("line {at}: the key is not an `{kind}` key"));
        }
    }
    Ok(())
}

/// Whether a known_hosts host field names this host: a plain pattern list
/// (`name`, `[name]:port`), or a hashed entry (`|1|salt|hash`, `ssh-keygen -H`:
/// HMAC-SHA1 of the name under the salt).
pub fn names_host(field: &str, host: &str, port: u16) -> bool {
    let name = if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    };
    if let Some(hashed) = field.strip_prefix("|1|") {
        let engine = &base64::engine::general_purpose::STANDARD;
        let Some((salt, hash)) = hashed.split_once('|') else {
            return false;
        };
        let (Ok(salt), Ok(hash)) = (engine.decode(salt), engine.decode(hash)) else {
            return false;
        };
        use hmac::Mac;
        let Ok(mut mac) = hmac::Hmac::<sha1::Sha1>::new_from_slice(&salt) else {
            return false;
        };
        mac.update(name.as_bytes());
        return mac.verify_slice(&hash).is_ok();
    }
    field.split(',').any(|n| n == name)
}

/// The key types known_hosts records for this host, as libssh2 method names, so
/// the server is asked for a key we can check (libssh2 reports "mismatch" when
/// the only entry is of another type than the one offered).
pub fn host_key_preference(known_hosts: &str, host: &str, port: u16) -> Option<String> {
    let mut methods: Vec<&str> = Vec::new();
    for line in known_hosts.lines() {
        let mut fields = line.split_whitespace();
        let (Some(names), Some(kind)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !names_host(names, host, port) {
            continue;
        }
        let names: &[&str] = match kind {
            "ssh-ed25519" => &["ssh-ed25519"],
            "ecdsa-sha2-nistp256" | "ecdsa-sha2-nistp384" | "ecdsa-sha2-nistp521" => &[
                "ecdsa-sha2-nistp256",
                "ecdsa-sha2-nistp384",
                "ecdsa-sha2-nistp521",
            ],
            "ssh-rsa" => &["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"],
            _ => &[],
        };
        for name in names {
            if !methods.contains(name) {
                methods.push(name);
            }
        }
    }
    (!methods.is_empty()).then(|| methods.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashed_entries_steer_the_key_type_like_plain_ones() {
        // `ssh-keygen -H` of `10.0.0.5 ecdsa-sha2-nistp256 ...` and of `[10.0.0.5]:2222 ssh-ed25519 ...`.
        let salt = [7u8; 20];
        let hashed = |name: &str| {
            use hmac::Mac;
            let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(&salt).unwrap();
            mac.update(name.as_bytes());
            let engine = &base64::engine::general_purpose::STANDARD;
            format!(
                "|1|{}|{}",
                engine.encode(salt),
                engine.encode(mac.finalize().into_bytes())
            )
        };
        let known = format!(
            "{} ecdsa-sha2-nistp256 AAAA\n{} ssh-ed25519 AAAA\n",
            hashed("10.0.0.5"),
            hashed("[10.0.0.5]:2222")
        );
        assert_eq!(
            host_key_preference(&known, "10.0.0.5", 22).as_deref(),
            Some("ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521")
        );
        assert_eq!(
            host_key_preference(&known, "10.0.0.5", 2222).as_deref(),
            Some("ssh-ed25519")
        );
        assert_eq!(host_key_preference(&known, "10.0.0.6", 22), None);
        assert!(!names_host("|1|not-base64|x", "10.0.0.5", 22));
    }

    #[test]
    fn a_known_hosts_file_is_checked_line_by_line() {
        let engine = &base64::engine::general_purpose::STANDARD;
        let blob = |kind: &str| {
            let mut blob = (kind.len() as u32).to_be_bytes().to_vec();
            blob.extend_from_slice(kind.as_bytes());
            blob.extend_from_slice(&[0, 0, 0, 1, 7]);
            engine.encode(blob)
        };
        let good = format!(
            "# comment\n\n10.0.0.5 ssh-ed25519 {} host\n|1|c2FsdA==|aGFzaA== ssh-rsa {}\n",
            blob("ssh-ed25519"),
            blob("ssh-rsa")
        );
        assert_eq!(check_known_hosts(&good), Ok(()));
        for (bad, says) in [
            (
                "this is not a known_hosts line".to_string(),
                "`is` is not a host key type",
            ),
            ("10.0.0.5 ssh-ed25519".to_string(), "line 2 is not"),
            ("10.0.0.5 ssh-ed25519 !!!".to_string(), "not base64"),
            (
                format!("10.0.0.5 ssh-ed25519 {}", blob("ssh-rsa")),
                "not an `ssh-ed25519` key",
            ),
            (
                format!("@revoked * ssh-ed25519 {}", blob("ssh-ed25519")),
                "`@revoked`",
            ),
            (
                format!(
                    "@cert-authority *.internal ssh-ed25519 {}",
                    blob("ssh-ed25519")
                ),
                "`@cert-authority`",
            ),
        ] {
            let problem = check_known_hosts(&format!("# ok\n{bad}\n")).unwrap_err();
            assert!(problem.contains(says), "{bad}: {problem}");
        }
    }

    #[test]
    fn only_a_missing_known_hosts_counts_as_empty() {
        let dir = std::env::temp_dir().join(format!("hostenv-kh-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(read_known_hosts(&dir.join("absent")).unwrap(), "");
        let binary = dir.join("binary");
        std::fs::write(&binary, [0xff, 0xfe, 0x00]).unwrap();
        assert!(read_known_hosts(&binary)
            .unwrap_err()
            .contains("not a text file"));
        // A directory cannot be read as a file: refused, not empty.
        assert!(read_known_hosts(&dir).unwrap_err().contains("cannot read"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
