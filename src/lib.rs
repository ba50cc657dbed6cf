//! hostenv: deploy-time secrets onto servers. A JSON request in, one JSON result out.
//!
//! The layers, each using only those before it (`tests/integration/layers.rs`
//! checks it):
//!
//! 1. `protocol`: request, result, schemas, error kinds and exit codes.
//! 2. `settings`: every setting a run derives from its request and the catalog.
//! 3. `render`: the two file grammars, each writer with its reader.
//! 4. `prepare`: the contract, every key resolved, secrets told from settings.
//! 5. `transport`: SSH, the host program's steps, lock, units, health, audit.
//! 6. `deploy`: the order of a deploy's, rollback's or rotation's steps.
//! 7. `commands`: check, build-env, lint, sudoers, JUnit.
//! 8. `cli`: arguments in, one result document out.
//!
//! `host` is the program on each host (`hostenv-host`) and uses nothing else
//! of the crate; `fault` and `fuzzing` serve tests.

mod cli;
mod commands;
mod deploy;
mod prepare;
mod protocol;
pub mod render;
mod settings;
mod transport;

#[cfg(feature = "fault-injection")]
mod fault;
pub mod fuzzing;
pub use hostenv_host as host;

// What the binaries, tests, examples and fuzz targets use; nothing else is
// public, so the compiler sees what nothing uses.
pub use cli::{main_with_args, Outcome};
pub use prepare::prepare;
pub use protocol::exit::Exit;
pub use protocol::intake::parse_request;
pub use protocol::request::{Deployment, Request};
pub use protocol::time::rfc3339;
pub use settings::catalog::Catalog;
pub use settings::secret::{ExposeSecret, ProcessEnv};
