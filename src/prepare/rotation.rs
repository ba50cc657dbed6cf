//! A Rotation's own rules: each service once, every host put back on any
//! failure, shared keys holding one value, and which side of an overlap key
//! verifies it.

use std::collections::BTreeMap;

use super::{key_problems, prepare, Prepared};
use crate::protocol::error::{Error, ErrorKind, Result};
use crate::protocol::report::{DeploymentReport, KeyReport, Report, SharedKeyReport, Summary};
use crate::protocol::request::{Amount, Rotation};
use crate::settings::catalog::Catalog;
use crate::settings::check_key_names;
use crate::settings::secret::{EnvLookup, ExposeSecret};

/// One window deploys each service once.
pub fn distinct_services(rotation: &Rotation) -> Result<()> {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (index, deployment) in rotation.deployments.iter().enumerate() {
        if let Some(first) = seen.insert(deployment.service.as_str(), index) {
            return Err(Error::invalid(
                ErrorKind::InvalidSetting,
                format!("/deployments/{index}/service"),
                format!(
                    "service `{}` appears twice (first at deployment {first}); one window deploys each service once",
                    deployment.service
                ),
            ));
        }
    }
    Ok(())
}

/// Prepares every deployment of a Rotation and checks its shared keys; the
/// deployments' contract reports are put on `report` even when one fails.
pub fn prepare_rotation(
    rotation: &Rotation,
    env: &dyn EnvLookup,
    catalog: &Catalog,
    report: &mut Report,
) -> Result<Vec<Prepared>> {
    rotation_rules(rotation)?;
    check_key_names(&rotation.shared, "/shared", ErrorKind::InvalidSetting)?;
    check_key_names(&rotation.overlap, "/overlap", ErrorKind::InvalidSetting)?;
    let mut all = Vec::new();
    let mut first_error = None;
    for (index, deployment) in rotation.deployments.iter().enumerate() {
        match prepare(deployment, &format!("/deployments/{index}"), env, catalog) {
            Ok(prepared) => all.push(prepared),
            Err(error) => {
                first_error = Some(error);
                break;
            }
        }
    }
    report.deployments = Some(
        all.iter()
            .map(|prepared| DeploymentReport {
                service: prepared.settings.service.to_string(),
                contract: prepared.contract_report(),
                hosts: Vec::new(),
                summary: Summary::default(),
            })
            .collect(),
    );
    if let Some(error) = first_error {
        return Err(error);
    }
    let problems: Vec<(String, Vec<&KeyReport>)> = all
        .iter()
        .map(|p| (p.settings.service.to_string(), p.resolution.problems()))
        .filter(|(_, problems)| !problems.is_empty())
        .collect();
    if let Some((service, problems)) = problems.first() {
        let within = format!(" in `{service}`");
        return Err(key_problems(problems, &within).expect("non-empty"));
    }
    report.shared = Some(check_shared(&rotation.shared, &all)?);
    overlap_verifiers(rotation, &all.iter().collect::<Vec<_>>())?;
    Ok(all)
}

/// What a Rotation's deployments may not set: every failure puts every host back.
pub fn rotation_rules(rotation: &Rotation) -> Result<()> {
    distinct_services(rotation)?;
    for (index, deployment) in rotation.deployments.iter().enumerate() {
        let at = format!("/deployments/{index}");
        if deployment.rollback_on_failure == Some(false) {
            return Err(Error::invalid(
                ErrorKind::InvalidSetting,
                format!("{at}/rollbackOnFailure"),
                "a Rotation always puts every host back when one fails; leave it out",
            ));
        }
        let max_failed = deployment
            .rollout
            .as_ref()
            .and_then(|r| r.max_failed.as_ref());
        if max_failed.is_some_and(|amount| !matches!(amount, Amount::Count(0))) {
            return Err(Error::invalid(
                ErrorKind::InvalidSetting,
                format!("{at}/rollout/maxFailed"),
                "is always 0 in a Rotation: one failed host puts every host back",
            ));
        }
    }
    Ok(())
}

/// For an overlap rotation, which deployments verify the keys (their contract
/// declares `<KEY>_PREVIOUS`), per deployment; the others present them.
pub fn overlap_verifiers(rotation: &Rotation, all: &[&Prepared]) -> Result<Vec<bool>> {
    let mut verifiers = vec![false; all.len()];
    let mut presenters = vec![false; all.len()];
    for (index, key) in rotation.overlap.iter().enumerate() {
        let field = format!("/overlap/{index}");
        let invalid =
            |message: String| Err(Error::invalid(ErrorKind::InvalidSetting, &field, message));
        if !rotation.shared.contains(key) {
            return invalid(format!("`{key}` must also be listed in `shared`"));
        }
        let previous = previous_name(key);
        let (mut verifies, mut presents) = (false, false);
        for (position, prepared) in all.iter().enumerate() {
            let at = format!("/deployments/{position}");
            if prepared.contract.has(&previous) {
                let given = prepared
                    .resolution
                    .files
                    .iter()
                    .any(|file| file.values.iter().any(|(k, _)| *k == previous));
                if given {
                    return Err(Error::invalid(
                        ErrorKind::InvalidSetting,
                        format!("{at}/env/{previous}"),
                        format!("hostenv fills `{previous}` itself in an overlap rotation; declare it optional and give it no source"),
                    ));
                }
                if prepared.settings.target.backups < 2 {
                    return Err(Error::invalid(
                        ErrorKind::InvalidSetting,
                        format!("{at}/target/backups"),
                        "must be at least 2 for an overlap rotation: a verifier is switched twice",
                    ));
                }
                verifiers[position] = true;
                verifies = true;
            } else if prepared.contract.has(key) {
                presenters[position] = true;
                presents = true;
            }
        }
        if !verifies {
            return invalid(format!("no deployment's contract declares `{previous}`; the side that verifies `{key}` must accept the old value there"));
        }
        if !presents {
            return invalid(format!("no deployment carries `{key}` without `{previous}`; there is no side to switch in between"));
        }
    }
    if let Some(position) = (0..all.len()).find(|i| verifiers[*i] && presenters[*i]) {
        return Err(Error::invalid(
            ErrorKind::InvalidSetting,
            format!("/deployments/{position}"),
            "verifies one overlap key and presents another; rotate them in separate requests",
        ));
    }
    Ok(verifiers)
}

/// Where an overlap rotation keeps a key's old value on the verifier.
pub fn previous_name(key: &str) -> String {
    format!("{key}_PREVIOUS")
}

/// Every shared key must hold one value across every host of every deployment that has it.
fn check_shared(shared: &[String], all: &[Prepared]) -> Result<Vec<SharedKeyReport>> {
    let mut reports = Vec::new();
    for (index, key) in shared.iter().enumerate() {
        let services: Vec<String> = all
            .iter()
            .filter(|p| p.contract.has(key))
            .map(|p| p.settings.service.to_string())
            .collect();
        if services.is_empty() {
            return Err(Error::invalid(
                ErrorKind::InvalidSetting,
                format!("/shared/{index}"),
                format!("`{key}` is in no deployment's contract"),
            ));
        }
        let mut first: Option<(&str, &str)> = None;
        let mut differing: Vec<String> = Vec::new();
        for prepared in all {
            for file in &prepared.resolution.files {
                let Some((_, value)) = file.values.iter().find(|(name, _)| name == key) else {
                    continue;
                };
                match first {
                    None => first = Some((&prepared.settings.service, value.expose_secret())),
                    Some((first_service, first_value)) => {
                        if first_value != value.expose_secret() {
                            for service in [first_service, prepared.settings.service.as_str()] {
                                if !differing.iter().any(|s| s == service) {
                                    differing.push(service.to_string());
                                }
                            }
                        }
                    }
                }
            }
        }
        if !differing.is_empty() {
            let names: Vec<String> = differing.iter().map(|s| format!("`{s}`")).collect();
            return Err(Error::SharedKeyMismatch {
                key: key.clone(),
                services: names.join(" and "),
            });
        }
        reports.push(SharedKeyReport {
            key: key.clone(),
            services,
            identical: true,
            holders: None,
        });
    }
    Ok(reports)
}
