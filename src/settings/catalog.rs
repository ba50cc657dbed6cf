//! The service catalog: per-service defaults and the keys services share.
//! It is data: the library's `resources/io/hostenv/catalog.json`, which the
//! Jenkins steps hand to the binary with `--catalog`, so a team adds a
//! service by changing that file, not the binary. The same file is compiled
//! in as the default for a run that names none.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::protocol::canonical::canonical;
use crate::protocol::error::{Error, Result};
use crate::protocol::request::{Deployment, Restart, Target, Verify};
use crate::protocol::schema as protocol_schema;
use crate::settings::names::{is_valid_key_name, ServiceName};
use crate::settings::Settings;

const BUILTIN: &str = include_str!("../../resources/io/hostenv/catalog.json");

/// The most a catalog file may hold.
pub const MAX_CATALOG_BYTES: u64 = 1 << 20;

/// A service catalog: each service's defaults and which keys services share.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "hostenv service catalog")]
pub struct Catalog {
    /// Each service by name (a plain name): where its file goes, which units
    /// restart and how it is checked. A request naming it may leave all three out.
    pub services: BTreeMap<String, ServiceDefaults>,
    /// Key name → the services that must hold the same value: a Deploy of one
    /// of them may not change it alone (`sharedKeyChange`); rotate it with a
    /// Rotation of them all.
    #[serde(default)]
    pub shared: BTreeMap<String, Vec<String>>,
    /// `sha256:<hex>` of the catalog's canonical JSON: part of the plan
    /// digest, so a plan reviewed under one catalog never deploys under another.
    #[serde(skip)]
    #[schemars(skip)]
    pub digest: String,
}

/// One service's defaults, field for field what a request's own settings override.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceDefaults {
    /// What the service is, for people.
    pub description: String,
    /// Where the file goes: `path` and `owner` are needed.
    pub target: Target,
    /// Which units restart: `units` is needed.
    pub restart: Restart,
    /// The health checks after a restart.
    pub verify: Vec<Verify>,
}

/// The schema of a catalog file (`hostenv schema catalog`). Unknown fields
/// are refused, as in requests.
pub fn schema() -> Value {
    let mut schema = protocol_schema::output_schema::<Catalog>("catalog");
    protocol_schema::without_null(&mut schema);
    schema
}

/// `sha256:<hex>` of the compiled-in catalog's bytes (`version --json`).
pub fn builtin_digest() -> String {
    sha256_tagged(BUILTIN.as_bytes())
}

fn sha256_tagged(bytes: &[u8]) -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

impl Catalog {
    /// The catalog compiled into the binary; a unit test holds it valid.
    pub fn builtin() -> Catalog {
        Catalog::parse(BUILTIN.as_bytes(), "built-in")
            .expect("resources/io/hostenv/catalog.json is valid (unit-tested)")
    }

    /// The catalog in `path` (`--catalog`): at most 1 MiB.
    pub fn read(path: &Path) -> Result<Catalog> {
        let origin = path.display().to_string();
        let refused = |reason: String| Error::CatalogInvalid {
            origin: origin.clone(),
            at: String::new(),
            reason,
        };
        if path.is_dir() {
            return Err(refused("it is a directory".into()));
        }
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|file| file.take(MAX_CATALOG_BYTES + 1).read_to_end(&mut bytes))
            .map_err(|error| refused(format!("cannot be read: {error}")))?;
        if bytes.len() as u64 > MAX_CATALOG_BYTES {
            return Err(refused(format!(
                "it is larger than {MAX_CATALOG_BYTES} bytes"
            )));
        }
        Catalog::parse(&bytes, &origin)
    }

    /// A catalog from its bytes: JSON in the catalog schema, every service
    /// name a plain name whose settings a deploy could use, every shared key
    /// a key name shared by two or more of its services. Errors name the
    /// field (a JSON pointer into the catalog), never a value.
    pub fn parse(bytes: &[u8], origin: &str) -> Result<Catalog> {
        let refused = |at: &str, reason: String| Error::CatalogInvalid {
            origin: origin.to_string(),
            at: at.to_string(),
            reason,
        };
        let document: Value = serde_json::from_slice(bytes).map_err(|error| {
            refused(
                "",
                format!(
                    "not valid JSON (line {}, column {})",
                    error.line(),
                    error.column()
                ),
            )
        })?;
        if let Some((at, reason)) = protocol_schema::first_problem(schema(), &document)? {
            return Err(refused(&at, reason));
        }
        let mut catalog: Catalog = serde_json::from_value(document.clone())
            .map_err(|_| refused("", "does not match the catalog schema".into()))?;
        catalog.digest = sha256_tagged(canonical(&document).as_bytes());
        catalog.check(&refused)?;
        Ok(catalog)
    }

    /// What the schema cannot say: names, and settings a deploy could use.
    fn check(&self, refused: &dyn Fn(&str, String) -> Error) -> Result<()> {
        for name in self.services.keys() {
            let at = format!("/services/{name}");
            if ServiceName::parse(name).is_none() {
                return Err(refused(
                    "/services",
                    format!(
                        "`{}` is not a plain service name (letters, digits, `.`, `_`, `-`; no `/` or `..`)",
                        name.escape_debug()
                    ),
                ));
            }
            // The defaults alone must make a deployment: the same checks a
            // request's own settings get, at the catalog's own pointers.
            let probe: Deployment = serde_json::from_value(serde_json::json!({
                "service": name, "contract": ".env.example", "hosts": ["catalog.invalid"], "env": {}
            }))
            .map_err(|e| Error::Internal(format!("the catalog probe: {e}")))?;
            Settings::from_request(&probe, &at, self).map_err(|error| match error {
                Error::Invalid { field, message, .. } => refused(&field, message),
                Error::ServiceDefaultsMissing { missing, .. } => {
                    refused(&at, format!("a service's defaults must set {missing}"))
                }
                other => refused(&at, other.to_string()),
            })?;
        }
        for (key, services) in &self.shared {
            let at = format!("/shared/{key}");
            if !is_valid_key_name(key) {
                return Err(refused(
                    "/shared",
                    format!("`{}` is not a key name", key.escape_debug()),
                ));
            }
            let mut distinct: Vec<&String> = services.iter().collect();
            distinct.sort();
            distinct.dedup();
            if distinct.len() < 2 || distinct.len() != services.len() {
                return Err(refused(
                    &at,
                    "a shared key lists two or more services, each once".into(),
                ));
            }
            if let Some(unknown) = services.iter().find(|s| !self.services.contains_key(*s)) {
                return Err(refused(
                    &at,
                    format!(
                        "`{}` is not a service of this catalog",
                        unknown.escape_debug()
                    ),
                ));
            }
        }
        Ok(())
    }

    pub fn service(&self, name: &str) -> Option<&ServiceDefaults> {
        self.services.get(name)
    }

    /// The other services that share `key` with `service`.
    pub fn shares_with(&self, key: &str, service: &str) -> Vec<&str> {
        match self.shared.get(key) {
            Some(services) if services.iter().any(|s| s == service) => services
                .iter()
                .filter(|s| *s != service)
                .map(String::as_str)
                .collect(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::error::ErrorKind;

    #[test]
    fn builtin_catalog_parses_and_names_known_services_in_shared_keys() {
        let catalog = Catalog::builtin();
        assert_eq!(
            catalog.services.keys().collect::<Vec<_>>(),
            ["voxbridge", "voxcore", "voxdialler"]
        );
        assert_eq!(
            catalog.shares_with("VOXCORE_SECRET", "voxdialler"),
            ["voxcore"]
        );
        assert!(catalog.shares_with("JWT_SECRET", "voxbridge").is_empty());
    }

    fn refusal(text: &str) -> (String, String) {
        match Catalog::parse(text.as_bytes(), "c.json") {
            Err(error @ Error::CatalogInvalid { .. }) => {
                assert_eq!(error.kind(), ErrorKind::CatalogInvalid);
                let Error::CatalogInvalid { at, reason, .. } = error else {
                    unreachable!()
                };
                (at, reason)
            }
            other => panic!("{text}: {other:?}"),
        }
    }

    const ONE: &str = r#""svc": {"description": "d", "target": {"path": "/opt/svc/.env", "owner": "svc"},
        "restart": {"units": ["svc.service"]}, "verify": []}"#;

    #[test]
    fn a_catalog_is_refused_naming_the_field() {
        assert_eq!(
            Catalog::parse(format!(r#"{{"services": {{{ONE}}}}}"#).as_bytes(), "c")
                .unwrap()
                .services
                .len(),
            1
        );
        let cases = [
            ("[", ""),
            (r#"{"services": {}, "extra": 1}"#, "/extra"),
            (
                r#"{"services": {"svc": {"description": "d"}}}"#,
                "/services/svc/target",
            ),
            (
                &format!(
                    r#"{{"services": {{{}}}}}"#,
                    ONE.replace(r#""path": "/opt/svc/.env", "#, "")
                ),
                "/services/svc",
            ),
            (
                &format!(
                    r#"{{"services": {{{}}}}}"#,
                    ONE.replace("/opt/svc/.env", "opt/svc")
                ),
                "/services/svc/target/path",
            ),
            (
                &format!(
                    r#"{{"services": {{{}}}}}"#,
                    ONE.replace("\"svc.service\"", "\"svc;reboot\"")
                ),
                "/services/svc/restart/units/0",
            ),
            (
                &format!(r#"{{"services": {{{ONE}}}, "shared": {{"K": ["svc"]}}}}"#),
                "/shared/K",
            ),
            (
                &format!(r#"{{"services": {{{ONE}}}, "shared": {{"K": ["svc", "other"]}}}}"#),
                "/shared/K",
            ),
            (
                &format!(r#"{{"services": {{{ONE}}}, "shared": {{"not a key": ["svc", "svc"]}}}}"#),
                "/shared",
            ),
            (
                &format!(
                    r#"{{"services": {{{}}}}}"#,
                    ONE.replace("\"svc\": {", "\"../svc\": {")
                ),
                "/services",
            ),
        ];
        for (text, at) in cases {
            let (found, reason) = refusal(text);
            assert_eq!(found, at, "{text}: {reason}");
        }
    }

    #[test]
    fn the_digest_follows_the_content_not_the_layout() {
        let a = Catalog::parse(
            format!(r#"{{"services": {{{ONE}}}, "shared": {{}}}}"#).as_bytes(),
            "a",
        )
        .unwrap();
        let b = Catalog::parse(
            format!("{{ \"shared\": {{}},\n \"services\": {{{ONE}}} }}").as_bytes(),
            "b",
        )
        .unwrap();
        assert_eq!(a.digest, b.digest);
        let c = Catalog::parse(
            format!(r#"{{"services": {{{}}}}}"#, ONE.replace("\"d\"", "\"e\"")).as_bytes(),
            "c",
        )
        .unwrap();
        assert_ne!(a.digest, c.digest);
    }
}
