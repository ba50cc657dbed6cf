//! The JSON contract (`../shared/PROTOCOL.md`): what a request may say, what a
//! result says, the schemas of both, the error kinds and exit codes. Types
//! only: nothing here reads a file, the environment or the network.

pub mod canonical;
pub mod error;
pub mod exit;
pub mod intake;
pub mod report;
pub mod request;
pub mod schema;
pub mod text;
pub mod time;
