//! What a host needs, decided from what was read there and what the run
//! would write: pure, so each rule is tested here without a host.

use std::collections::BTreeMap;

use crate::protocol::report::{KeyChanges, ReadBack};
use crate::settings::names::is_valid_key_name;
use crate::settings::secret::{ExposeSecret, SecretString};
use crate::transport::remote::Current;

/// The host already holds the run's file: the same bytes, the owner the
/// target should have and the configured mode. Then nothing is written.
pub fn holds_the_file(current: &Current, new: &SecretString, mode: u32) -> bool {
    current
        .content
        .as_ref()
        .is_some_and(|content| content.expose_secret() == new.expose_secret())
        && current.uid == current.want_uid
        && current.gid == current.want_gid
        && current.mode == mode
}

/// What a read over a new connection found at the target, against what the
/// host held before the run (`before`) and the run's file (`new`).
pub fn read_back(
    before: &Current,
    now: &Current,
    new: Option<&SecretString>,
    mode: u32,
) -> ReadBack {
    let same_bytes = match (&before.content, &now.content) {
        (None, None) => true,
        (Some(a), Some(b)) => a.expose_secret() == b.expose_secret(),
        _ => false,
    };
    let same_file = now.content.is_none()
        || (now.uid, now.gid, now.mode) == (before.uid, before.gid, before.mode);
    if same_bytes && same_file {
        ReadBack::AsBefore
    } else if new.is_some_and(|new| holds_the_file(now, new, mode)) {
        ReadBack::NewFile
    } else {
        ReadBack::Other
    }
}

/// Whether a unit must restart although the file is already in place: when
/// the run forces it, or when its main process started before the file was
/// written (a previous run switched the file and was lost before restarting),
/// or its start time cannot be told.
pub fn restart_anyway(started: Option<i64>, file_written: i64, force: bool) -> bool {
    force || started.is_none_or(|at| at < file_written)
}

/// Key names the `new` values add, remove and change against the host's
/// `current` ones. A name is shown only if it is a key name at all: a file
/// edited by hand may hold others, which are counted and never shown.
pub fn key_changes(
    current: &BTreeMap<String, SecretString>,
    new: &[(String, SecretString)],
) -> KeyChanges {
    let mut changes = KeyChanges::default();
    for (key, value) in new {
        if !is_valid_key_name(key) {
            changes.unnamed += 1;
            continue;
        }
        match current.get(key) {
            None => changes.added.push(key.clone()),
            Some(old) if old.expose_secret() != value.expose_secret() => {
                changes.changed.push(key.clone())
            }
            Some(_) => changes.unchanged += 1,
        }
    }
    let (named, unnamed): (Vec<&String>, Vec<&String>) = current
        .keys()
        .filter(|key| !new.iter().any(|(k, _)| k == *key))
        .partition(|key| is_valid_key_name(key));
    changes.removed = named.into_iter().cloned().collect();
    changes.unnamed += unnamed.len();
    changes
}

/// Whether the run would change a value the host holds for `key` (a key
/// the host does not hold yet, or one the run does not write, is no change).
pub fn changes_value(current: Option<&SecretString>, new: Option<&str>) -> bool {
    matches!((current, new), (Some(old), Some(new)) if old.expose_secret() != new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current(content: Option<&str>, owner: (u32, u32), mode: u32) -> Current {
        Current {
            content: content.map(SecretString::from),
            uid: owner.0,
            gid: owner.1,
            mode,
            mtime: 1_000,
            want_uid: 61_000,
            want_gid: 61_000,
            leftover_staged: false,
            systemd: Some(252),
            written_by: None,
        }
    }

    #[test]
    fn a_read_back_tells_the_file_from_before_the_new_one_and_any_other() {
        let new = SecretString::from("A=2\n".to_string());
        let ours = (61_000, 61_000);
        let before = current(Some("A=1\n"), ours, 0o600);
        // (what a new read found, with the run's file or without one (rollback), verdict)
        let table = [
            (
                current(Some("A=1\n"), ours, 0o600),
                Some(&new),
                ReadBack::AsBefore,
            ),
            (
                current(Some("A=2\n"), ours, 0o600),
                Some(&new),
                ReadBack::NewFile,
            ),
            (current(Some("A=2\n"), ours, 0o600), None, ReadBack::Other),
            (
                current(Some("A=1\n"), (0, 0), 0o600),
                Some(&new),
                ReadBack::Other,
            ),
            (
                current(Some("A=1\n"), ours, 0o640),
                Some(&new),
                ReadBack::Other,
            ),
            (
                current(Some("PWNED=1\n"), ours, 0o600),
                Some(&new),
                ReadBack::Other,
            ),
            (current(None, ours, 0o600), Some(&new), ReadBack::Other),
        ];
        for (index, (now, new, verdict)) in table.iter().enumerate() {
            assert_eq!(
                read_back(&before, now, *new, 0o600),
                *verdict,
                "row {index}"
            );
        }
        let absent = current(None, ours, 0);
        assert_eq!(
            read_back(&absent, &current(None, ours, 0), Some(&new), 0o600),
            ReadBack::AsBefore
        );
    }

    #[test]
    fn a_file_is_held_only_with_its_bytes_owner_and_mode() {
        let new = SecretString::from("A=1\n".to_string());
        let ours = (61_000, 61_000);
        // (what the host has, holds the file)
        let table = [
            (current(Some("A=1\n"), ours, 0o600), true),
            (current(Some("A=2\n"), ours, 0o600), false),
            (current(Some("A=1"), ours, 0o600), false),
            (current(None, ours, 0o600), false),
            (current(Some("A=1\n"), (0, 61_000), 0o600), false),
            (current(Some("A=1\n"), (61_000, 0), 0o600), false),
            (current(Some("A=1\n"), ours, 0o644), false),
        ];
        for (index, (host, held)) in table.iter().enumerate() {
            assert_eq!(holds_the_file(host, &new, 0o600), *held, "row {index}");
        }
    }

    #[test]
    fn a_unit_restarts_anyway_when_it_started_before_the_file() {
        // (started, file written, force, restart)
        let table = [
            (Some(2_000), 1_000, false, false),
            (Some(1_000), 1_000, false, false),
            (Some(999), 1_000, false, true),
            (None, 1_000, false, true),
            (Some(2_000), 1_000, true, true),
        ];
        for (started, written, force, restart) in table {
            assert_eq!(
                restart_anyway(started, written, force),
                restart,
                "started {started:?}, written {written}, force {force}"
            );
        }
    }

    #[test]
    fn only_a_different_value_for_a_held_key_is_a_change() {
        let old = SecretString::from("old".to_string());
        assert!(changes_value(Some(&old), Some("new")));
        assert!(!changes_value(Some(&old), Some("old")));
        assert!(!changes_value(None, Some("new")));
        assert!(!changes_value(Some(&old), None));
    }
}
