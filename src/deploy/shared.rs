//! Shared keys on the hosts: which hosts hold the same value, compared in
//! memory and shown as fingerprints keyed with a random key made for this run,
//! so they compare hosts within one result and mean nothing outside it.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::host::{HostRun, Values};
use super::in_parallel;
use crate::protocol::error::{Error, Result};
use crate::protocol::report::{SharedHolder, SharedKeyReport, SharedValueGroup};
use crate::settings::secret::ExposeSecret;

/// Per run, the shared keys' values its host holds (None: not read).
pub(super) type Holdings = Vec<Option<Values>>;

/// What the hosts held when they were assessed (`drift`).
pub(super) fn holdings_now(runs: &[HostRun], keys: &[String]) -> Holdings {
    runs.iter()
        .map(|run| {
            let assessment = run.assessment()?;
            Some(only(&assessment.current_values, keys))
        })
        .collect()
}

/// Reads every host's file again after the switch.
pub(super) fn read_back(runs: &mut [HostRun], keys: &[String], parallel: usize) -> Holdings {
    let mut slots: Vec<(&mut HostRun, Option<Values>)> =
        runs.iter_mut().map(|run| (run, None)).collect();
    in_parallel(&mut slots, parallel, |(run, holding)| {
        *holding = run.read_back().map(|values| only(&values, keys));
    });
    slots.into_iter().map(|(_, holding)| holding).collect()
}

fn only(values: &Values, keys: &[String]) -> Values {
    values
        .iter()
        .filter(|(key, _)| keys.contains(key))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

/// For each shared key, the hosts grouped by the value they hold. A host
/// that could not be read is left out (its own status says why).
pub(super) fn reports(
    keys: &[String],
    runs: &[HostRun],
    holdings: &Holdings,
    run_key: &RunKey,
) -> Vec<SharedKeyReport> {
    keys.iter()
        .map(|key| {
            let mut services: Vec<String> = Vec::new();
            let mut groups: Vec<SharedValueGroup> = Vec::new();
            for (run, holding) in runs.iter().zip(holdings) {
                let service = &run.context().settings.service;
                let carries = match &run.context().prepared {
                    Some(prepared) => prepared.contract.has(key),
                    // A rollback has no contract: the hosts say who carries the key.
                    None => holding.as_ref().is_some_and(|h| h.contains_key(key)),
                };
                if !carries {
                    continue;
                }
                if !services.iter().any(|s| s == service.as_str()) {
                    services.push(service.to_string());
                }
                let Some(holding) = holding else { continue };
                let value = holding.get(key);
                let fingerprint = value.map(|v| fingerprint(&run_key.0, v.expose_secret()));
                let holder = SharedHolder {
                    service: service.to_string(),
                    host: run.host().name.to_string(),
                };
                match groups.iter_mut().find(|g| g.fingerprint == fingerprint) {
                    Some(group) => group.hosts.push(holder),
                    None => groups.push(SharedValueGroup {
                        expected: value
                            .is_some_and(|v| run.value_of(key) == Some(v.expose_secret())),
                        fingerprint,
                        hosts: vec![holder],
                    }),
                }
            }
            SharedKeyReport {
                key: key.clone(),
                identical: groups.len() == 1 && groups[0].fingerprint.is_some(),
                services,
                holders: Some(groups),
            }
        })
        .collect()
}

fn fingerprint(run_key: &[u8], value: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(run_key).expect("HMAC takes keys of any length");
    mac.update(value.as_bytes());
    mac.finalize().into_bytes()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The key fingerprints are made with: 32 bytes from the kernel's CSPRNG,
/// made once per run before any host is contacted, and never shown. A run
/// that cannot have one fails rather than fall back to a weaker source.
pub(super) struct RunKey(Vec<u8>);

impl RunKey {
    /// The value's fingerprint under this run's key.
    pub fn fingerprint(&self, value: &str) -> String {
        fingerprint(&self.0, value)
    }

    pub fn new() -> Result<RunKey> {
        let mut key = vec![0u8; 32];
        let mut filled = 0;
        while filled < key.len() {
            match rustix::rand::getrandom(&mut key[filled..], rustix::rand::GetRandomFlags::empty())
            {
                Ok(n) => filled += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    return Err(Error::Internal(format!(
                    "cannot have random bytes from the kernel for the run's fingerprint key: {e}"
                )))
                }
            }
        }
        Ok(RunKey(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_depend_on_the_run_key() {
        let (one, two) = (RunKey::new().unwrap().0, RunKey::new().unwrap().0);
        assert_ne!(one, two);
        assert_eq!(fingerprint(&one, "v"), fingerprint(&one, "v"));
        assert_ne!(fingerprint(&one, "v"), fingerprint(&two, "v"));
        assert_ne!(fingerprint(&one, "v"), fingerprint(&one, "w"));
        assert_eq!(fingerprint(&one, "v").len(), 16);
    }
}
