//! Projection health: how far behind each projection is, whether it is
//! stale, and whether the service is ready.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::metrics as m;
use crate::projection::store::{Checkpoint, ProjectionStatus, ProjectionStore};
use crate::{store::Horizon, Error, EventStore, LogPosition, Shutdown};

/// The health of one projection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectionHealth {
    /// The projection's name.
    pub name: String,
    /// Its checkpoint (the start of the log if it never ran).
    pub position: LogPosition,
    /// When the last event it processed was recorded.
    pub last_event_at: Option<DateTime<Utc>>,
    /// When its checkpoint last moved (`None`: it never ran).
    pub updated_at: Option<DateTime<Utc>>,
    /// Seconds since the oldest event it has not processed yet was
    /// recorded; 0 when it is caught up.
    pub lag_seconds: f64,
    /// Committed events past its checkpoint.
    pub events_behind: u64,
    /// Whether it is stale: lagging more than its threshold, or failed.
    pub stale: bool,
    /// Its staleness threshold, in seconds.
    pub stale_after_seconds: f64,
    /// Its status (`None`: it never ran).
    pub status: Option<ProjectionStatus>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// The position of the event it failed on.
    pub error_position: Option<u64>,
    /// Its pending dead letters.
    pub dead_letters_pending: u64,
    /// Why it is stale, in words (`None` when it is not).
    pub reason: Option<String>,
}

/// The health of every projection and of the store's horizon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthReport {
    /// Every projection, by name.
    pub projections: Vec<ProjectionHealth>,
    /// How far the snapshot horizon holds log readers back.
    pub horizon: Horizon,
    /// Whether the horizon has been held back longer than its threshold
    /// *and* holds committed events back from readers (a long transaction
    /// that holds nothing back, such as a backup's, is not a problem).
    pub horizon_stale: bool,
    /// When the report was made.
    pub checked_at: DateTime<Utc>,
}

/// A readiness verdict for a service: ready unless a projection is stale
/// (lagging beyond its threshold, or failed) or the horizon is held back
/// beyond its threshold; the reasons say which and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Readiness {
    /// Whether the service should receive traffic.
    pub ready: bool,
    /// Why not, one line per problem.
    pub reasons: Vec<String>,
    /// The report the verdict is based on (`None` if health could not be
    /// checked at all).
    pub report: Option<HealthReport>,
}

/// Checks projection health from the event store (what is behind each
/// checkpoint) and the projection store (the checkpoints), and exports it
/// as metrics.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// use std::time::Duration;
/// use annals::{projection::HealthCheck, InMemoryEventStore, InMemoryProjectionStore};
///
/// let health = HealthCheck::new(InMemoryEventStore::new(), InMemoryProjectionStore::new())
///     .stale_after(Duration::from_secs(300))
///     .expect("lead_summary");
/// let readiness = health.readiness().await;
/// assert!(readiness.ready); // an empty log: nothing to be behind on
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct HealthCheck<S, B> {
    store: S,
    projection_store: B,
    stale_after: Duration,
    stale_after_for: BTreeMap<String, Duration>,
    horizon_stale_after: Duration,
    expected: BTreeSet<String>,
    /// The server's name in the horizon's gauges and readiness reason.
    server: Option<String>,
}

impl<S: EventStore, B: ProjectionStore> HealthCheck<S, B> {
    /// A health check with the defaults: a projection is stale after 5
    /// minutes of lag, the horizon after 5 minutes held back.
    ///
    /// It checks the projections of the event store's tenant: the
    /// projection store is scoped to it, as a runner scopes its own.
    pub fn new(store: S, projection_store: B) -> Self {
        let projection_store = projection_store.in_tenant(store.tenant_id().clone());
        HealthCheck {
            store,
            projection_store,
            stale_after: Duration::from_secs(300),
            stale_after_for: BTreeMap::new(),
            horizon_stale_after: Duration::from_secs(300),
            expected: BTreeSet::new(),
            server: None,
        }
    }

    /// The default staleness threshold.
    pub fn stale_after(mut self, threshold: Duration) -> Self {
        self.stale_after = threshold;
        self
    }

    /// The staleness threshold of one projection.
    pub fn stale_after_for(mut self, projection: &str, threshold: Duration) -> Self {
        self.stale_after_for
            .insert(projection.to_owned(), threshold);
        self
    }

    /// Names the server the store is on (with a
    /// [`TenantRouter`](crate::tenant::TenantRouter), a health check per
    /// server and tenant): the horizon's gauges get a `server` label beside
    /// `tenant`, and a stale horizon's readiness reason names the server.
    pub fn server(mut self, name: impl Into<String>) -> Self {
        self.server = Some(name.into());
        self
    }

    /// How long the horizon may hold committed events back from readers
    /// before readiness fails (default 5 minutes).
    pub fn horizon_stale_after(mut self, threshold: Duration) -> Self {
        self.horizon_stale_after = threshold;
        self
    }

    /// A projection the service needs: reported (as behind everything)
    /// even before its first run.
    pub fn expect(mut self, projection: &str) -> Self {
        self.expected.insert(projection.to_owned());
        self
    }

    fn threshold(&self, projection: &str) -> Duration {
        self.stale_after_for
            .get(projection)
            .copied()
            .unwrap_or(self.stale_after)
    }

    /// The health of one projection (also exported as metrics).
    pub async fn check(&self, projection: &str) -> Result<ProjectionHealth, Error> {
        let checkpoint = self.projection_store.checkpoint(projection).await?;
        self.health_of(projection, checkpoint).await
    }

    async fn health_of(
        &self,
        name: &str,
        checkpoint: Option<Checkpoint>,
    ) -> Result<ProjectionHealth, Error> {
        let position = checkpoint
            .as_ref()
            .map_or(LogPosition::START, |c| c.position);
        let backlog = self.store.backlog(position).await?;
        let pending = self.projection_store.pending_dead_letters(name).await?;
        let now = Utc::now();
        let lag_seconds = match backlog.oldest_recorded_at {
            Some(t) if backlog.events > 0 => (now - t).num_milliseconds().max(0) as f64 / 1000.0,
            _ => 0.0,
        };
        let threshold = self.threshold(name);
        let status = checkpoint.as_ref().map(|c| c.status);
        let reason = if status == Some(ProjectionStatus::Failed) {
            Some(format!(
                "projection `{name}` failed at global position {}: {}",
                checkpoint
                    .as_ref()
                    .and_then(|c| c.error_position)
                    .map_or_else(|| "?".to_owned(), |p| p.to_string()),
                checkpoint
                    .as_ref()
                    .and_then(|c| c.error.clone())
                    .unwrap_or_default()
            ))
        } else if lag_seconds > threshold.as_secs_f64() {
            Some(format!(
                "projection `{name}` is {lag_seconds:.0} s behind ({} event(s) not applied; threshold {} s){}",
                backlog.events,
                threshold.as_secs_f64(),
                if checkpoint.is_none() { "; it has never run" } else { "" }
            ))
        } else {
            None
        };
        let health = ProjectionHealth {
            name: name.to_owned(),
            position,
            last_event_at: checkpoint.as_ref().and_then(|c| c.last_event_at),
            updated_at: checkpoint.as_ref().map(|c| c.updated_at),
            lag_seconds,
            events_behind: backlog.events,
            stale: reason.is_some(),
            stale_after_seconds: threshold.as_secs_f64(),
            status,
            error: checkpoint.as_ref().and_then(|c| c.error.clone()),
            error_position: checkpoint.as_ref().and_then(|c| c.error_position),
            dead_letters_pending: pending,
            reason,
        };
        export(&health, self.store.tenant_id().as_str());
        Ok(health)
    }

    /// The health of every projection that has a checkpoint or is
    /// expected, and of the horizon (also exported as metrics).
    pub async fn check_all(&self) -> Result<HealthReport, Error> {
        let mut checkpoints: BTreeMap<String, Option<Checkpoint>> = self
            .expected
            .iter()
            .map(|name| (name.clone(), None))
            .collect();
        for c in self.projection_store.checkpoints().await? {
            checkpoints.insert(c.projection.clone(), Some(c));
        }
        let mut projections = Vec::with_capacity(checkpoints.len());
        for (name, checkpoint) in checkpoints {
            projections.push(self.health_of(&name, checkpoint).await?);
        }
        let horizon = self.store.horizon().await?;
        // the lag is the server's; the events held back are the tenant's
        let mut labels = vec![("tenant", self.store.tenant_id().to_string())];
        labels.extend(self.server.iter().map(|s| ("server", s.clone())));
        metrics::gauge!(m::HORIZON_LAG_SECONDS, &labels).set(horizon.lag_seconds);
        metrics::gauge!(m::HORIZON_EVENTS_HELD_BACK, &labels).set(horizon.events_held_back as f64);
        Ok(HealthReport {
            projections,
            horizon_stale: horizon_stale(&horizon, self.horizon_stale_after),
            horizon,
            checked_at: Utc::now(),
        })
    }

    /// The readiness verdict. A failure to check at all is not ready, with
    /// the error as the reason.
    pub async fn readiness(&self) -> Readiness {
        match self.check_all().await {
            Ok(report) => {
                let mut reasons: Vec<String> = report
                    .projections
                    .iter()
                    .filter_map(|p| p.reason.clone())
                    .collect();
                if report.horizon_stale {
                    let whose = match &self.server {
                        Some(server) => format!("server `{server}`'s"),
                        None => "the event store's".to_owned(),
                    };
                    reasons.push(format!(
                        "{whose} horizon has been held back for {:.0} s by an open transaction ({} committed event(s) of tenant `{}` invisible to readers); find it in pg_stat_activity",
                        report.horizon.lag_seconds,
                        report.horizon.events_held_back,
                        self.store.tenant_id()
                    ));
                }
                Readiness {
                    ready: reasons.is_empty(),
                    reasons,
                    report: Some(report),
                }
            }
            Err(e) => Readiness {
                ready: false,
                reasons: vec![format!("cannot check projection health: {e}")],
                report: None,
            },
        }
    }

    /// Checks every `interval` until `shutdown`, keeping the health metrics
    /// current (for dashboards and alerts between readiness probes).
    pub async fn monitor(&self, interval: Duration, mut shutdown: Shutdown) {
        loop {
            if let Err(e) = self.check_all().await {
                tracing::warn!(error = %e, "projection health check failed");
            }
            if shutdown.sleep(interval).await {
                return;
            }
        }
    }
}

fn export(h: &ProjectionHealth, tenant: &str) {
    let (name, tenant) = (h.name.clone(), tenant.to_owned());
    let labels = [("projection", name.clone()), ("tenant", tenant.clone())];
    metrics::gauge!(m::PROJECTION_LAG_SECONDS, &labels).set(h.lag_seconds);
    metrics::gauge!(m::PROJECTION_EVENTS_BEHIND, &labels).set(h.events_behind as f64);
    metrics::gauge!(m::PROJECTION_STALE, &labels).set(if h.stale { 1.0 } else { 0.0 });
    metrics::gauge!(m::PROJECTION_FAILED, &labels).set(
        if h.status == Some(ProjectionStatus::Failed) {
            1.0
        } else {
            0.0
        },
    );
    metrics::gauge!(m::DEAD_LETTERS_PENDING, "handler" => name, "tenant" => tenant)
        .set(h.dead_letters_pending as f64);
}

/// Whether `horizon` has been held back longer than `threshold` while it
/// hides committed events from readers.
fn horizon_stale(horizon: &Horizon, threshold: Duration) -> bool {
    horizon.lag_seconds > threshold.as_secs_f64() && horizon.events_held_back > 0
}

#[cfg(test)]
mod horizon_tests {
    use super::*;

    fn horizon(lag_seconds: f64, events_held_back: u64) -> Horizon {
        Horizon {
            lag_seconds,
            events_held_back,
            ..Horizon::CLEAR
        }
    }

    #[test]
    fn a_held_back_horizon_is_stale_only_when_it_hides_events() {
        let five_minutes = Duration::from_secs(300);
        assert!(horizon_stale(&horizon(301.0, 3), five_minutes));
        // a long transaction that hides nothing (a backup, say)
        assert!(!horizon_stale(&horizon(3_600.0, 0), five_minutes));
        // events held back briefly: ordinary commit latency
        assert!(!horizon_stale(&horizon(2.0, 40), five_minutes));
    }
}
