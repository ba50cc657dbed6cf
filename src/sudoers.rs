//! `hostenv sudoers`: the exact sudo rules a non-root deploy user needs for a
//! request, and nothing more. Every privileged step is a constant script with
//! arguments that follow from the request (remote.rs), so each rule names one
//! full command line; the only wildcard is a template's instance when the
//! request lets hostenv discover instances on the host.

use crate::remote;
use crate::settings::{is_template, Settings};
use crate::systemd;

/// The rules for `user`, one per line, with a comment header.
pub fn rules(settings: &Settings, lock_wait: std::time::Duration, user: &str) -> String {
    let target = &settings.target;
    let mut invocations = vec![
        remote::read(target),
        remote::stage(target),
        remote::switch(target),
        // 0: remove a first file; 1: the usual put-back; 2: an overlap
        // rotation's verifier, switched twice in one run.
        remote::restore(target, 0),
        remote::restore(target, 1),
        remote::restore(target, 2),
        remote::read_backups(target),
        remote::purge(target),
        remote::discard(target),
        crate::audit::invocation(&target.state_dir),
    ];
    for n in 1..=target.backups.max(1) {
        invocations.push(remote::restage(target, n));
    }
    for mode in [crate::lock::Mode::Exclusive, crate::lock::Mode::Shared] {
        invocations.push(crate::lock::invocation(
            &settings.service,
            settings.environment.as_deref(),
            mode,
            lock_wait,
        ));
    }
    let timeout = std::time::Duration::from_millis(settings.restart.timeout_ms);
    for unit in units(settings) {
        invocations.push(systemd::restart_invocation(&unit, timeout));
        invocations.push(systemd::reset_failed_invocation(&unit));
    }
    let mut out = format!(
        "# hostenv {}: sudo rules for `{user}` to deploy `{}` to `{}`.\n\
         # Each rule names one exact command; install with visudo -f /etc/sudoers.d/hostenv-{}.\n",
        env!("CARGO_PKG_VERSION"),
        settings.service,
        target.path,
        settings.service
    );
    for invocation in invocations {
        out.push_str(&format!(
            "{user} ALL=(root) NOPASSWD: {}\n",
            invocation.sudoers_command()
        ));
    }
    out
}

/// Every unit a deploy may restart: templates as their listed instances, and
/// as any instance where a host leaves them to be discovered.
fn units(settings: &Settings) -> Vec<String> {
    let mut units = Vec::new();
    for unit in &settings.restart.units {
        if !is_template(unit) {
            units.push(unit.clone());
            continue;
        }
        let (prefix, suffix) = unit.split_once("@.").expect("template has @.");
        for host in &settings.hosts {
            let names: Vec<String> = match &host.instances {
                Some(instances) => instances
                    .iter()
                    .map(|i| format!("{prefix}@{i}.{suffix}"))
                    .collect(),
                None => vec![format!("{prefix}@*.{suffix}")],
            };
            for name in names {
                if !units.contains(&name) {
                    units.push(name);
                }
            }
        }
    }
    units
}
