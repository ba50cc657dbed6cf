//! The built-in service catalog: per-service defaults and the keys services share.
//! It is data (`resources/io/hostenv/catalog.json`, also loaded by the Groovy steps), so
//! nothing in the code is specific to one platform.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::protocol::request::{Restart, Target, Verify};

const BUILTIN: &str = include_str!("../../resources/io/hostenv/catalog.json");

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Catalog {
    pub services: BTreeMap<String, ServiceDefaults>,
    /// Key name → the services that must hold the same value.
    pub shared: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceDefaults {
    pub description: String,
    pub target: Target,
    pub restart: Restart,
    pub verify: Vec<Verify>,
}

/// `sha256:<hex>` of the embedded catalog's bytes: the Groovy steps compare it
/// with the digest of the `catalog.json` they load, so a binary built with
/// another catalog is refused.
pub fn builtin_digest() -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(BUILTIN.as_bytes());
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

impl Catalog {
    /// The catalog compiled into the binary; its validity is checked by a unit test.
    pub fn builtin() -> Catalog {
        serde_json::from_str(BUILTIN)
            .expect("resources/io/hostenv/catalog.json is valid (unit-tested)")
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

    #[test]
    fn builtin_catalog_parses_and_names_known_services_in_shared_keys() {
        let catalog = Catalog::builtin();
        assert_eq!(
            catalog.services.keys().collect::<Vec<_>>(),
            ["voxbridge", "voxcore", "voxdialler"]
        );
        for services in catalog.shared.values() {
            for service in services {
                assert!(catalog.services.contains_key(service), "{service}");
            }
        }
        assert_eq!(
            catalog.shares_with("VOXCORE_SECRET", "voxdialler"),
            ["voxcore"]
        );
        assert!(catalog.shares_with("JWT_SECRET", "voxbridge").is_empty());
    }
}
