//! The host's own record of what hostenv may touch for one service:
//! `/etc/hostenv/<service>.conf`, root-owned, written by `hostenv host-install`
//! (or by the admin's configuration management). The privileged steps take
//! every path, owner, mode and unit from here, never from their arguments, and
//! `HostConfig::admits` is the one check of a step's arguments against it, for
//! a step run on its own and the same step on the lock's channel alike.
//!
//! The format is one `key value` per line, `#` comments, in this order:
//!
//! ```text
//! path /opt/voxcore/.env
//! owner voxcore
//! group voxcore
//! mode 0600
//! backups 5
//! state-dir /var/lib/hostenv/voxcore
//! unit voxcore@.service
//! instance voxcore@sock1.service
//! instance voxcore@*.service
//! restart-timeout 60
//! ```
//!
//! A template (`name@.service`) admits only the instances its `instance`
//! lines name: one instance, or a pattern whose `*` stands for one or more
//! letters, digits and `_` (`voxcore@sock*.service`). Instance names hold
//! only characters systemd passes through unchanged (`%i` = `%I`): letters,
//! digits, `_` and single inner dots; never `-` (which `%I` turns into
//! `/`), `:` or `\`.

use super::{Failure, Step};

/// One service's configuration on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostConfig {
    pub path: String,
    pub owner: String,
    pub group: String,
    pub mode: u32,
    pub backups: u32,
    pub state_dir: String,
    /// Plain units and templates (`name@.service`).
    pub units: Vec<String>,
    /// The template instances root allows: exact units, or patterns with one `*`.
    pub instances: Vec<String>,
    pub restart_timeout_s: u64,
}

pub const MAX_BACKUPS: u32 = 100;
pub const MAX_RESTART_TIMEOUT_S: u64 = 86_400;

impl HostConfig {
    /// The canonical text: the same configuration always renders the same bytes,
    /// so an agent compares what a host has with what a request needs by text.
    pub fn render(&self, service: &str) -> String {
        let mut out = format!(
            "# hostenv-host configuration for `{service}` (written by `hostenv host-install`)\n\
             path {}\nowner {}\ngroup {}\nmode {:04o}\nbackups {}\nstate-dir {}\n",
            self.path, self.owner, self.group, self.mode, self.backups, self.state_dir
        );
        for unit in &self.units {
            out.push_str(&format!("unit {unit}\n"));
        }
        for instance in &self.instances {
            out.push_str(&format!("instance {instance}\n"));
        }
        out.push_str(&format!("restart-timeout {}\n", self.restart_timeout_s));
        out
    }

    /// Parses and checks a configuration; the error names the line or key.
    pub fn parse(text: &str) -> Result<HostConfig, String> {
        let mut fields: Vec<(&str, &str)> = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once(' ') else {
                return Err(format!("line {}: expected `key value`", number + 1));
            };
            fields.push((key, value.trim()));
        }
        let one = |key: &str| -> Result<&str, String> {
            let mut values = fields.iter().filter(|(k, _)| *k == key).map(|(_, v)| *v);
            match (values.next(), values.next()) {
                (Some(value), None) => Ok(value),
                (None, _) => Err(format!("`{key}` is missing")),
                (Some(_), Some(_)) => Err(format!("`{key}` is given twice")),
            }
        };
        if let Some((key, _)) = fields.iter().find(|(key, _)| {
            ![
                "path",
                "owner",
                "group",
                "mode",
                "backups",
                "state-dir",
                "unit",
                "instance",
                "restart-timeout",
            ]
            .contains(key)
        }) {
            return Err(format!("`{key}` is not a configuration key"));
        }
        let path = one("path")?.to_string();
        let state_dir = one("state-dir")?.to_string();
        for (key, value) in [("path", &path), ("state-dir", &state_dir)] {
            if !is_plain_path(value) {
                return Err(format!(
                    "`{key}` must be an absolute path of plain components"
                ));
            }
        }
        let (owner, group) = (one("owner")?.to_string(), one("group")?.to_string());
        for (key, value) in [("owner", &owner), ("group", &group)] {
            if !is_account_name(value) {
                return Err(format!("`{key}` must be a user or group name"));
            }
        }
        let mode = match one("mode")? {
            "0600" => 0o600,
            "0640" => 0o640,
            _ => return Err("`mode` must be `0600` or `0640`".into()),
        };
        let backups = one("backups")?
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_BACKUPS).contains(n))
            .ok_or(format!(
                "`backups` must be a number from 1 to {MAX_BACKUPS}"
            ))?;
        let restart_timeout_s = one("restart-timeout")?
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=MAX_RESTART_TIMEOUT_S).contains(n))
            .ok_or(format!(
                "`restart-timeout` must be a number of seconds from 1 to {MAX_RESTART_TIMEOUT_S}"
            ))?;
        let units: Vec<String> = fields
            .iter()
            .filter(|(key, _)| *key == "unit")
            .map(|(_, value)| value.to_string())
            .collect();
        if units.is_empty() {
            return Err("`unit` is missing".into());
        }
        if let Some(unit) = units.iter().find(|unit| !is_unit_name(unit)) {
            return Err(format!("`{unit}` is not a unit name"));
        }
        let instances: Vec<String> = fields
            .iter()
            .filter(|(key, _)| *key == "instance")
            .map(|(_, value)| value.to_string())
            .collect();
        for instance in &instances {
            let template = instance_rule(instance)
                .map(|(prefix, _, suffix)| format!("{prefix}@.{suffix}"))
                .ok_or(format!(
                    "`instance {instance}` is neither an instance nor a pattern of one"
                ))?;
            if !units.contains(&template) {
                return Err(format!(
                    "`instance {instance}` is not of a template `unit` names"
                ));
            }
        }
        Ok(HostConfig {
            path,
            owner,
            group,
            mode,
            backups,
            state_dir,
            units,
            instances,
            restart_timeout_s,
        })
    }

    /// Whether `step` stays within this configuration: backup numbers within
    /// its count, units within its list. The one check for a step run on its
    /// own and the same step on the lock's channel.
    pub fn admits(&self, step: &Step) -> Result<(), Failure> {
        let backup = |n: u32, low: u32| {
            if (low..=self.backups).contains(&n) {
                Ok(())
            } else {
                Err(Failure::usage(format!(
                    "there is no backup {n}: this service keeps {}",
                    self.backups
                )))
            }
        };
        match step {
            Step::Restage(n) => backup(*n, 1),
            Step::Restore(n) => backup(*n, 0),
            Step::Restart(unit) | Step::ResetFailed(unit) if !self.admits_unit(unit) => {
                Err(Failure::usage(format!(
                    "`{unit}` is not a unit of this service's configuration"
                )))
            }
            _ => Ok(()),
        }
    }

    /// Whether a step may restart `unit`: a configured plain unit, or an
    /// instance of a configured template that an `instance` line allows.
    pub fn admits_unit(&self, unit: &str) -> bool {
        if !is_unit_name(unit) {
            return false;
        }
        let Some((prefix, rest)) = unit.split_once('@') else {
            return self.units.iter().any(|known| known == unit);
        };
        let Some((instance, suffix)) = rest.rsplit_once('.') else {
            return false;
        };
        // `name@.service` itself is no unit to restart.
        !instance.is_empty()
            && self.units.contains(&format!("{prefix}@.{suffix}"))
            && self.instances.iter().any(|rule| {
                instance_rule(rule).is_some_and(|(p, pattern, s)| {
                    p == prefix && s == suffix && matches_instance(pattern, instance)
                })
            })
    }
}

/// `prefix@INSTANCE.suffix` split in three, where INSTANCE is an instance
/// name or a pattern of one (a single `*`).
fn instance_rule(rule: &str) -> Option<(&str, &str, &str)> {
    let (prefix, rest) = rule.split_once('@')?;
    let (instance, suffix) = rest.rsplit_once('.')?;
    // A pattern is an instance name with one character a `*`.
    let fits = is_unit_name(&format!("{prefix}@.{suffix}"))
        && instance.matches('*').count() <= 1
        && is_instance_name(&instance.replace('*', "x"));
    fits.then_some((prefix, instance, suffix))
}

/// Whether `instance` (a valid instance name) is `pattern`, or matches it
/// with its `*` standing for one or more letters, digits or `_` (a dot is
/// matched only where the pattern has one).
fn matches_instance(pattern: &str, instance: &str) -> bool {
    if !is_instance_name(instance) {
        return false;
    }
    match pattern.split_once('*') {
        None => pattern == instance,
        Some((head, tail)) => instance
            .strip_prefix(head)
            .and_then(|rest| rest.strip_suffix(tail))
            .is_some_and(|star| {
                !star.is_empty() && star.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            }),
    }
}

/// An instance name systemd passes to `%i` and `%I` alike: letters, digits,
/// `_`, and dots between them; at most 64 characters.
pub fn is_instance_name(instance: &str) -> bool {
    !instance.is_empty()
        && instance.len() <= 64
        && instance.split('.').all(|part| {
            !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

/// The longest path a configuration takes: a lock's file name is made of the
/// target's path, and a file name holds at most 255 bytes.
pub const MAX_PATH: usize = 240;

/// Absolute, at least one component, none of them empty, `.` or `..`, and only
/// characters that need no quoting; at most [`MAX_PATH`] bytes.
pub fn is_plain_path(path: &str) -> bool {
    path.starts_with('/')
        && path.len() > 1
        && path.len() <= MAX_PATH
        && !path.ends_with('/')
        && path[1..]
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-@+".contains(c))
}

/// Letters, digits, `.`, `_`, `-`; not starting with `.` or `-`: a service or environment name.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && !name.contains("..")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// A POSIX-portable user or group name.
pub fn is_account_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 32
        && matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// `name.service`, `name@instance.service` or a template `name@.service`,
/// where an instance is an [`is_instance_name`].
pub fn is_unit_name(unit: &str) -> bool {
    let Some(stem) = [".service", ".target", ".socket"]
        .iter()
        .find_map(|suffix| unit.strip_suffix(suffix))
    else {
        return false;
    };
    let (prefix, instance) = stem.split_once('@').unwrap_or((stem, ""));
    unit.len() <= 255 && is_unit_word(prefix) && (instance.is_empty() || is_instance_name(instance))
}

/// A unit's name before its `@`: letters, digits, `:`, `_`, `.`, `-`, not starting with `-` or `.`.
pub fn is_unit_word(word: &str) -> bool {
    !word.is_empty()
        && word.len() <= 128
        && !word.starts_with(['-', '.'])
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":_.-".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> HostConfig {
        HostConfig {
            path: "/opt/voxcore/.env".into(),
            owner: "voxcore".into(),
            group: "voxcore".into(),
            mode: 0o600,
            backups: 5,
            state_dir: "/var/lib/hostenv/voxcore".into(),
            units: vec!["voxcore@.service".into(), "voxcore-sidecar.service".into()],
            instances: vec!["voxcore@1.service".into(), "voxcore@sock*.service".into()],
            restart_timeout_s: 60,
        }
    }

    #[test]
    fn renders_and_parses_back() {
        let config = sample();
        let text = config.render("voxcore");
        assert!(text.contains("mode 0600\n"), "{text}");
        assert!(text.contains("instance voxcore@sock*.service\n"), "{text}");
        assert_eq!(HostConfig::parse(&text).unwrap(), config);
    }

    #[test]
    fn refuses_what_a_step_could_abuse() {
        let text = sample().render("voxcore");
        for (from, to, says) in [
            (
                "path /opt/voxcore/.env",
                "path /opt/../etc/shadow",
                "`path`",
            ),
            ("path /opt/voxcore/.env", "path opt/.env", "`path`"),
            (
                "path /opt/voxcore/.env",
                &format!("path /opt/{}", "a".repeat(240)),
                "`path`",
            ),
            ("mode 0600", "mode 0644", "`mode`"),
            ("backups 5", "backups 0", "`backups`"),
            (
                "unit voxcore@.service",
                "unit voxcore;id",
                "not a unit name",
            ),
            ("owner voxcore", "owner vox core", "`owner`"),
            (
                "restart-timeout 60",
                "restart-timeout 60\nshell /bin/sh",
                "`shell`",
            ),
            ("group voxcore", "group voxcore\ngroup root", "twice"),
            (
                "instance voxcore@1.service",
                "instance voxbridge@1.service",
                "not of a template",
            ),
            (
                "instance voxcore@1.service",
                "instance voxcore@a-b.service",
                "neither an instance nor a pattern",
            ),
            (
                "instance voxcore@1.service",
                "instance voxcore@**.service",
                "neither an instance nor a pattern",
            ),
            (
                "instance voxcore@1.service",
                "instance voxcore-sidecar.service",
                "neither an instance nor a pattern",
            ),
        ] {
            let error = HostConfig::parse(&text.replace(from, to)).unwrap_err();
            assert!(error.contains(says), "{to}: {error}");
        }
    }

    #[test]
    fn admits_configured_units_and_the_instances_root_allows_only() {
        let config = sample();
        for unit in [
            "voxcore@1.service",
            "voxcore@sock1.service",
            "voxcore@sock_a.service",
            "voxcore-sidecar.service",
        ] {
            assert!(config.admits_unit(unit), "{unit}");
        }
        for unit in [
            // Instances root did not list or whose pattern does not match.
            "voxcore@2.service",
            "voxcore@5ock1.service",
            "voxcore@sock.service",
            "voxcore@sock_a.b.service",
            // Names systemd would turn into something else, or no unit at all.
            "voxcore@sock-a.service",
            "voxcore@sock:1.service",
            "voxcore@sock..a.service",
            "voxcore@sock1.service.service",
            "voxcore@sock\\x2d.service",
            "voxcore@.service",
            "voxcore@.service.service",
            "voxbridge.service",
            "voxcore@-x.service",
            "voxcore@a b.service",
            "voxcore@1.socket",
            "sshd.service",
        ] {
            assert!(!config.admits_unit(unit), "{unit}");
        }
    }

    #[test]
    fn backup_numbers_stay_within_the_configured_count() {
        let config = sample();
        assert!(config.admits(&Step::Restore(0)).is_ok());
        assert!(config.admits(&Step::Restore(5)).is_ok());
        assert!(config.admits(&Step::Restage(5)).is_ok());
        for step in [
            Step::Restore(6),
            Step::Restage(6),
            Step::Restage(0),
            Step::Restart("voxcore@2.service".into()),
        ] {
            let refused = config.admits(&step).unwrap_err();
            assert_eq!(refused.code, 2, "{step:?}");
        }
    }
}
