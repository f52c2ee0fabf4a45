//! Tenants across servers: which server holds a tenant.
//!
//! Each server is an ordinary annals database (its own event store,
//! projection store, saga store): a tenant lives on exactly one of them,
//! with all its rows, so every guarantee of one server (the global order
//! of its log, exactly-once projections, one transaction per command)
//! holds per tenant. There is no order across servers, and none is
//! needed: no reader ever reads two tenants' logs as one.
//!
//! Placement is an explicit map first (a tenant pinned to a server, e.g.
//! a large clinic on a server of its own, or a tenant being moved), then
//! rendezvous hashing over the servers' names for every other tenant:
//! each (server, tenant) pair gets a stable score and the tenant goes to
//! the server with the highest. Adding a server moves only the tenants
//! that now score highest on it (about 1/n of them); removing one moves
//! only its own. The score is a 64-bit hash of `{server}\0{tenant}`,
//! fixed here (a test pins it), so every process and every release places
//! a tenant on the same server.

use std::collections::HashMap;
use std::sync::Arc;

use super::TenantId;
use crate::error::InvalidInput;
use crate::store::Horizon;
use crate::{Error, EventStore};

/// Places tenants on servers. `S` is what a server is to the application:
/// an event store, or a bundle of one server's stores (event store,
/// projection store, saga store), all on the same database.
///
/// ```
/// use annals::{EventStoreExt, ExpectedVersion, InMemoryEventStore, Metadata, TenantId};
/// use annals::tenant::TenantRouter;
///
/// #[derive(Debug, Clone, PartialEq, annals::Event)]
/// enum LeadEvent { Created(String) }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let router = TenantRouter::builder()
///     .server("eu-1", InMemoryEventStore::new())
///     .server("eu-2", InMemoryEventStore::new())
///     .place("clinic-big", "eu-2") // pinned; every other tenant is hashed
///     .build()?;
/// let tenant = TenantId::new("clinic-big")?;
/// assert_eq!(router.server_of(&tenant), "eu-2");
/// let store = router.events(&tenant); // eu-2's store, scoped to clinic-big
/// store.append_events("lead-1", ExpectedVersion::NoStream, &[LeadEvent::Created("Ana".into())], &Metadata::new()).await?;
/// # Ok::<(), annals::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct TenantRouter<S> {
    servers: Arc<[Server<S>]>,
    placed: Arc<HashMap<TenantId, usize>>,
}

impl<S> Clone for TenantRouter<S> {
    fn clone(&self) -> Self {
        TenantRouter {
            servers: self.servers.clone(),
            placed: self.placed.clone(),
        }
    }
}

#[derive(Debug)]
struct Server<S> {
    name: String,
    value: S,
}

/// Builds a [`TenantRouter`]: its servers, and the tenants pinned to one.
#[derive(Debug)]
pub struct TenantRouterBuilder<S> {
    servers: Vec<Server<S>>,
    placed: Vec<(String, String)>,
}

impl<S> TenantRouter<S> {
    /// A builder with no server yet.
    pub fn builder() -> TenantRouterBuilder<S> {
        TenantRouterBuilder {
            servers: Vec::new(),
            placed: Vec::new(),
        }
    }

    /// The name of the server that holds `tenant`.
    pub fn server_of(&self, tenant: &TenantId) -> &str {
        &self.servers[self.index_of(tenant)].name
    }

    /// The server that holds `tenant`: its name and what it is.
    pub fn route(&self, tenant: &TenantId) -> (&str, &S) {
        let server = &self.servers[self.index_of(tenant)];
        (&server.name, &server.value)
    }

    /// Every server, in the order they were added: to run a server's
    /// runners and health checks, or read its horizon.
    pub fn servers(&self) -> impl Iterator<Item = (&str, &S)> {
        self.servers.iter().map(|s| (s.name.as_str(), &s.value))
    }

    /// Of `tenants`, those `server` holds (the tenants whose runners run
    /// against that server).
    pub fn tenants_on<'t>(
        &self,
        server: &str,
        tenants: impl IntoIterator<Item = &'t TenantId>,
    ) -> Vec<&'t TenantId> {
        tenants
            .into_iter()
            .filter(|t| self.server_of(t) == server)
            .collect()
    }

    fn index_of(&self, tenant: &TenantId) -> usize {
        if let Some(&i) = self.placed.get(tenant) {
            return i;
        }
        let mut best = (0, 0);
        for (i, server) in self.servers.iter().enumerate() {
            let score = score(&server.name, tenant.as_str());
            if i == 0 || score > best.1 {
                best = (i, score);
            }
        }
        best.0
    }
}

/// What a server of a [`TenantRouter`] is: at least an event store. An
/// event store is one by itself; a bundle of one server's stores says
/// which is its event store.
///
/// ```
/// use annals::tenant::TenantServer;
/// use annals::{InMemoryEventStore, InMemoryProjectionStore};
///
/// #[derive(Clone)]
/// struct Server { events: InMemoryEventStore, projections: InMemoryProjectionStore }
///
/// impl TenantServer for Server {
///     type Events = InMemoryEventStore;
///     fn events(&self) -> &InMemoryEventStore { &self.events }
/// }
/// ```
pub trait TenantServer {
    /// The server's event store.
    type Events: EventStore + Clone;

    /// The server's event store (scoped to the default tenant).
    fn events(&self) -> &Self::Events;
}

impl<S: EventStore + Clone> TenantServer for S {
    type Events = S;

    fn events(&self) -> &S {
        self
    }
}

impl<S: TenantServer> TenantRouter<S> {
    /// The event store of the server that holds `tenant`, scoped to it.
    pub fn events(&self, tenant: &TenantId) -> S::Events {
        self.route(tenant).1.events().in_tenant(tenant.clone())
    }

    /// [`events`](Self::events) for a tenant id given as text
    /// ([`Error::InvalidInput`] naming `tenant` when it is out of
    /// [`TenantId`]'s limits).
    pub fn tenant(&self, id: &str) -> Result<S::Events, Error> {
        Ok(self.events(&TenantId::new(id)?))
    }

    /// Each server's snapshot horizon: an open write transaction on one
    /// server holds back the log readers of that server's tenants only.
    pub async fn horizons(&self) -> Vec<(String, Result<Horizon, Error>)> {
        let mut out = Vec::with_capacity(self.servers.len());
        for server in self.servers.iter() {
            out.push((server.name.clone(), server.value.events().horizon().await));
        }
        out
    }
}

impl<S> TenantRouterBuilder<S> {
    /// Adds a server named `name` (unique, not empty: placement hashes it,
    /// so keep a server's name when its address changes).
    pub fn server(mut self, name: impl Into<String>, value: S) -> Self {
        self.servers.push(Server {
            name: name.into(),
            value,
        });
        self
    }

    /// Pins `tenant` to the server named `server`, whatever the hash says.
    pub fn place(mut self, tenant: impl Into<String>, server: impl Into<String>) -> Self {
        self.placed.push((tenant.into(), server.into()));
        self
    }

    /// The router. [`Error::InvalidInput`] when there is no server, a
    /// server name is empty or repeated, a pinned tenant id is invalid, or
    /// a tenant is pinned to a server that is not there (or to two).
    pub fn build(self) -> Result<TenantRouter<S>, Error> {
        if self.servers.is_empty() {
            return Err(InvalidInput::new("tenant router", "has no server").into());
        }
        let mut index = HashMap::new();
        for (i, s) in self.servers.iter().enumerate() {
            if s.name.is_empty() {
                return Err(InvalidInput::new("server name", "must not be empty").into());
            }
            if index.insert(s.name.clone(), i).is_some() {
                return Err(InvalidInput::new(
                    "server name",
                    format!("`{}` is given to two servers", s.name),
                )
                .into());
            }
        }
        let mut placed = HashMap::new();
        for (tenant, server) in self.placed {
            let tenant = TenantId::new(&tenant)?;
            let &i = index.get(&server).ok_or_else(|| {
                InvalidInput::new(
                    "tenant placement",
                    format!("tenant `{tenant}` is placed on `{server}`, which is not a server of the router"),
                )
            })?;
            if placed.insert(tenant.clone(), i).is_some_and(|j| j != i) {
                return Err(InvalidInput::new(
                    "tenant placement",
                    format!("tenant `{tenant}` is placed on two servers"),
                )
                .into());
            }
        }
        Ok(TenantRouter {
            servers: self.servers.into(),
            placed: Arc::new(placed),
        })
    }
}

/// The rendezvous score of `tenant` on `server`: FNV-1a 64 of
/// `{server}\0{tenant}`, mixed by MurmurHash3's 64-bit finalizer (FNV
/// alone scores ids that differ in their last characters alike on every
/// server: 60% of tenants moved to a third server instead of a third).
fn score(server: &str, tenant: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in server.bytes().chain([0]).chain(tenant.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(servers: &[&str]) -> TenantRouter<()> {
        servers
            .iter()
            .fold(TenantRouter::builder(), |b, s| b.server(*s, ()))
            .build()
            .expect("router")
    }

    fn t(id: &str) -> TenantId {
        TenantId::new(id).expect("tenant")
    }

    #[test]
    fn the_score_is_pinned() {
        // checked against another implementation (Python); changing the
        // hash would move tenants between servers
        assert_eq!(score("a", "b"), 0xab78_f5ec_a36d_0e2b);
        assert_eq!(score("", ""), 0xb903_4ad3_7056_f5fb);
        assert_eq!(score("eu-1", "clinic-7"), 0x4e1c_46cf_1ecf_e2cf);
    }

    #[test]
    fn hashing_spreads_tenants_and_adding_a_server_moves_few() {
        let two = router(&["s1", "s2"]);
        let three = router(&["s1", "s2", "s3"]);
        let tenants: Vec<TenantId> = (0..1000).map(|i| t(&format!("clinic-{i}"))).collect();
        let on_s1 = tenants.iter().filter(|x| two.server_of(x) == "s1").count();
        assert!((400..=600).contains(&on_s1), "{on_s1} of 1000 on s1");
        let moved: Vec<_> = tenants
            .iter()
            .filter(|x| two.server_of(x) != three.server_of(x))
            .collect();
        assert!(
            moved.iter().all(|x| three.server_of(x) == "s3"),
            "a tenant moves only to the new server"
        );
        // a third of them, give or take
        assert!((250..=420).contains(&moved.len()), "{} moved", moved.len());
        // the order servers are given in does not matter
        let swapped = router(&["s2", "s1"]);
        assert!(tenants
            .iter()
            .all(|x| two.server_of(x) == swapped.server_of(x)));
    }

    #[test]
    fn pinned_tenants_and_bad_configurations() {
        let r = TenantRouter::builder()
            .server("s1", 1)
            .server("s2", 2)
            .place("clinic-big", "s1")
            .place("clinic-big", "s1")
            .build()
            .expect("router");
        assert_eq!(r.route(&t("clinic-big")), ("s1", &1));
        assert_eq!(r.tenants_on("s1", [&t("clinic-big")]), [&t("clinic-big")]);
        let invalid = |b: TenantRouterBuilder<u8>, field: &str, says: &str| match b.build() {
            Err(Error::InvalidInput(e)) => {
                assert_eq!(e.field, field);
                assert!(e.problem.contains(says), "{}", e.problem);
            }
            other => panic!("expected InvalidInput, got {other:?}"),
        };
        invalid(TenantRouter::builder(), "tenant router", "no server");
        invalid(
            TenantRouter::builder().server("", 1),
            "server name",
            "empty",
        );
        invalid(
            TenantRouter::builder().server("s", 1).server("s", 2),
            "server name",
            "two servers",
        );
        invalid(
            TenantRouter::builder().server("s", 1).place("c", "nowhere"),
            "tenant placement",
            "`nowhere`",
        );
        invalid(
            TenantRouter::builder()
                .server("s", 1)
                .server("u", 2)
                .place("c", "s")
                .place("c", "u"),
            "tenant placement",
            "two servers",
        );
        invalid(
            TenantRouter::builder().server("s", 1).place("c*", "s"),
            "tenant",
            "at byte 1",
        );
    }
}
