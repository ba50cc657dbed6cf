//! hostenv: deploy-time secrets onto servers. A JSON request in, one JSON result out.
//!
//! Request flow: `intake` (bytes → typed request) → `settings` (catalog merge,
//! name checks) → `contract` + `resolve` (every key gets a value) → `render`
//! (file bytes, read back before use) → the action (`check`, `build_env`,
//! `deploy`). `lint` checks a service repository instead of a request.

pub mod audit;
pub mod build_env;
pub mod catalog;
pub mod certificate;
pub mod check;
pub mod cli;
pub mod contract;
pub mod deploy;
pub mod detect;
pub mod digest;
pub mod error;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod fuzzing;
pub mod health;
pub mod host;
pub mod intake;
pub mod junit;
pub mod lint;
pub mod lock;
pub mod provision;
pub mod remote;
pub mod render;
pub mod report;
pub mod request;
pub mod resolve;
pub mod schema;
pub mod secret;
pub mod settings;
pub mod ssh;
pub mod sudoers;
pub mod systemd;
