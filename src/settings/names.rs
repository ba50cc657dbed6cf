//! The grammar of the names a request holds.

/// True for names a process environment and systemd accept: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_valid_key_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
