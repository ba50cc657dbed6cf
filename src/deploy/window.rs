//! A Rotation's one window over all its deployments.
//!
//! Every host of every deployment is already connected, locked and assessed
//! (mod.rs). Then: stage every new file; only then switch, restart and verify,
//! deployment by deployment in request order, so the side that verifies a
//! shared secret can go first; read back every host's file and confirm the
//! shared keys agree. If anything fails, no host puts itself back on its own:
//! every host already switched, in every deployment (the one that failed
//! included), gets back the file it had before the run and is restarted and
//! verified again, deployment by deployment with the verifying side first, so
//! that each check runs against hosts already back; a host whose check failed
//! before every host was back is checked once more at the end. Only after a
//! success are old values purged from backups.
//!
//! With `overlap`, a shared key moves in three health-checked phases: the
//! verifiers get the new value and keep the old one as `<KEY>_PREVIOUS`, then
//! the presenters switch, then the verifiers drop `<KEY>_PREVIOUS`.

use std::collections::BTreeMap;
use std::ops::Range;

use super::host::HostRun;
use super::{in_parallel, in_parallel_keeping_locks, shared, Context};
use crate::prepare::rotation::{overlap_verifiers, previous_name};
use crate::prepare::Prepared;
use crate::protocol::error::{ErrorKind, HostError, Result};
use crate::protocol::report::{HostStatus, SharedKeyReport};
use crate::protocol::request::Rotation;
use crate::render::systemd as grammar;
use crate::settings::secret::{ExposeSecret, SecretString};

/// The keys rotated in three phases, and which deployments verify them.
pub(super) struct Overlap {
    keys: Vec<String>,
    /// Per deployment: whether it verifies (accepts `<KEY>_PREVIOUS`).
    verifiers: Vec<bool>,
}

impl Overlap {
    /// The overlap keys and their verifiers, from a request `check` accepted.
    pub fn from_request(rotation: &Rotation, contexts: &[Context]) -> Result<Overlap> {
        // A rollback puts whole files back; there is nothing to overlap.
        let prepared: Option<Vec<&Prepared>> =
            contexts.iter().map(|c| c.prepared.as_ref()).collect();
        match prepared {
            Some(all) if !rotation.overlap.is_empty() => Ok(Overlap {
                keys: rotation.overlap.clone(),
                verifiers: overlap_verifiers(rotation, &all)?,
            }),
            _ => Ok(Overlap {
                keys: Vec::new(),
                verifiers: vec![false; contexts.len()],
            }),
        }
    }

    /// The verifiers' interim files (the new values plus `<KEY>_PREVIOUS`
    /// holding the old value the verifier hosts all hold now). None per run
    /// where there is no interim step; empty when no overlap key changes.
    /// An error names the runs that disagree.
    fn interim_files(
        &self,
        runs: &[HostRun],
    ) -> std::result::Result<Vec<Option<SecretString>>, HostError> {
        let mut old_values: Vec<(String, SecretString)> = Vec::new();
        for key in &self.keys {
            // Grouped by the old value, compared in memory and never shown.
            let mut holders: BTreeMap<Option<&str>, Vec<String>> = BTreeMap::new();
            let mut olds: BTreeMap<Option<&str>, &SecretString> = BTreeMap::new();
            let mut rotates = false;
            for run in runs.iter().filter(|run| self.verifies(run)) {
                let current = run.assessment().ok_or_else(|| {
                    let message = format!("`{}`: not assessed before the window", run.name());
                    HostError::new(ErrorKind::Internal, message)
                })?;
                let old = current.current_values.get(key);
                let text = old.map(|v| v.expose_secret());
                rotates |= text != run.value_of(key);
                holders.entry(text).or_default().push(run.name());
                if let Some(old) = old {
                    olds.insert(text, old);
                }
            }
            if !rotates {
                continue;
            }
            match holders.into_iter().collect::<Vec<_>>().as_slice() {
                [(Some(old), _)] => old_values.push((key.clone(), olds[&Some(*old)].clone())),
                groups => {
                    let listed: Vec<String> = groups
                        .iter()
                        .map(|(value, names)| {
                            let what = if value.is_some() {
                                "one value"
                            } else {
                                "no value"
                            };
                            format!("{what} on `{}`", names.join("`, `"))
                        })
                        .collect();
                    return Err(HostError::new(
                        ErrorKind::OverlapUnavailable,
                        format!(
                            "the verifier hosts must all hold one old value of `{key}` to keep it as `{}`; found {}",
                            previous_name(key),
                            listed.join("; ")
                        ),
                    ));
                }
            }
        }
        if old_values.is_empty() {
            return Ok(Vec::new());
        }
        runs.iter()
            .map(|run| {
                if !self.verifies(run) {
                    return None;
                }
                let contract = &run.context().prepared.as_ref()?.contract;
                let mut values: Vec<(String, SecretString)> = run.file()?.values.clone();
                for (key, old) in &old_values {
                    values.push((previous_name(key), old.clone()));
                }
                values.sort_by_key(|(k, _)| contract.position(k));
                Some(interim_file(
                    &run.name(),
                    &values,
                    run.context().settings.target.systemd_min,
                ))
            })
            .map(Option::transpose)
            .collect()
    }

    /// The order deployments go back in after a failure: the verifiers (the
    /// deployments that accept `<KEY>_PREVIOUS`) first, then the rest, each
    /// group in request order. Without overlap, request order: the side that
    /// verifies a shared secret is listed first (docs/rotation.md).
    fn put_back_order(&self, deployments: usize) -> Vec<usize> {
        let verifiers = (0..deployments).filter(|d| self.verifiers[*d]);
        let presenters = (0..deployments).filter(|d| !self.verifiers[*d]);
        verifiers.chain(presenters).collect()
    }

    fn verifies(&self, run: &HostRun) -> bool {
        self.verifiers[run.context().index]
    }
}

/// An interim file goes through the checks every rendered file does: each
/// `KEY=VALUE` fits a process environment, and the bytes read back exactly.
fn interim_file(
    name: &str,
    values: &[(String, SecretString)],
    min: Option<u32>,
) -> std::result::Result<SecretString, HostError> {
    for (key, value) in values {
        if let Err(unfit) = grammar::check_for(key, value.expose_secret(), min) {
            return Err(HostError::new(
                ErrorKind::OverlapUnavailable,
                format!(
                    "`{name}`: the interim file cannot hold `{key}`: {}",
                    unfit.describe()
                ),
            ));
        }
    }
    crate::prepare::resolve::render_checked(values, min).map_err(|error| {
        HostError::new(
            ErrorKind::Internal,
            format!("`{name}`: the interim file: {error}"),
        )
    })
}

impl Overlap {
    /// The switching steps in order: (deployment, whether its hosts were
    /// switched before and get their final file now).
    fn phases(&self, deployments: usize, overlapping: bool) -> Vec<(usize, bool)> {
        if !overlapping {
            return (0..deployments).map(|d| (d, false)).collect();
        }
        let verifiers = (0..deployments).filter(|d| self.verifiers[*d]);
        let presenters = (0..deployments).filter(|d| !self.verifiers[*d]);
        verifiers
            .clone()
            .map(|d| (d, false))
            .chain(presenters.map(|d| (d, false)))
            .chain(verifiers.map(|d| (d, true)))
            .collect()
    }
}

/// Where each deployment's runs are (runs are in deployment order).
fn ranges(contexts: &[Context]) -> Vec<Range<usize>> {
    let mut start = 0;
    contexts
        .iter()
        .map(|context| {
            let end = start + context.settings.hosts.len();
            let range = start..end;
            start = end;
            range
        })
        .collect()
}

/// `deploy` or `rollback` of a Rotation. Returns what the read-back found
/// about the shared keys, when the window got that far.
pub(super) fn apply(
    runs: &mut [HostRun],
    contexts: &[Context],
    overlap: &Overlap,
    shared_keys: &[String],
    run_key: &shared::RunKey,
    parallel: usize,
) -> Option<Vec<SharedKeyReport>> {
    let result = switch_everything(runs, contexts, overlap, shared_keys, run_key, parallel);
    let reports = match result {
        Ok(reports) => {
            in_parallel(runs, parallel, HostRun::purge_after_success);
            reports
        }
        Err(Stop::BeforeWriting(reason)) => {
            for run in runs.iter_mut() {
                run.discard_staged();
                if !run.decided() {
                    run.skip(&reason);
                }
            }
            None
        }
        Err(Stop::PutBack(cause, reports)) => {
            // Deployment by deployment, the verifying side first, so each
            // host's checks run against hosts already back; then a host whose
            // checks failed before every host was back is checked again.
            let ranges = ranges(contexts);
            for deployment in overlap.put_back_order(contexts.len()) {
                let range = ranges[deployment].clone();
                in_parallel_keeping_locks(runs, range, parallel, |run| put_back(run, &cause));
            }
            in_parallel(runs, parallel, HostRun::recheck);
            reports
        }
    };
    // The window is over: what each host holds now is its outcome.
    runs.iter_mut().for_each(HostRun::settle);
    in_parallel(runs, parallel, HostRun::audit);
    reports
}

/// Why a window stopped: before any switch (nothing to undo), or after.
enum Stop {
    BeforeWriting(String),
    PutBack(String, Option<Vec<SharedKeyReport>>),
}

fn switch_everything(
    runs: &mut [HostRun],
    contexts: &[Context],
    overlap: &Overlap,
    shared_keys: &[String],
    run_key: &shared::RunKey,
    parallel: usize,
) -> std::result::Result<Option<Vec<SharedKeyReport>>, Stop> {
    if let Some(cause) = first_failure(runs) {
        return Err(Stop::BeforeWriting(format!(
            "not attempted: {cause} before anything was written, and a rotation changes every host or none"
        )));
    }
    let interim = match overlap.interim_files(runs) {
        Ok(files) => files,
        Err(error) => {
            for run in runs.iter_mut().filter(|run| overlap.verifies(run)) {
                run.hold(Err((HostStatus::Failed, error.clone())));
            }
            return Err(Stop::BeforeWriting(format!(
                "not attempted: {}",
                error.message
            )));
        }
    };

    // Every host that changes stages what it gets first.
    let mut slots: Vec<(&mut HostRun, Option<&SecretString>)> = runs
        .iter_mut()
        .enumerate()
        .map(|(index, run)| (run, interim.get(index).and_then(Option::as_ref)))
        .collect();
    in_parallel(&mut slots, parallel, |(run, content)| {
        let staged = run.open().map(|mut host| host.stage_next(*content));
        if let Some(Err(failure)) = staged {
            run.hold(Err(failure));
        }
    });
    drop(slots);
    if let Some(run) = runs.iter().find(|run| run.decided()) {
        return Err(Stop::BeforeWriting(format!(
            "not attempted: staging failed on `{}`; nothing was switched",
            run.name()
        )));
    }

    let ranges = ranges(contexts);
    for (deployment, finally) in overlap.phases(contexts.len(), !interim.is_empty()) {
        let range = ranges[deployment].clone();
        if finally {
            in_parallel_keeping_locks(runs, range.clone(), parallel, |run| {
                let Some(file) = run.file().filter(|_| run.switched()) else {
                    return;
                };
                let staged = run.open().map(|mut host| host.stage_next(Some(&file.text)));
                if let Some(Err(failure)) = staged {
                    run.hold(Err(failure));
                }
            });
        }
        if let Some(cause) = first_failure(&runs[range.clone()]) {
            return Err(Stop::PutBack(cause, None));
        }
        let rollout = &contexts[deployment].rollout;
        for batch in rollout.batches(range.len()) {
            let batch = range.start + batch.start..range.start + batch.end;
            in_parallel_keeping_locks(runs, batch.clone(), rollout.parallel, |run| {
                if finally && !run.switched() {
                    return;
                }
                if let Some(outcome) = run.open().map(|mut host| host.switch_and_verify()) {
                    run.hold(outcome);
                }
            });
            if let Some(cause) = first_failure(&runs[batch]) {
                return Err(Stop::PutBack(cause, None));
            }
        }
    }

    if shared_keys.is_empty() {
        return Ok(None);
    }
    let holdings = shared::read_back(runs, shared_keys, parallel);
    let reports = shared::reports(shared_keys, runs, &holdings, run_key);
    if let Some(report) = reports.iter().find(|r| !r.identical) {
        let cause = format!(
            "the read-back found the hosts disagreeing on shared key `{}`",
            report.key
        );
        return Err(Stop::PutBack(cause, Some(reports)));
    }
    Ok(Some(reports))
}

/// Why the window stops, naming the first host that failed.
fn first_failure(runs: &[HostRun]) -> Option<String> {
    runs.iter()
        .find(|run| run.failed())
        .map(|run| format!("`{}` failed ({})", run.name(), run.error_kind()))
}

/// After the window failed: the host goes back to what it had before the run.
fn put_back(run: &mut HostRun, cause: &str) {
    run.discard_staged();
    let (beyond_reach, own_failure) = match run.result() {
        Some(Err((status, error))) => (
            matches!(status, HostStatus::Unknown | HostStatus::RollbackFailed),
            // A host that failed between its switches keeps its own error.
            run.failed().then(|| error.clone()),
        ),
        _ => (false, None),
    };
    if run.switched() && !beyond_reach {
        let error = own_failure.unwrap_or_else(|| {
            HostError::new(
                ErrorKind::RotationAborted,
                format!("`{}`: put back because {cause}", run.name()),
            )
        });
        if let Some(outcome) = run.open().map(|mut host| host.put_back(error)) {
            run.hold(outcome);
        }
        return;
    }
    if !run.decided() {
        if run.has_work() {
            run.skip(&format!(
                "not attempted: the rotation stopped because {cause}"
            ));
        } else {
            run.hold(Ok(HostStatus::Unchanged));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlap(verifiers: &[bool]) -> Overlap {
        Overlap {
            keys: vec!["VOXCORE_SECRET".into()],
            verifiers: verifiers.to_vec(),
        }
    }

    #[test]
    fn the_verifying_side_goes_back_first() {
        // Request order: fleet (verifies), dialler (presents).
        assert_eq!(overlap(&[true, false]).put_back_order(2), [0, 1]);
        // Listed the other way round, an overlap still puts the verifier back first.
        assert_eq!(overlap(&[false, true]).put_back_order(2), [1, 0]);
        assert_eq!(overlap(&[false, true, false]).put_back_order(3), [1, 0, 2]);
        // Without overlap nothing says which side verifies: request order.
        assert_eq!(overlap(&[false, false]).put_back_order(2), [0, 1]);
    }

    #[test]
    fn overlap_phases_switch_verifiers_around_the_presenters() {
        let two = overlap(&[true, false]);
        assert_eq!(two.phases(2, false), [(0, false), (1, false)]);
        assert_eq!(two.phases(2, true), [(0, false), (1, false), (0, true)]);
    }
}
