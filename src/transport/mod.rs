//! The only code that talks to hosts: SSH sessions, the host program's steps
//! (`remote`), the host lock and its channel, units, health checks, the
//! audit line and installing the host program.

pub mod audit;
pub mod elf;
pub mod health;
pub mod lock;
pub mod provision;
pub mod remote;
pub mod ssh;
pub mod units;
