//! Rules a contract states in its comments, one per `# hostenv:` line, so the
//! file stays a plain dotenv file every other tool reads:
//!
//! ```text
//! # hostenv: one-of SONIOX_API_KEY DEEPGRAM_API_KEY        exactly one has a value
//! # hostenv: any-of OPENAI_API_KEY GOOGLE_API_KEY          at least one has a value
//! # hostenv: required-when TRACING=true OTEL_API_KEY       when TRACING is `true`, these have values
//! # hostenv: url MONGODB_URI mongodb mongodb+srv           a URL with one of these schemes
//! # hostenv: int PORT 1 65535                              an integer in the range
//! # hostenv: bool TRACING                                  `true` or `false`
//! # hostenv: enum LOG_LEVEL debug info warning error       one of these words
//! ```
//!
//! The keys of a group and those a `required-when` names are required only as
//! the rule says, so a request need not list them in `optional`. A value is
//! there when its key has a non-empty value. Rules are checked after every
//! value is resolved and before any host; a failure names the key, the rule
//! and its line, never a value. One grammar: an unknown word, a key that is
//! no key name, a rule no value can meet is refused with its line.

use crate::settings::names::is_valid_key_name;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    OneOf(Vec<String>),
    AnyOf(Vec<String>),
    RequiredWhen {
        key: String,
        equals: String,
        then: Vec<String>,
    },
    Url {
        key: String,
        schemes: Vec<String>,
    },
    Int {
        key: String,
        min: i64,
        max: i64,
    },
    Bool {
        key: String,
    },
    Enum {
        key: String,
        words: Vec<String>,
    },
}

/// A rule and the contract line it is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruled {
    pub rule: Rule,
    pub line: usize,
}

/// What a rule found wrong: which key, whether a value's kind (else a
/// presence), and words naming the rule, never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmet {
    pub key: String,
    pub wrong_kind: bool,
    pub message: String,
}

/// The rule on a comment line, if it is one (`# hostenv: ...`); an error
/// says what is wrong with a line that is meant as one.
pub fn on_line(comment: &str) -> Option<Result<Rule, String>> {
    let text = comment.strip_prefix('#')?.trim_start();
    let rule = text.strip_prefix("hostenv:")?;
    Some(parse(rule))
}

fn parse(text: &str) -> Result<Rule, String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let Some((&kind, rest)) = words.split_first() else {
        return Err("a `hostenv:` rule names its kind: one-of, any-of, required-when, url, int, bool or enum".into());
    };
    let keys = |names: &[&str]| -> Result<Vec<String>, String> {
        names
            .iter()
            .map(|name| {
                if is_valid_key_name(name) {
                    Ok(name.to_string())
                } else {
                    Err(format!("`{}` is not a key name", name.escape_debug()))
                }
            })
            .collect()
    };
    let one_key = |rest: &[&str]| -> Result<(String, Vec<String>), String> {
        let (first, more) = rest
            .split_first()
            .ok_or_else(|| format!("`{kind}` names a key first"))?;
        Ok((
            keys(&[first])?.remove(0),
            more.iter().map(|w| w.to_string()).collect(),
        ))
    };
    match kind {
        "one-of" | "any-of" => {
            let group = keys(rest)?;
            let mut distinct = group.clone();
            distinct.sort();
            distinct.dedup();
            if distinct.len() < 2 || distinct.len() != group.len() {
                return Err(format!("`{kind}` names two or more keys, each once"));
            }
            Ok(if kind == "one-of" {
                Rule::OneOf(group)
            } else {
                Rule::AnyOf(group)
            })
        }
        "required-when" => {
            let (condition, then) = rest
                .split_first()
                .ok_or("`required-when` names `KEY=VALUE`, then the keys it requires")?;
            let (key, equals) = condition
                .split_once('=')
                .ok_or("`required-when` names `KEY=VALUE` first")?;
            let key = keys(&[key])?.remove(0);
            let then = keys(then)?;
            if then.is_empty() {
                return Err("`required-when` names the keys it requires".into());
            }
            if then.contains(&key) {
                return Err(format!("`{key}` cannot require itself"));
            }
            Ok(Rule::RequiredWhen {
                key,
                equals: equals.to_string(),
                then,
            })
        }
        "url" => {
            let (key, schemes) = one_key(rest)?;
            let plain = |s: &String| {
                s.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                    && s.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
            };
            if schemes.is_empty() || !schemes.iter().all(plain) {
                return Err(
                    "`url` names the allowed schemes in lower case (`mongodb`, `rediss`)".into(),
                );
            }
            Ok(Rule::Url { key, schemes })
        }
        "int" => {
            let (key, bounds) = one_key(rest)?;
            let [min, max] = bounds.as_slice() else {
                return Err("`int` names a key, its least and its greatest value".into());
            };
            let number = |text: &str| {
                text.parse::<i64>()
                    .map_err(|_| format!("`{}` is not an integer", text.escape_debug()))
            };
            let (min, max) = (number(min)?, number(max)?);
            if min > max {
                return Err(format!("no integer is at least {min} and at most {max}"));
            }
            Ok(Rule::Int { key, min, max })
        }
        "bool" => {
            let (key, more) = one_key(rest)?;
            if !more.is_empty() {
                return Err("`bool` names one key".into());
            }
            Ok(Rule::Bool { key })
        }
        "enum" => {
            let (key, words) = one_key(rest)?;
            if words.is_empty() {
                return Err("`enum` names a key, then the words it may be".into());
            }
            Ok(Rule::Enum { key, words })
        }
        other => Err(format!(
            "`{}` is not a rule: one-of, any-of, required-when, url, int, bool or enum",
            other.escape_debug()
        )),
    }
}

impl Rule {
    /// Every key the rule names.
    pub fn keys(&self) -> Vec<&str> {
        match self {
            Rule::OneOf(group) | Rule::AnyOf(group) => group.iter().map(String::as_str).collect(),
            Rule::RequiredWhen { key, then, .. } => std::iter::once(key.as_str())
                .chain(then.iter().map(String::as_str))
                .collect(),
            Rule::Url { key, .. }
            | Rule::Int { key, .. }
            | Rule::Bool { key }
            | Rule::Enum { key, .. } => vec![key.as_str()],
        }
    }

    /// Keys the rule requires only as it says (a request need not list them in `optional`).
    pub fn governs(&self, name: &str) -> bool {
        match self {
            Rule::OneOf(group) | Rule::AnyOf(group) => group.iter().any(|k| k == name),
            Rule::RequiredWhen { then, .. } => then.iter().any(|k| k == name),
            _ => false,
        }
    }
}

/// What the rules find wrong with one host's values (`value` gives a key's
/// value, None when it has none). With `values_read` false (a check that
/// reads no secret) only whether keys have sources is known: the presence
/// rules run on that, the others wait for a run that reads the values.
pub fn check<'v>(
    rules: &[Ruled],
    value: &dyn Fn(&str) -> Option<&'v str>,
    values_read: bool,
) -> Vec<Unmet> {
    let has = |key: &str| value(key).is_some_and(|v| !v.is_empty());
    let mut unmet = Vec::new();
    for Ruled { rule, line } in rules {
        let at = format!("(contract line {line})");
        let listed = |keys: &[String]| {
            keys.iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match rule {
            Rule::OneOf(group) => {
                let set: Vec<&String> = group.iter().filter(|k| has(k)).collect();
                if set.len() != 1 {
                    let found = if set.is_empty() {
                        "none has".to_string()
                    } else {
                        format!(
                            "{} have",
                            listed(&set.iter().map(|k| (*k).clone()).collect::<Vec<_>>())
                        )
                    };
                    unmet.push(Unmet {
                        key: set.get(1).map_or(&group[0], |k| *k).clone(),
                        wrong_kind: false,
                        message: format!(
                            "exactly one of {} must have a value; {found} {at}",
                            listed(group)
                        ),
                    });
                }
            }
            Rule::AnyOf(group) => {
                if !group.iter().any(|k| has(k)) {
                    unmet.push(Unmet {
                        key: group[0].clone(),
                        wrong_kind: false,
                        message: format!(
                            "at least one of {} must have a value; none has {at}",
                            listed(group)
                        ),
                    });
                }
            }
            Rule::RequiredWhen { key, equals, then } if values_read => {
                if value(key) == Some(equals.as_str()) {
                    for needed in then.iter().filter(|k| !has(k)) {
                        unmet.push(Unmet {
                            key: needed.clone(),
                            wrong_kind: false,
                            message: format!(
                                "`{needed}` must have a value when `{key}` is `{equals}` {at}"
                            ),
                        });
                    }
                }
            }
            _ if !values_read => {}
            kind => {
                let Some(key) = kind.keys().first().map(|k| k.to_string()) else {
                    continue;
                };
                let Some(text) = value(&key).filter(|v| !v.is_empty()) else {
                    continue;
                };
                if let Some(wanted) = wrong_kind(kind, text) {
                    unmet.push(Unmet {
                        key: key.clone(),
                        wrong_kind: true,
                        message: format!("`{key}` must be {wanted} {at}"),
                    });
                }
            }
        }
    }
    unmet
}

/// What a value of this kind must be, when `text` is not one.
fn wrong_kind(rule: &Rule, text: &str) -> Option<String> {
    match rule {
        Rule::Url { schemes, .. } => {
            let ok = text.split_once("://").is_some_and(|(scheme, rest)| {
                !rest.is_empty() && schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme))
            });
            let names: Vec<String> = schemes.iter().map(|s| format!("`{s}://`")).collect();
            (!ok).then(|| format!("a URL starting {}", names.join(" or ")))
        }
        Rule::Int { min, max, .. } => {
            let ok = text
                .parse::<i64>()
                .is_ok_and(|n| (*min..=*max).contains(&n));
            (!ok).then(|| format!("an integer from {min} to {max}"))
        }
        Rule::Bool { .. } => {
            (!matches!(text, "true" | "false")).then(|| "`true` or `false`".into())
        }
        Rule::Enum { words, .. } => {
            let names: Vec<String> = words.iter().map(|w| format!("`{w}`")).collect();
            (!words.iter().any(|w| w == text)).then(|| format!("one of {}", names.join(", ")))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(text: &str) -> Result<Rule, String> {
        on_line(text).expect("a rule line")
    }

    #[test]
    fn only_hostenv_comments_are_rules() {
        assert!(on_line("# a comment").is_none());
        assert!(on_line("# hostenv is great").is_none());
        assert_eq!(
            rule("#hostenv: bool TRACING"),
            Ok(Rule::Bool {
                key: "TRACING".into()
            })
        );
    }

    #[test]
    fn each_kind_parses_and_a_broken_rule_says_why() {
        assert_eq!(
            rule("# hostenv: one-of A B"),
            Ok(Rule::OneOf(vec!["A".into(), "B".into()]))
        );
        assert_eq!(
            rule("# hostenv: required-when T=true K L"),
            Ok(Rule::RequiredWhen {
                key: "T".into(),
                equals: "true".into(),
                then: vec!["K".into(), "L".into()]
            })
        );
        assert_eq!(
            rule("# hostenv: int PORT 1 65535"),
            Ok(Rule::Int {
                key: "PORT".into(),
                min: 1,
                max: 65535
            })
        );
        for (text, says) in [
            ("# hostenv:", "names its kind"),
            ("# hostenv: maybe A", "is not a rule"),
            ("# hostenv: one-of A", "two or more keys"),
            ("# hostenv: one-of A A", "each once"),
            ("# hostenv: any-of A b-c", "is not a key name"),
            ("# hostenv: required-when T K", "KEY=VALUE"),
            ("# hostenv: required-when T=1", "names the keys"),
            ("# hostenv: required-when T=1 T", "cannot require itself"),
            ("# hostenv: url U", "allowed schemes"),
            ("# hostenv: url U HTTP", "allowed schemes"),
            ("# hostenv: int P 10 1", "no integer is at least 10"),
            ("# hostenv: int P one 2", "not an integer"),
            ("# hostenv: bool B C", "one key"),
            ("# hostenv: enum E", "the words"),
        ] {
            let error = rule(text).unwrap_err();
            assert!(error.contains(says), "{text}: {error}");
        }
    }

    fn checked(rules: &[&str], values: &[(&str, &str)], read: bool) -> Vec<Unmet> {
        let rules: Vec<Ruled> = rules
            .iter()
            .enumerate()
            .map(|(i, text)| Ruled {
                rule: rule(text).unwrap(),
                line: i + 1,
            })
            .collect();
        let value = |key: &str| values.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        check(&rules, &value, read)
    }

    #[test]
    fn groups_and_conditions() {
        let one = ["# hostenv: one-of SONIOX DEEPGRAM"];
        assert!(checked(&one, &[("SONIOX", "s")], true).is_empty());
        let none = checked(&one, &[("SONIOX", "")], true);
        assert_eq!(none[0].key, "SONIOX");
        assert!(
            none[0].message.contains("none has (contract line 1)"),
            "{}",
            none[0].message
        );
        let both = checked(&one, &[("SONIOX", "s"), ("DEEPGRAM", "d")], true);
        assert_eq!(both[0].key, "DEEPGRAM");
        let any = ["# hostenv: any-of A B"];
        assert!(checked(&any, &[("A", "x"), ("B", "y")], true).is_empty());
        assert_eq!(checked(&any, &[], true).len(), 1);
        let when = ["# hostenv: required-when TRACING=true OTEL"];
        assert!(checked(&when, &[("TRACING", "false")], true).is_empty());
        let unmet = checked(&when, &[("TRACING", "true")], true);
        assert_eq!(
            (unmet[0].key.as_str(), unmet[0].wrong_kind),
            ("OTEL", false)
        );
        assert!(checked(&when, &[("TRACING", "true"), ("OTEL", "k")], true).is_empty());
        // Without the values read, only presence rules run.
        assert!(checked(&when, &[("TRACING", "true")], false).is_empty());
        assert_eq!(checked(&one, &[], false).len(), 1);
    }

    #[test]
    fn kinds_name_what_a_value_must_be_never_the_value() {
        let rules = [
            "# hostenv: url MONGODB_URI mongodb mongodb+srv",
            "# hostenv: int PORT 1 65535",
            "# hostenv: bool TRACING",
            "# hostenv: enum LOG_LEVEL debug info",
        ];
        let good = [
            ("MONGODB_URI", "mongodb+srv://u:p@db/x"),
            ("PORT", "8080"),
            ("TRACING", "false"),
            ("LOG_LEVEL", "info"),
        ];
        assert!(checked(&rules, &good, true).is_empty());
        let bad = [
            ("MONGODB_URI", "CANARY-postgres://u:p@db"),
            ("PORT", "CANARY-80x"),
            ("TRACING", "CANARY-yes"),
            ("LOG_LEVEL", "CANARY-loud"),
        ];
        let unmet = checked(&rules, &bad, true);
        assert_eq!(
            unmet.iter().map(|u| u.key.as_str()).collect::<Vec<_>>(),
            ["MONGODB_URI", "PORT", "TRACING", "LOG_LEVEL"]
        );
        for u in &unmet {
            assert!(
                u.wrong_kind && !u.message.contains("CANARY"),
                "{}",
                u.message
            );
        }
        // No value, no kind to check (presence is the groups' business).
        assert!(checked(&rules, &[("PORT", "")], true).is_empty());
        assert!(
            checked(
                &["# hostenv: int PORT 1 9"],
                &[("PORT", "99999999999999999999")],
                true
            )
            .len()
                == 1
        );
    }
}
