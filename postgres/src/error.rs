//! Driver errors as annals errors: every failure is classified once, here,
//! as passing (retryable) or not.

use annals_core::Error;

/// Wraps a driver error with what the store was doing: a passing failure
/// (a lost or refused connection, a timeout, a serialization failure or
/// deadlock, a server shutting down or out of resources) is
/// [`Error::transient`]; anything else (a constraint, a value too long, an
/// invalid encoding, a bug) is [`Error::backend`], which retrying cannot
/// fix.
pub(crate) fn db_error(context: &'static str, e: sqlx::Error) -> Error {
    if is_transient(&e) {
        Error::transient(context, e)
    } else {
        Error::backend(context, e)
    }
}

/// [`db_error`] as a closure, for `map_err`.
pub(crate) fn db(context: &'static str) -> impl Fn(sqlx::Error) -> Error {
    move |e| db_error(context, e)
}

/// The UUID a unique violation names in its detail
/// (`Key (event_id)=(0192...) already exists.`).
pub(crate) fn duplicate_uuid(e: &dyn sqlx::error::DatabaseError) -> Option<uuid::Uuid> {
    e.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        .and_then(|pg| pg.detail())
        .and_then(|d| d.split("=(").nth(1))
        .and_then(|rest| rest.split(')').next())
        // `(tenant_id, event_id)=(clinic-7, 0192...)`: a tenant id holds
        // no comma
        .and_then(|values| values.rsplit(", ").next())
        .and_then(|id| uuid::Uuid::parse_str(id).ok())
}

pub(crate) fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| transient_sqlstate(&code)),
        _ => false,
    }
}

/// Whether the database refused a value, which writing again cannot fix:
/// SQLSTATE class 22 (data exception: NUL in text, a malformed value, a
/// number out of range), class 23 (integrity constraint violation) and
/// class 54 (program limit exceeded: an index row too long). The one rule
/// behind every permanent database failure in annals: the saga store turns
/// these into `SagaError::Refused` and the knowledge base into
/// `KnowledgeError::Refused` (the event is parked), while [`is_transient`]
/// failures count towards the breaker and are never parked.
pub(crate) fn is_refused_value(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| refused_sqlstate(&code))
}

fn refused_sqlstate(code: &str) -> bool {
    code.starts_with("22") || code.starts_with("23") || code.starts_with("54")
}

/// SQLSTATE codes of failures that pass: class 08 (connection exception),
/// class 53 (insufficient resources), serialization failure, deadlock,
/// lock not available, statement timeout or cancel, and the server
/// shutting down or starting up (class 57P).
fn transient_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57P")
        || matches!(code, "40001" | "40P01" | "55P03" | "57014")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_failures_pass_and_bad_values_do_not() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(db_error("x", sqlx::Error::Io(refused)).is_retryable());
        assert!(db_error("x", sqlx::Error::PoolTimedOut).is_retryable());
        assert!(!db_error("x", sqlx::Error::PoolClosed).is_retryable());
        assert!(!db_error("x", sqlx::Error::RowNotFound).is_retryable());
        for code in ["08006", "53300", "57P01", "40001", "40P01"] {
            assert!(transient_sqlstate(code), "{code}");
        }
        for code in ["23505", "22021", "54000", "42P01", "22P02"] {
            assert!(!transient_sqlstate(code), "{code}");
        }
        // refused values: NUL in text, bad encoding, a malformed value, a
        // unique or check violation, an index row too long
        for code in ["22P05", "22021", "22P02", "23505", "23514", "54000"] {
            assert!(refused_sqlstate(code), "{code}");
            assert!(!transient_sqlstate(code), "{code}");
        }
        // neither: a missing table is the deployment's problem, not the
        // value's (it stays a backend error, retried behind the breaker)
        for code in ["42P01", "08006", "40001"] {
            assert!(!refused_sqlstate(code), "{code}");
        }
    }
}
