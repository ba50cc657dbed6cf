//! The grammar of the names a request holds.

/// True for names a process environment and systemd accept: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_valid_key_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A name checked by `check`, as the only form in which it reaches a host:
/// parsed once where the request is read, then read as a `str`.
macro_rules! checked_name {
    ($(#[$doc:meta])* $name:ident, $check:path) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// `text`, when it is one.
            pub fn parse(text: &str) -> Option<$name> {
                $check(text).then(|| $name(text.to_string()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

checked_name!(
    /// A host to reach: a DNS name or an IPv4 or IPv6 address.
    HostName,
    is_host_name
);
checked_name!(
    /// A service's name: a plain name, part of every path and lock of it.
    ServiceName,
    crate::host::config::is_plain_name
);
checked_name!(
    /// An environment's name (`production`): part of the name of every lock
    /// a run takes on a host.
    EnvironmentName,
    crate::host::config::is_plain_name
);
checked_name!(
    /// A user or group name on a host.
    Account,
    crate::host::config::is_account_name
);
checked_name!(
    /// An absolute path without `..`, in the characters a file name here may hold.
    AbsolutePath,
    crate::host::config::is_plain_path
);

/// A DNS name (letters, digits, `.`, `-`, `_`; not starting with `-`) or an
/// address, at most 253 characters.
pub fn is_host_name(host: &str) -> bool {
    let dns = host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_');
    let ipv6 = host.contains(':')
        && host
            .chars()
            .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
    !host.is_empty() && host.len() <= 253 && !host.starts_with('-') && (dns || ipv6)
}

/// A systemd unit name checked to be one hostenv restarts (`name.service`,
/// `.target` or `.socket`; `name@.service` a template, `name@INSTANCE.service`
/// one of its instances): the only form in which a unit reaches a host.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Unit(String);

impl Unit {
    /// The unit `name`, when it is one.
    pub fn parse(name: &str) -> Option<Unit> {
        crate::host::config::is_unit_name(name).then(|| Unit(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `name@.service`: a template, restarted as its instances.
    pub fn is_template(&self) -> bool {
        self.template_parts().is_some()
    }

    /// A template's name on either side of its instance: `("name", "service")`.
    pub fn template_parts(&self) -> Option<(&str, &str)> {
        self.0.split_once("@.")
    }

    /// The template's instance `instance` (`name@INSTANCE.service`), when
    /// this is a template and `instance` a unit word.
    pub fn instance(&self, instance: &str) -> Option<Unit> {
        let (prefix, suffix) = self.template_parts()?;
        Unit::parse(&format!("{prefix}@{instance}.{suffix}"))
    }

    /// What systemd lists a template's instances by: `name@*.service`.
    pub fn instances_pattern(&self) -> Option<String> {
        let (prefix, suffix) = self.template_parts()?;
        Some(format!("{prefix}@*.{suffix}"))
    }

    /// The instance this unit is of a template (`INSTANCE`), if it is one.
    pub fn instance_name(&self) -> Option<&str> {
        self.0
            .split_once('@')
            .and_then(|(_, rest)| rest.rsplit_once('.'))
            .map(|(instance, _)| instance)
            .filter(|instance| !instance.is_empty())
    }
}

impl std::fmt::Display for Unit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_know_their_templates_and_instances() {
        let template = Unit::parse("voxcore@.service").unwrap();
        assert!(template.is_template());
        assert_eq!(template.template_parts(), Some(("voxcore", "service")));
        assert_eq!(template.instances_pattern().unwrap(), "voxcore@*.service");
        let worker = template.instance("w1").unwrap();
        assert_eq!(worker.as_str(), "voxcore@w1.service");
        assert!(!worker.is_template());
        assert_eq!(worker.instance_name(), Some("w1"));
        assert_eq!(template.instance_name(), None);
        // Not an instance name: no unit.
        assert_eq!(template.instance("a b"), None);
        let plain = Unit::parse("voxbridge.service").unwrap();
        assert!(!plain.is_template());
        assert_eq!(plain.instance("w1"), None);
        assert_eq!(plain.instance_name(), None);
        for bad in ["voxbridge", "../x.service", "a b.service", "-x.service", ""] {
            assert_eq!(Unit::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn names_are_made_only_by_their_checks() {
        assert_eq!(ServiceName::parse("voxbridge").unwrap(), "voxbridge");
        assert_eq!(HostName::parse("10.0.0.5").unwrap().as_str(), "10.0.0.5");
        assert_eq!(
            Account::parse("voxbridge").unwrap().to_string(),
            "voxbridge"
        );
        assert!(AbsolutePath::parse("/opt/voxbridge/.env").is_some());
        assert!(EnvironmentName::parse("production").is_some());
        for (kind, bad) in [
            (
                "environment",
                EnvironmentName::parse("prod uction").is_none(),
            ),
            ("environment", EnvironmentName::parse("../x").is_none()),
            ("service", ServiceName::parse("../etc").is_none()),
            ("host", HostName::parse("-oProxyCommand=x").is_none()),
            ("host", HostName::parse("a b").is_none()),
            ("account", Account::parse("root;id").is_none()),
            ("path", AbsolutePath::parse("relative/.env").is_none()),
            ("path", AbsolutePath::parse("/opt/../etc/shadow").is_none()),
        ] {
            assert!(bad, "a bad {kind} was accepted");
        }
    }

    #[test]
    fn key_names_are_what_environments_take() {
        assert!(is_valid_key_name("JWT_SECRET"));
        assert!(is_valid_key_name("_x1"));
        assert!(!is_valid_key_name("1X"));
        assert!(!is_valid_key_name("A-B"));
        assert!(!is_valid_key_name(""));
    }
}
