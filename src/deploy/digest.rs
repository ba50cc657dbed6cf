//! The plan digest: an HMAC-SHA256, under a key the CI binds, of everything a
//! deploy depends on — the request, the service catalog it ran under, each
//! host's rendered file and each host's current file with its owner, mode
//! and time. `plan` prints it; `deploy
//! --expect-plan` recomputes it after taking every lock and refuses, touching
//! nothing, when it differs. Keyed, so it reveals nothing about the values.

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::protocol::canonical::canonical;
use crate::settings::secret::{ExposeSecret, SecretString};
use crate::transport::remote::Current;

pub const PREFIX: &str = "hmac-sha256:";

/// One host's part: its name, the file a deploy would write, what it has now.
pub struct HostState<'a> {
    pub host: &'a str,
    pub rendered: &'a SecretString,
    pub current: &'a Current,
}

/// The digest of `request` run under the catalog whose digest is `catalog`.
pub fn compute(
    key: &SecretString,
    (request, catalog): (&Value, &str),
    hosts: &[HostState],
) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.expose_secret().as_bytes())
        .expect("HMAC takes keys of any length");
    let mut field = |bytes: &[u8]| {
        mac.update(&(bytes.len() as u64).to_be_bytes());
        mac.update(bytes);
    };
    field(b"hostenv plan digest v2");
    field(canonical(&without_audit(request)).as_bytes());
    // The catalog decides paths, owners, units and checks: a plan reviewed
    // under one catalog is not the plan of a run under another.
    field(catalog.as_bytes());
    for host in hosts {
        field(host.host.as_bytes());
        field(host.rendered.expose_secret().as_bytes());
        match &host.current.content {
            Some(content) => {
                let meta = format!(
                    "{} {} {:o} {}",
                    host.current.uid, host.current.gid, host.current.mode, host.current.mtime
                );
                field(meta.as_bytes());
                field(content.expose_secret().as_bytes());
            }
            None => field(b"absent"),
        }
    }
    let bytes = mac.finalize().into_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{PREFIX}{hex}")
}

/// The request less its `audit` blocks: who approved the plan and which build
/// runs it are known only after the plan was made, and change nothing on a host.
fn without_audit(request: &Value) -> Value {
    let mut request = request.clone();
    if let Value::Object(map) = &mut request {
        map.remove("audit");
        if let Some(Value::Array(deployments)) = map.get_mut("deployments") {
            for deployment in deployments {
                if let Value::Object(deployment) = deployment {
                    deployment.remove("audit");
                }
            }
        }
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn current(content: Option<&str>) -> Current {
        Current {
            content: content.map(|c| SecretString::from(c.to_string())),
            uid: 1,
            gid: 1,
            mode: 0o600,
            mtime: 5,
            want_uid: 1,
            want_gid: 1,
            leftover_staged: false,
            systemd: None,
            written_by: None,
        }
    }

    #[test]
    fn any_change_changes_the_digest_and_key_order_does_not() {
        let key = SecretString::from("k".to_string());
        let rendered = SecretString::from("A=\"1\"\n".to_string());
        let (now, edited, absent) = (
            current(Some("A=\"0\"\n")),
            current(Some("A=\"2\"\n")),
            current(None),
        );
        let digest = |request: Value, current: &Current, key: &SecretString| {
            let hosts = [HostState {
                host: "h",
                rendered: &rendered,
                current,
            }];
            compute(key, (&request, "sha256:catalog-one"), &hosts)
        };
        let base = digest(json!({"a": 1, "b": 2}), &now, &key);
        assert!(base.starts_with(PREFIX));
        assert_eq!(base, digest(json!({"b": 2, "a": 1}), &now, &key));
        assert_ne!(base, digest(json!({"a": 1, "b": 3}), &now, &key));
        assert_ne!(base, digest(json!({"a": 1, "b": 2}), &edited, &key));
        assert_ne!(base, digest(json!({"a": 1, "b": 2}), &absent, &key));
        let other = SecretString::from("j".to_string());
        assert_ne!(base, digest(json!({"a": 1, "b": 2}), &now, &other));
        // Another catalog is another plan.
        let hosts = [HostState {
            host: "h",
            rendered: &rendered,
            current: &now,
        }];
        let elsewhere = compute(
            &key,
            (&json!({"a": 1, "b": 2}), "sha256:catalog-two"),
            &hosts,
        );
        assert_ne!(base, elsewhere);
        // Who approved it and which build runs it are not part of what is deployed.
        let approved = json!({"a": 1, "b": 2, "audit": {"by": "bob"}});
        assert_eq!(base, digest(approved, &now, &key));
        let rotation = |by: &str| json!({"deployments": [{"service": "s", "audit": {"by": by}}], "shared": []});
        assert_eq!(
            digest(rotation("alice"), &now, &key),
            digest(rotation("bob"), &now, &key)
        );
    }
}
