//! The host's own record of what hostenv may touch for one service:
//! `/etc/hostenv/<service>.conf`, root-owned, written by `hostenv host-install`
//! (or by the admin's configuration management). The privileged steps take
//! every path, owner, mode and unit from here, never from their arguments, so
//! a sudo rule naming a step and a service grants exactly that.
//!
//! The format is one `key value` per line, `#` comments, in this order:
//!
//! ```text
//! path /opt/voxbridge/.env
//! owner voxbridge
//! group voxbridge
//! mode 0600
//! backups 5
//! state-dir /var/lib/hostenv/voxbridge
//! unit voxbridge.service
//! restart-timeout 60
//! ```

/// One service's configuration on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostConfig {
    pub path: String,
    pub owner: String,
    pub group: String,
    pub mode: u32,
    pub backups: u32,
    pub state_dir: String,
    /// Plain units and templates (`name@.service`); a template admits its instances.
    pub units: Vec<String>,
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
        Ok(HostConfig {
            path,
            owner,
            group,
            mode,
            backups,
            state_dir,
            units,
            restart_timeout_s,
        })
    }

    /// Whether a step may restart `unit`: one of the configured units, or an
    /// instance of a configured template.
    pub fn admits_unit(&self, unit: &str) -> bool {
        self.units.iter().any(|known| {
            if known == unit {
                return !known.contains("@.");
            }
            let Some((prefix, suffix)) = known.split_once("@.") else {
                return false;
            };
            unit.strip_prefix(prefix)
                .and_then(|rest| rest.strip_prefix('@'))
                .and_then(|rest| rest.strip_suffix(suffix))
                .and_then(|rest| rest.strip_suffix('.'))
                .is_some_and(is_unit_word)
        })
    }
}

/// Absolute, at least one component, none of them empty, `.` or `..`, and only
/// characters that need no quoting.
pub fn is_plain_path(path: &str) -> bool {
    path.starts_with('/')
        && path.len() > 1
        && path.len() <= 4096
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

/// `name.service`, `name@instance.service` or a template `name@.service`.
pub fn is_unit_name(unit: &str) -> bool {
    let Some(stem) = [".service", ".target", ".socket"]
        .iter()
        .find_map(|suffix| unit.strip_suffix(suffix))
    else {
        return false;
    };
    let (prefix, instance) = stem.split_once('@').unwrap_or((stem, ""));
    unit.len() <= 255 && is_unit_word(prefix) && (instance.is_empty() || is_unit_word(instance))
}

/// A unit's prefix or instance: letters, digits, `:`, `_`, `.`, `-`, not starting with `-` or `.`.
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
            restart_timeout_s: 60,
        }
    }

    #[test]
    fn renders_and_parses_back() {
        let config = sample();
        let text = config.render("voxcore");
        assert!(text.contains("mode 0600\n"), "{text}");
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
        ] {
            let error = HostConfig::parse(&text.replace(from, to)).unwrap_err();
            assert!(error.contains(says), "{to}: {error}");
        }
    }

    #[test]
    fn admits_configured_units_and_template_instances_only() {
        let config = sample();
        assert!(config.admits_unit("voxcore@1.service"));
        assert!(config.admits_unit("voxcore@sock-a.service"));
        assert!(config.admits_unit("voxcore-sidecar.service"));
        for unit in [
            "voxcore@.service",
            "voxcore@.service.service",
            "voxbridge.service",
            "voxcore@-x.service",
            "voxcore@a b.service",
            "voxcore@a.socket",
            "sshd.service",
        ] {
            assert!(!config.admits_unit(unit), "{unit}");
        }
    }
}
