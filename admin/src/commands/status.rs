//! `status`: the whole picture in one screen.

use std::collections::BTreeMap;

use annals_core::projection::{HealthCheck, HealthReport, ProjectionHealth, ProjectionStatus};
use annals_core::store::Horizon;
use annals_core::SagaStore;
use serde::Serialize;

use crate::output::{short, time, Out, Table};
use crate::{Admin, AdminError, Exit};

/// A projection as `status` and `projections list` show it.
#[derive(Debug, Serialize)]
pub(crate) struct ProjectionRow {
    #[serde(flatten)]
    pub(crate) health: ProjectionHealth,
    /// Paused (`projections pause`): no runner takes it until resumed.
    pub(crate) paused: bool,
    /// Registered with the admin (can be rebuilt and replayed).
    pub(crate) registered: bool,
}

impl ProjectionRow {
    /// The status as the tables and the status page show it.
    pub(crate) fn status(&self) -> &'static str {
        match self.health.status {
            None => "never ran",
            Some(ProjectionStatus::Stopped) => "paused",
            Some(s) => s.as_str(),
        }
    }
}

/// Unfinished sagas of one type and status.
#[derive(Debug, Serialize)]
pub(crate) struct SagasInFlight {
    pub(crate) saga_type: String,
    pub(crate) status: &'static str,
    pub(crate) count: u64,
}

/// What `status` reports.
#[derive(Debug, Serialize)]
pub(crate) struct Status {
    pub(crate) projections: Vec<ProjectionRow>,
    pub(crate) horizon: Horizon,
    pub(crate) horizon_stale: bool,
    pub(crate) dead_letters_pending: u64,
    pub(crate) sagas_in_flight: Vec<SagasInFlight>,
    pub(crate) healthy: bool,
    pub(crate) checked_at: chrono::DateTime<chrono::Utc>,
}

/// The health of every registered or checkpointed projection.
pub(crate) async fn health(
    admin: &Admin,
) -> Result<(HealthReport, Vec<ProjectionRow>), AdminError> {
    let mut check = HealthCheck::new(admin.store.clone(), admin.projections.clone())
        .stale_after(admin.stale_after)
        .horizon_stale_after(admin.horizon_stale_after);
    for name in admin.projection_names() {
        check = check.expect(name);
    }
    let report = check.check_all().await?;
    let rows = report
        .projections
        .iter()
        .map(|h| ProjectionRow {
            paused: h.status == Some(ProjectionStatus::Stopped),
            registered: admin.runner(&h.name).is_some(),
            health: h.clone(),
        })
        .collect();
    Ok((report, rows))
}

/// The projections table.
pub(crate) fn projections_table(rows: &[ProjectionRow]) -> Table {
    let mut table = Table::new(&[
        "PROJECTION",
        "STATUS",
        "CHECKPOINT",
        "LAST EVENT",
        "LAG",
        "BEHIND",
        "DEAD",
        "HEALTH",
    ]);
    for row in rows {
        let h = &row.health;
        let health = match &h.reason {
            Some(reason) => format!("stale: {}", short(reason, 60)),
            None if h.stale => "stale".to_owned(),
            None => "ok".to_owned(),
        };
        table.row(vec![
            format!(
                "{}{}",
                h.name,
                if row.registered {
                    ""
                } else {
                    " (unregistered)"
                }
            ),
            row.status().to_owned(),
            format!("{}/{}", h.position.transaction_id, h.position.position),
            time(h.last_event_at),
            format!("{:.1}s", h.lag_seconds),
            h.events_behind.to_string(),
            h.dead_letters_pending.to_string(),
            health,
        ]);
    }
    table
}

/// Projections, horizon, dead letters and sagas in flight.
pub(crate) async fn report(admin: &Admin) -> Result<Status, AdminError> {
    let (report, projections) = health(admin).await?;
    let dead_letters_pending = projections
        .iter()
        .map(|p| p.health.dead_letters_pending)
        .sum();
    let sagas_in_flight = sagas_in_flight(admin).await?;
    let healthy = !report.horizon_stale && projections.iter().all(|p| !p.health.stale);
    Ok(Status {
        projections,
        horizon: report.horizon,
        horizon_stale: report.horizon_stale,
        dead_letters_pending,
        sagas_in_flight,
        healthy,
        checked_at: report.checked_at,
    })
}

pub(crate) async fn status(admin: &Admin, out: &mut Out<'_>) -> Result<Exit, AdminError> {
    let status = report(admin).await?;
    out.emit(&status, |w| {
        projections_table(&status.projections).write(w)?;
        writeln!(w)?;
        let h = &status.horizon;
        writeln!(
            w,
            "horizon: transaction {}; held back {:.1}s (open since {}); {} committed event(s) held back{}",
            h.xmin,
            h.lag_seconds,
            time(h.oldest_open_since),
            h.events_held_back,
            if status.horizon_stale { " — STALE" } else { "" }
        )?;
        writeln!(w, "dead letters pending: {}", status.dead_letters_pending)?;
        let total: u64 = status.sagas_in_flight.iter().map(|s| s.count).sum();
        let by: Vec<String> = status
            .sagas_in_flight
            .iter()
            .map(|s| format!("{} {} {}", s.count, s.saga_type, s.status))
            .collect();
        writeln!(
            w,
            "sagas in flight: {total}{}",
            if by.is_empty() { String::new() } else { format!(" ({})", by.join(", ")) }
        )?;
        writeln!(w, "healthy: {}", if status.healthy { "yes" } else { "no" })?;
        writeln!(w, "checked at: {}", time(Some(status.checked_at)))?;
        Ok(())
    })?;
    Ok(if status.healthy {
        Exit::Ok
    } else {
        Exit::Unhealthy
    })
}

/// Unfinished sagas by type and status, counted a page at a time.
async fn sagas_in_flight(admin: &Admin) -> Result<Vec<SagasInFlight>, AdminError> {
    let mut counts: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
    let mut after = None;
    loop {
        let page = admin.sagas.list_unfinished(None, after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.saga_id);
        for saga in &page {
            *counts
                .entry((saga.saga_type.clone(), saga.status.as_str()))
                .or_default() += 1;
        }
    }
    Ok(counts
        .into_iter()
        .map(|((saga_type, status), count)| SagasInFlight {
            saga_type,
            status,
            count,
        })
        .collect())
}
