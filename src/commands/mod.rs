//! The actions that are not a deploy: `check`, `build-env`, `lint` and
//! `sudoers`, and the JUnit file any action can write.

pub mod build_env;
pub mod check;
pub mod junit;
pub mod lint;
pub mod sudoers;
