//! OpenSSH user certificates (`<key>-cert.pub`, PROTOCOL.certkeys): the parts
//! hostenv checks before offering one, so that an expired certificate, one not
//! yet valid, or one without the login's principal is named as such instead of
//! a bare "key refused". libssh2 authenticates with the certificate itself.

use base64::Engine;

/// What a certificate allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    pub key_type: String,
    pub key_id: String,
    /// Empty: any principal.
    pub principals: Vec<String>,
    /// Seconds since the epoch.
    pub valid_after: u64,
    pub valid_before: u64,
}

/// The string fields of a certificate's public key, between the nonce and the serial.
fn key_fields(key_type: &str) -> Option<usize> {
    match key_type {
        "ssh-ed25519-cert-v01@openssh.com" => Some(1),
        "ssh-rsa-cert-v01@openssh.com" => Some(2),
        "ssh-dss-cert-v01@openssh.com" => Some(4),
        t if t.starts_with("ecdsa-sha2-nistp") && t.ends_with("-cert-v01@openssh.com") => Some(2),
        "sk-ssh-ed25519-cert-v01@openssh.com" => Some(2),
        "sk-ecdsa-sha2-nistp256-cert-v01@openssh.com" => Some(3),
        _ => None,
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = u32::from_be_bytes(self.0.get(..4)?.try_into().ok()?) as usize;
        let value = self.0.get(4..4 + len)?;
        self.0 = &self.0[4 + len..];
        Some(value)
    }
    fn text(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
    fn u64(&mut self) -> Option<u64> {
        let value = u64::from_be_bytes(self.0.get(..8)?.try_into().ok()?);
        self.0 = &self.0[8..];
        Some(value)
    }
    fn u32(&mut self) -> Option<u32> {
        let value = u32::from_be_bytes(self.0.get(..4)?.try_into().ok()?);
        self.0 = &self.0[4..];
        Some(value)
    }
}

const USER_CERTIFICATE: u32 = 1;

impl Certificate {
    /// Reads a `-cert.pub` line (`TYPE BASE64 [COMMENT]`); None when it is not a user certificate.
    pub fn parse(text: &str) -> Option<Certificate> {
        let mut fields = text.split_whitespace();
        let (named, blob) = (fields.next()?, fields.next()?);
        let blob = base64::engine::general_purpose::STANDARD
            .decode(blob)
            .ok()?;
        let mut reader = Reader(&blob);
        let key_type = reader.text()?;
        if key_type != named {
            return None;
        }
        reader.bytes()?; // nonce
        for _ in 0..key_fields(&key_type)? {
            reader.bytes()?;
        }
        reader.u64()?; // serial
        if reader.u32()? != USER_CERTIFICATE {
            return None;
        }
        let key_id = reader.text()?;
        let mut packed = Reader(reader.bytes()?);
        let mut principals = Vec::new();
        while !packed.0.is_empty() {
            principals.push(packed.text()?);
        }
        Some(Certificate {
            key_type,
            key_id,
            principals,
            valid_after: reader.u64()?,
            valid_before: reader.u64()?,
        })
    }

    /// Why the certificate cannot log `user` in at `now` (seconds since the epoch).
    pub fn unusable_for(&self, user: &str, now: u64) -> Option<String> {
        let at = crate::protocol::time::rfc3339;
        let time = |s: u64| at(std::time::UNIX_EPOCH + std::time::Duration::from_secs(s));
        if now < self.valid_after {
            return Some(format!(
                "the certificate `{}` is not valid before {}",
                self.key_id,
                time(self.valid_after)
            ));
        }
        if now >= self.valid_before {
            return Some(format!(
                "the certificate `{}` expired at {}",
                self.key_id,
                time(self.valid_before)
            ));
        }
        if !self.principals.is_empty() && !self.principals.iter().any(|p| p == user) {
            return Some(format!(
                "the certificate `{}` is for {}, not `{user}`",
                self.key_id,
                self.principals
                    .iter()
                    .map(|p| format!("`{p}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(bytes);
    }

    fn certificate(principals: &[&str], after: u64, before: u64, kind: u32) -> String {
        let key_type = "ssh-ed25519-cert-v01@openssh.com";
        let mut blob = Vec::new();
        string(&mut blob, key_type.as_bytes());
        string(&mut blob, b"nonce");
        string(&mut blob, &[7; 32]);
        blob.extend_from_slice(&42u64.to_be_bytes());
        blob.extend_from_slice(&kind.to_be_bytes());
        string(&mut blob, b"ci-deploy");
        let mut packed = Vec::new();
        for p in principals {
            string(&mut packed, p.as_bytes());
        }
        string(&mut blob, &packed);
        blob.extend_from_slice(&after.to_be_bytes());
        blob.extend_from_slice(&before.to_be_bytes());
        let encoded = base64::engine::general_purpose::STANDARD.encode(blob);
        format!("{key_type} {encoded} user@ci")
    }

    #[test]
    fn reads_principals_and_validity() {
        let cert = Certificate::parse(&certificate(&["root", "deploy"], 100, 200, 1)).unwrap();
        assert_eq!(cert.key_id, "ci-deploy");
        assert_eq!(cert.principals, ["root", "deploy"]);
        assert_eq!(cert.unusable_for("root", 150), None);
        assert_eq!(
            cert.unusable_for("admin", 150).unwrap(),
            "the certificate `ci-deploy` is for `root`, `deploy`, not `admin`"
        );
        assert!(cert
            .unusable_for("root", 99)
            .unwrap()
            .contains("not valid before 1970-01-01T00:01:40Z"));
        assert!(cert
            .unusable_for("root", 200)
            .unwrap()
            .contains("expired at 1970-01-01T00:03:20Z"));
        let any = Certificate::parse(&certificate(&[], 0, u64::MAX, 1)).unwrap();
        assert_eq!(any.unusable_for("whoever", 1_800_000_000), None);
        // A host certificate, or not a certificate at all, is not one hostenv offers.
        assert_eq!(
            Certificate::parse(&certificate(&["root"], 0, u64::MAX, 2)),
            None
        );
        assert_eq!(Certificate::parse("ssh-ed25519 AAAA comment"), None);
    }
}
