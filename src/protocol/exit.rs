//! The exit codes a pipeline branches on (`../shared/PROTOCOL.md`). A
//! result's `ok` is derived from its exit here (`Exit::is_ok`), nowhere else.

/// How a run ended, as its process exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Success, including nothing to change.
    Ok,
    /// A host failed (or, for `build-env`, the output could not be written).
    Failed,
    /// The request was rejected before any host was contacted.
    Rejected,
    /// A host is in an unknown state and needs a person.
    NeedsPerson,
    /// Differences found: `plan` would change something, `drift` found a
    /// difference, `lint` has findings.
    Differences,
}

impl Exit {
    /// The process's exit status.
    pub const fn code(self) -> i32 {
        match self {
            Exit::Ok => 0,
            Exit::Failed => 1,
            Exit::Rejected => 2,
            Exit::NeedsPerson => 3,
            Exit::Differences => 4,
        }
    }

    /// A result is `ok` exactly when its run exits 0.
    pub const fn is_ok(self) -> bool {
        matches!(self, Exit::Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::Exit;

    #[test]
    fn codes_are_the_protocols() {
        let all = [
            Exit::Ok,
            Exit::Failed,
            Exit::Rejected,
            Exit::NeedsPerson,
            Exit::Differences,
        ];
        assert_eq!(all.map(Exit::code), [0, 1, 2, 3, 4]);
        assert_eq!(all.map(Exit::is_ok), [true, false, false, false, false]);
    }
}
