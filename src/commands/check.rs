//! `hostenv check`: validate, resolve and render in memory, touching no host;
//! and reject what a run would reject before its first connection.

use crate::deploy::RunOptions;
use crate::prepare::rotation::prepare_rotation;
use crate::prepare::{prepare_deploy, Prepared};
use crate::protocol::error::Result;
use crate::protocol::report::{DeploymentReport, Report, Summary};
use crate::protocol::request::{Deployment, Rotation};
use crate::settings::catalog::Catalog;
use crate::settings::rollout::Rollout;
use crate::settings::secret::EnvLookup;
use crate::settings::ssh;
use crate::settings::RunSettings;

/// What a run would reject after preparing and before its first connection:
/// its run settings (`RunSettings::derive`), or with `ssh_unbound` only which
/// SSH sources are set, and the rollout.
fn connection_settings(
    prepared: &Prepared,
    deployment: &Deployment,
    at: &str,
    (env, catalog): (&dyn EnvLookup, &Catalog),
    options: &RunOptions,
) -> Result<()> {
    if options.ssh_unbound {
        ssh::check_settings(deployment.ssh.as_ref(), at)?;
        return Rollout::from_request(deployment, at, prepared.settings.hosts.len()).map(|_| ());
    }
    let settings = Some(prepared.settings.clone());
    RunSettings::derive(deployment, at, settings, catalog, env).map(|_| ())
}

pub fn check_deploy(
    deployment: &Deployment,
    env: &dyn EnvLookup,
    catalog: &Catalog,
    options: &RunOptions,
    report: &mut Report,
) -> Result<()> {
    let prepared = prepare_deploy(deployment, env, catalog, report)?;
    connection_settings(&prepared, deployment, "", (env, catalog), options)?;
    report.hosts = prepared.checked_hosts();
    report.summary = Summary::of(&report.hosts);
    Ok(())
}

pub fn check_rotation(
    rotation: &Rotation,
    env: &dyn EnvLookup,
    catalog: &Catalog,
    options: &RunOptions,
    report: &mut Report,
) -> Result<()> {
    let prepared = prepare_rotation(rotation, env, catalog, report)?;
    for (index, (deployment, one)) in rotation.deployments.iter().zip(&prepared).enumerate() {
        connection_settings(
            one,
            deployment,
            &format!("/deployments/{index}"),
            (env, catalog),
            options,
        )?;
    }
    let mut deployments = Vec::new();
    let mut summary = Summary::default();
    for prepared in &prepared {
        let hosts = prepared.checked_hosts();
        let own = Summary::of(&hosts);
        summary.add(&own);
        deployments.push(DeploymentReport {
            service: prepared.settings.service.to_string(),
            contract: prepared.contract_report(),
            hosts,
            summary: own,
        });
    }
    report.deployments = Some(deployments);
    report.summary = summary;
    Ok(())
}
