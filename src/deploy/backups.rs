//! `backups`: what each backup a host keeps would do to its current file,
//! shown as key names, times and keyed fingerprints, never values. Pure, so
//! the listing is tested here without a host.

use std::collections::BTreeMap;

use super::assess::key_changes;
use super::host::Values;
use crate::protocol::report::{BackupListing, ListedBackup, ListedFile};
use crate::protocol::time::rfc3339_of_micros;
use crate::settings::secret::{ExposeSecret, SecretString};

/// One backup as read from its host: its number, when it was written
/// (microseconds since the epoch) and its values, parsed once.
pub struct ReadBackup {
    pub number: u32,
    pub written_us: i64,
    pub values: Values,
}

/// The listing of one host: its current file (its values and when it was
/// written; None when there is none) and every backup, each compared with
/// it; `fingerprint` keys each value shown.
pub fn listing(
    current: Option<(&Values, i64)>,
    backups: &[ReadBackup],
    fingerprint: impl Fn(&str) -> String,
) -> BackupListing {
    let empty = Values::new();
    let current_values = current.map_or(&empty, |(values, _)| values);
    let shown = |values: &Values, keys: &mut dyn Iterator<Item = &String>| {
        keys.filter_map(|key| Some((key.clone(), fingerprint(values.get(key)?.expose_secret()))))
            .collect::<BTreeMap<String, String>>()
    };
    let mut differing_now: std::collections::BTreeSet<String> = Default::default();
    let kept: Vec<ListedBackup> = backups
        .iter()
        .map(|backup| {
            let values = &backup.values;
            let listed: Vec<(String, SecretString)> =
                values.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            let keys = key_changes(current_values, &listed);
            differing_now.extend(keys.changed.iter().chain(&keys.removed).cloned());
            let fingerprints = shown(values, &mut keys.added.iter().chain(&keys.changed));
            ListedBackup {
                number: backup.number,
                written_at: rfc3339_of_micros(backup.written_us),
                keys,
                fingerprints,
            }
        })
        .collect();
    let current = current.map(|(values, written_us)| ListedFile {
        written_at: rfc3339_of_micros(written_us),
        fingerprints: shown(values, &mut differing_now.iter()),
    });
    BackupListing { current, kept }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::host::parse_values;

    fn backup(number: u32, written_us: i64, text: &str) -> ReadBackup {
        ReadBackup {
            number,
            written_us,
            values: parse_values(Some(&SecretString::from(text.to_string()))),
        }
    }

    /// A stand-in for the run's keyed fingerprint that shows which value it saw.
    fn seen(value: &str) -> String {
        format!("fp({})", value.len())
    }

    #[test]
    fn each_backup_says_what_putting_it_back_would_change() {
        let current = parse_values(Some(&SecretString::from(
            "JWT_SECRET=\"new-jwt\"\nLOG_LEVEL=\"info\"\nOTEL_API_KEY=\"otel\"\n".to_string(),
        )));
        let backups = [
            backup(1, 2_000_000, "JWT_SECRET=\"old\"\nLOG_LEVEL=\"info\"\n"),
            backup(2, 1_000_000, "JWT_SECRET=\"new-jwt\"\nLOG_LEVEL=\"debug\"\nOTEL_API_KEY=\"otel\"\nMONGODB_DB=\"voxbridge\"\n"),
        ];
        let listing = listing(Some((&current, 3_500_000)), &backups, seen);
        let first = &listing.kept[0];
        assert_eq!(first.number, 1);
        assert_eq!(first.written_at, "1970-01-01T00:00:02Z");
        assert_eq!(first.keys.changed, ["JWT_SECRET"]);
        assert_eq!(first.keys.removed, ["OTEL_API_KEY"]);
        assert!(first.keys.added.is_empty());
        assert_eq!(first.keys.unchanged, 1);
        assert_eq!(
            first.fingerprints,
            BTreeMap::from([("JWT_SECRET".to_string(), "fp(3)".to_string())])
        );
        let second = &listing.kept[1];
        assert_eq!(second.keys.added, ["MONGODB_DB"]);
        assert_eq!(second.keys.changed, ["LOG_LEVEL"]);
        assert_eq!(second.keys.unchanged, 2);
        assert_eq!(
            second.fingerprints.keys().collect::<Vec<_>>(),
            ["LOG_LEVEL", "MONGODB_DB"]
        );
        // The current file's side of every difference, and only those.
        let now = listing.current.unwrap();
        assert_eq!(now.written_at, "1970-01-01T00:00:03Z");
        assert_eq!(
            now.fingerprints,
            BTreeMap::from([
                ("JWT_SECRET".to_string(), "fp(7)".to_string()),
                ("LOG_LEVEL".to_string(), "fp(4)".to_string()),
                ("OTEL_API_KEY".to_string(), "fp(4)".to_string()),
            ])
        );
    }

    #[test]
    fn without_a_current_file_every_key_is_added() {
        let backups = [backup(1, 0, "A=\"1\"\n")];
        let listing = listing(None, &backups, seen);
        assert!(listing.current.is_none());
        assert_eq!(listing.kept[0].keys.added, ["A"]);
        assert!(listing.kept[0].fingerprints.contains_key("A"));
    }

    #[test]
    fn a_name_that_is_no_key_name_is_counted_never_shown() {
        // A file edited by hand before it became a backup: systemd reads
        // `a.b` as an assignment, but it is no key name hostenv writes.
        let current = Values::new();
        let backups = [backup(1, 0, "a.b=\"x\"\nB=\"y\"\n")];
        let listing = listing(Some((&current, 0)), &backups, seen);
        let keys = &listing.kept[0].keys;
        assert_eq!(
            (keys.added.as_slice(), keys.unnamed),
            (&["B".to_string()][..], 1)
        );
        assert!(!listing.kept[0].fingerprints.contains_key("a.b"));
    }
}
