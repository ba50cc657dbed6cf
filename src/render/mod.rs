//! Writing and reading back env files. Each grammar has a writer and an
//! independent reader; nothing rendered is used before the reader gives back
//! exactly the values that went in.

pub mod dotenv;
pub mod systemd;

/// One `KEY=value` read from a file, with the line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub key: String,
    pub value: String,
    pub line: usize,
}
