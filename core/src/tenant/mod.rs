//! Tenants: every stream, event and snapshot belongs to one.
//!
//! A store handle is scoped to one tenant ([`TenantId::DEFAULT_NAME`] unless the
//! application asks for another): it reads and writes only that tenant's
//! rows, so stream names may repeat across tenants and no call through the
//! handle can see another tenant's data. On Postgres every statement names
//! its tenant, and row-level security keeps every other query to the
//! tenant its transaction sets (see `annals::postgres::tenancy`).
//!
//! ```
//! use annals::{EventStoreExt, ExpectedVersion, InMemoryEventStore, Metadata};
//!
//! #[derive(Debug, Clone, PartialEq, annals::Event)]
//! enum LeadEvent { Created(String) }
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let store = InMemoryEventStore::new();
//! let north = store.tenant("clinic-north")?;
//! let south = store.tenant("clinic-south")?;
//! north.append_events("lead-1", ExpectedVersion::NoStream, &[LeadEvent::Created("Ana".into())], &Metadata::new()).await?;
//! // the same stream name, another tenant: a stream of its own
//! south.append_events("lead-1", ExpectedVersion::NoStream, &[LeadEvent::Created("Bo".into())], &Metadata::new()).await?;
//! assert_eq!(north.read_stream_as::<LeadEvent>("lead-1", ..).await?[0].payload, LeadEvent::Created("Ana".into()));
//! assert!(store.read_stream_as::<LeadEvent>("lead-1", ..).await?.is_empty()); // the default tenant has none
//!
//! let e = store.tenant("clinic*").unwrap_err();
//! assert!(e.to_string().starts_with("invalid tenant"));
//! # Ok::<(), annals::Error>(())
//! # }).unwrap();
//! ```

use std::fmt;
use std::sync::Arc;

use crate::error::InvalidInput;

mod router;

pub use router::{TenantRouter, TenantRouterBuilder, TenantServer};

/// The longest tenant id, in bytes.
pub const MAX_TENANT_BYTES: usize = 128;

/// The id of a tenant: 1 to [`MAX_TENANT_BYTES`] ASCII letters, digits,
/// `-`, `_`, `.` or `:`. The limits keep a tenant id safe as a metrics
/// label, in a Postgres setting and in a file name; `*` is refused because
/// Postgres connections of annals use it for "every tenant".
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TenantId(Arc<str>);

impl TenantId {
    /// The tenant of applications that have one tenant only: `default`.
    pub const DEFAULT_NAME: &'static str = "default";

    /// Checks and makes a tenant id.
    pub fn new(id: &str) -> Result<Self, InvalidInput> {
        check_tenant(id)?;
        Ok(TenantId(Arc::from(id)))
    }

    /// The default tenant ([`DEFAULT_NAME`](Self::DEFAULT_NAME)).
    pub fn default_tenant() -> Self {
        TenantId(Arc::from(Self::DEFAULT_NAME))
    }

    /// The id of a handle on every tenant (see
    /// [`EventStoreExt::every_tenant`](crate::EventStoreExt::every_tenant)),
    /// which no tenant can have: [`new`](Self::new) refuses it.
    pub const EVERY_NAME: &'static str = "*";

    /// Every tenant: a handle scoped to it reads every tenant's log (each
    /// envelope with its own tenant), and nothing else.
    pub fn every() -> Self {
        TenantId(Arc::from(Self::EVERY_NAME))
    }

    /// Whether this is [`every`](Self::every) tenant.
    pub fn is_every(&self) -> bool {
        &*self.0 == Self::EVERY_NAME
    }

    /// Refuses what needs one tenant (`operation`: an append, a stream
    /// read, a snapshot) on an [`every`](Self::every)-tenant handle.
    pub fn require_one(&self, operation: &str) -> Result<(), InvalidInput> {
        if self.is_every() {
            return Err(InvalidInput::new(
                "tenant",
                format!("`*` (every tenant) reads the log only; {operation} needs one tenant"),
            ));
        }
        Ok(())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TenantId {
    fn default() -> Self {
        Self::default_tenant()
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for TenantId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Each tenant's state of an in-memory store, shared by all the store's
/// handles (clones and [`in_tenant`](crate::EventStore::in_tenant) scopes).
#[derive(Debug)]
pub(crate) struct PerTenant<T> {
    map: Arc<std::sync::Mutex<std::collections::HashMap<TenantId, Arc<std::sync::Mutex<T>>>>>,
}

impl<T> Clone for PerTenant<T> {
    fn clone(&self) -> Self {
        PerTenant {
            map: self.map.clone(),
        }
    }
}

impl<T: Default> PerTenant<T> {
    /// No tenant yet.
    pub(crate) fn new() -> Self {
        PerTenant {
            map: Arc::default(),
        }
    }

    /// `tenant`'s state, created empty on first use.
    pub(crate) fn of(&self, tenant: &TenantId) -> Arc<std::sync::Mutex<T>> {
        // a panic while holding the map leaves it whole: one insert
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(tenant.clone()).or_default().clone()
    }
}

/// Checks a tenant id (see [`TenantId`]).
pub fn check_tenant(id: &str) -> Result<(), InvalidInput> {
    if id.is_empty() {
        return Err(InvalidInput::new("tenant", "must not be empty"));
    }
    if id.len() > MAX_TENANT_BYTES {
        return Err(InvalidInput::new(
            "tenant",
            format!(
                "is {} bytes long, more than the limit of {MAX_TENANT_BYTES} bytes",
                id.len()
            ),
        ));
    }
    if let Some(at) = id
        .bytes()
        .position(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':')))
    {
        return Err(InvalidInput::new(
            "tenant",
            format!(
                "has a character other than ASCII letters, digits, '-', '_', '.' and ':' (at byte {at} of {})",
                id.len()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_tenant_ids_are_refused_by_name() {
        for (id, problem) in [
            ("", "must not be empty"),
            ("a\0b", "at byte 1 of 3"),
            ("*", "at byte 0 of 1"),
            ("clinic 7", "at byte 6 of 8"),
            ("kliník", "at byte 4 of 7"),
        ] {
            let e = TenantId::new(id).expect_err("refused");
            assert_eq!(e.field, "tenant");
            assert!(e.problem.contains(problem), "{id:?}: {}", e.problem);
        }
        let long = "t".repeat(MAX_TENANT_BYTES + 1);
        assert!(TenantId::new(&long)
            .expect_err("too long")
            .problem
            .contains("more than the limit of 128 bytes"));
        assert_eq!(
            TenantId::new(&"t".repeat(MAX_TENANT_BYTES))
                .expect("at the limit")
                .as_str()
                .len(),
            128
        );
        assert_eq!(
            TenantId::new("clinic-7:a.b_c").expect("valid").as_str(),
            "clinic-7:a.b_c"
        );
        assert_eq!(TenantId::default().as_str(), "default");
    }
}
