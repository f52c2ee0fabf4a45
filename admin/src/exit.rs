//! What the admin commands' exit codes mean.

/// The exit code of an admin command, for scripts.
///
/// | code | meaning |
/// |------|---------|
/// | 0 | done |
/// | 1 | the operation failed (a store error, a replay that failed again, a projection owned elsewhere) |
/// | 2 | usage error (unknown command or flag, a missing argument, an invalid value) |
/// | 3 | what was named does not exist (a projection not registered, a dead letter, a saga or a stream) |
/// | 4 | a check found a problem (`status`: a stale or failed projection, or a stale horizon; `schemas check`: a changed schema; `migrate status`: pending migrations) |
///
/// ```
/// use annals::admin::Exit;
/// assert_eq!(Exit::Usage.code(), 2);
/// let _: std::process::ExitCode = Exit::Ok.into();
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Exit {
    /// Done.
    Ok = 0,
    /// The operation failed.
    Failed = 1,
    /// The command line is wrong.
    Usage = 2,
    /// What was named does not exist.
    NotFound = 3,
    /// A check found a problem.
    Unhealthy = 4,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        std::process::ExitCode::from(exit.code())
    }
}
