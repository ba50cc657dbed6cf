//! `hostenv sudoers`: the exact sudo rules a non-root deploy user needs for a
//! request, and nothing more. Every privileged step is one run of the host
//! program with space-free tokens it checks itself (remote.rs), so each rule
//! names one whole command line and no other split of its text can meet it.
//! There is no wildcard: a template's instances are listed when the request
//! lists them, and otherwise matched by a regular expression whose character
//! class admits no space (sudo 1.9.10 or later).

use crate::host::PROGRAM;
use crate::settings::names::Unit;
use crate::settings::Settings;
use crate::transport::remote;
use crate::transport::units;

/// The rules for `user`, one per line, with a comment header.
pub fn rules(settings: &Settings, user: &str) -> String {
    let service = &settings.service;
    let target = &settings.target;
    let mut invocations = vec![
        remote::read(service),
        remote::stage(service),
        remote::switch(service),
        // 0: remove a first file; 1: the usual put-back; 2: an overlap
        // rotation's verifier, switched twice in one run.
        remote::restore(service, 0),
        remote::restore(service, 1),
        remote::restore(service, 2),
        remote::read_backups(service),
        remote::purge(service),
        remote::discard(service),
        remote::audit(service),
    ];
    for n in 1..=target.backups.max(1) {
        invocations.push(remote::restage(service, n));
    }
    for mode in [
        crate::transport::lock::Mode::Exclusive,
        crate::transport::lock::Mode::Shared,
    ] {
        invocations.push(crate::transport::lock::invocation(
            &settings.service,
            settings.environment.as_ref(),
            mode,
        ));
    }
    let (named, discovered) = units(settings);
    for unit in &named {
        invocations.push(units::restart_invocation(service, unit));
        invocations.push(units::reset_failed_invocation(service, unit));
    }
    let mut patterns = Vec::new();
    for (prefix, suffix) in &discovered {
        for step in ["restart", "reset-failed"] {
            patterns.push(format!(
                "{PROGRAM} ^{step} {service} {prefix}@{INSTANCE_CLASS}[.]{suffix}$"
            ));
        }
    }
    let mut out = format!(
        "# hostenv {}: sudo rules for `{user}` to deploy `{service}` to `{}`.\n\
         # They run {PROGRAM}, which takes its paths, owner, mode and units from\n\
         # /etc/hostenv/{service}.conf: install both first, as root, with\n\
         # `hostenv host-install --request REQUEST`.\n\
         # Each rule names one exact command; install with visudo -f /etc/sudoers.d/hostenv-{service}.\n",
        env!("CARGO_PKG_VERSION"),
        target.path,
    );
    for invocation in invocations {
        out.push_str(&format!(
            "{user} ALL=(root) NOPASSWD: {}\n",
            invocation.sudoers_command()
        ));
    }
    if !patterns.is_empty() {
        out.push_str(
            "# The instances of a template are discovered on each host: these rules match them\n\
             # with a regular expression (sudo 1.9.10 or later); list `instances` per host for exact rules.\n",
        );
        for pattern in patterns {
            out.push_str(&format!("{user} ALL=(root) NOPASSWD: {pattern}\n"));
        }
    }
    out
}

/// The characters an instance may have in a regular-expression rule: a unit
/// word without `:` (which sudoers would read as syntax) and without a space.
const INSTANCE_CLASS: &str = "[A-Za-z0-9_][A-Za-z0-9_.-]*";

/// Every unit a deploy may restart, by name (plain units and the instances
/// hosts list), and the templates (prefix, suffix) some host leaves to be discovered.
fn units(settings: &Settings) -> (Vec<Unit>, Vec<(String, String)>) {
    let mut named: Vec<Unit> = Vec::new();
    let mut discovered: Vec<(String, String)> = Vec::new();
    let mut add = |name: Unit| {
        if !named.contains(&name) {
            named.push(name);
        }
    };
    for unit in &settings.restart.units {
        let Some((prefix, suffix)) = unit.template_parts() else {
            add(unit.clone());
            continue;
        };
        for host in &settings.hosts {
            match &host.instances {
                Some(instances) => {
                    for instance in instances.iter().filter_map(|i| unit.instance(i)) {
                        add(instance);
                    }
                }
                None => {
                    let template = (prefix.to_string(), suffix.to_string());
                    if !discovered.contains(&template) {
                        discovered.push(template);
                    }
                }
            }
        }
    }
    (named, discovered)
}
