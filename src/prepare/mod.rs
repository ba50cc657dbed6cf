//! Before any host: the service's `.env.example` contract, every key's value
//! resolved from literals, bound secrets and env files, and the checks that
//! tell a secret from a setting. Reads the agent's files and environment,
//! never the network. `prepare` is the first half of every action.

pub mod contract;
pub mod detect;
pub mod resolve;
pub mod rotation;
pub mod rules;

use crate::settings::secret::{EnvLookup, ExposeSecret};
use contract::Contract;
use resolve::Resolution;

use crate::protocol::error::{Error, ErrorKind, Result};
use crate::protocol::report::{
    wire_name, ContractReport, HostReport, HostStatus, KeyReport, RenderedReport, Report,
};
use crate::protocol::request::Deployment;
use crate::settings::catalog::Catalog;
use crate::settings::Settings;

/// A deployment checked, resolved and rendered: everything known before any host.
pub struct Prepared {
    pub settings: Settings,
    pub contract: Contract,
    pub resolution: Resolution,
}

impl Prepared {
    pub fn contract_report(&self) -> ContractReport {
        ContractReport {
            path: self.contract.path.clone(),
            keys: self.resolution.keys.clone(),
        }
    }

    /// The key problems as one error, when there are any.
    pub fn key_problems(&self) -> Option<Error> {
        key_problems(&self.resolution.problems(), "")
    }

    /// Per-host `check` entries.
    pub fn checked_hosts(&self) -> Vec<HostReport> {
        let path = self.settings.target.path.to_string();
        let rendered = self.resolution.files.iter().map(|file| {
            let keys = file.values.iter().map(|(key, _)| key.clone()).collect();
            let bytes = Some(file.text.expose_secret().len());
            (&file.host, keys, file.host_keys.clone(), bytes)
        });
        let unread = self.resolution.unread.iter().map(|names| {
            (
                &names.host,
                names.keys.clone(),
                names.host_keys.clone(),
                None,
            )
        });
        rendered
            .chain(unread)
            .map(|(host, keys, host_keys, bytes)| HostReport {
                rendered: Some(RenderedReport {
                    path: path.clone(),
                    keys,
                    host_keys,
                    bytes,
                }),
                ..HostReport::new(host, HostStatus::Checked)
            })
            .collect()
    }
}

/// Validates settings, loads the contract and resolves every key. Key problems
/// are not an error here: they are in `resolution.keys` for the caller to report.
pub fn prepare(
    deployment: &Deployment,
    at: &str,
    env: &dyn EnvLookup,
    catalog: &Catalog,
) -> Result<Prepared> {
    let settings = Settings::from_request(deployment, at, catalog)?;
    let contract = contract::load(&deployment.contract)?;
    for (index, key) in deployment.purge_backups_of.iter().enumerate() {
        if !contract.has(key) {
            return Err(Error::invalid(
                ErrorKind::InvalidSetting,
                format!("{at}/purgeBackupsOf/{index}"),
                format!("`{key}` is not in the contract `{}`", contract.path),
            ));
        }
    }
    let resolution = resolve::resolve(deployment, at, &contract, env, settings.target.systemd_min)?;
    Ok(Prepared {
        settings,
        contract,
        resolution,
    })
}

/// One error naming every key with a problem (`within`: a deployment's service, for Rotations).
pub fn key_problems(problems: &[&KeyReport], within: &str) -> Option<Error> {
    if problems.is_empty() {
        return None;
    }
    Some(Error::KeyProblems {
        problems: problems
            .iter()
            .map(|key| (key.name.clone(), key.host.clone(), wire_name(&key.status)))
            .collect(),
        within: within.to_string(),
    })
}

/// Prepares a Deploy request and puts what is known on the report; key
/// problems are the error. The first half of `check` and of `deploy`.
pub fn prepare_deploy(
    deployment: &Deployment,
    env: &dyn EnvLookup,
    catalog: &Catalog,
    report: &mut Report,
) -> Result<Prepared> {
    report.service = Some(deployment.service.clone());
    report.environment = deployment.environment.clone();
    let prepared = prepare(deployment, "", env, catalog)?;
    report.contract = Some(prepared.contract_report());
    match prepared.key_problems() {
        Some(error) => Err(error),
        None => Ok(prepared),
    }
}
