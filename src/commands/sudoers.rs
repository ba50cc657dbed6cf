//! `hostenv sudoers`: the exact sudo rules a non-root deploy user needs for a
//! request, and nothing more. A run's privileged steps all go as requests on
//! the lock's channel (`host/lock.rs`), where the host program checks each
//! against root's configuration, so the rules name only the lock step: one
//! exact command line for each mode, every argument a space-free token the
//! program checks itself, so no other split of the text can meet it. There
//! is no wildcard and no regular expression: the rules read the same on
//! every sudo from 1.8 on.

use crate::host::PROGRAM;
use crate::settings::Settings;
use crate::transport::lock;

/// The rules for `user`, one per line, with a comment header.
pub fn rules(settings: &Settings, user: &str) -> String {
    let service = &settings.service;
    let target = &settings.target;
    let mut out = format!(
        "# hostenv {}: sudo rules for `{user}` to deploy `{service}` to `{}`.\n\
         # They run {PROGRAM}, which takes its paths, owner, mode, units and\n\
         # instances from /etc/hostenv/{service}.conf: install both first, as root,\n\
         # with `hostenv host-install --request REQUEST`. Every step of a run goes\n\
         # through the lock it takes, checked against that file.\n\
         # Each rule names one exact command; install with visudo -f /etc/sudoers.d/hostenv-{service}.\n",
        env!("CARGO_PKG_VERSION"),
        target.path,
    );
    for mode in [lock::Mode::Exclusive, lock::Mode::Shared] {
        let invocation = lock::invocation(service, settings.environment.as_ref(), mode);
        out.push_str(&format!(
            "{user} ALL=(root) NOPASSWD: {}\n",
            invocation.sudoers_command()
        ));
    }
    out
}
