//! `projections list|rebuild|pause|resume`.

use std::time::Duration;

use annals_core::projection::{ProjectionError, ProjectionStatus};
use annals_core::{EventStore, LogPosition, ProjectionStore};
use serde::Serialize;

use super::status::{health, projections_table};
use crate::cli::ProjectionsCommand;
use crate::output::Out;
use crate::{progress, Admin, AdminError, Exit};

#[derive(Debug, Serialize)]
struct Rebuilt {
    projection: String,
    events_read: u64,
    events_applied: u64,
    events_parked: u64,
    checkpoint: LogPosition,
}

#[derive(Debug, Serialize)]
struct Changed {
    projection: String,
    /// The status now.
    status: &'static str,
    /// Whether this command changed it (false: it already was).
    changed: bool,
}

pub(crate) async fn run(
    admin: &Admin,
    command: &ProjectionsCommand,
    out: &mut Out<'_>,
) -> Result<Exit, AdminError> {
    match command {
        ProjectionsCommand::List => {
            let (_, rows) = health(admin).await?;
            out.emit(&rows, |w| projections_table(&rows).write(w))?;
            Ok(Exit::Ok)
        }
        ProjectionsCommand::Rebuild { name } => rebuild(admin, name, out).await,
        ProjectionsCommand::Pause { name } => {
            // a registered projection that never ran gets its checkpoint,
            // so that it can be paused before its first run
            if admin.runner(name).is_some() {
                admin.projections.init_checkpoint(name).await?;
            } else {
                require_checkpoint(admin, name).await?;
            }
            let changed = admin.projections.pause(name).await?;
            report(out, name, "paused", changed)
        }
        ProjectionsCommand::Resume { name } => {
            require_checkpoint(admin, name).await?;
            let changed = admin.projections.resume(name).await?;
            report(out, name, "running", changed)
        }
    }
}

/// A projection is known when registered or checkpointed.
async fn require_checkpoint(admin: &Admin, name: &str) -> Result<(), AdminError> {
    if admin.projections.checkpoint(name).await?.is_some() {
        return Ok(());
    }
    admin.require_runner(name).map(|_| ())
}

fn report(
    out: &mut Out<'_>,
    name: &str,
    status: &'static str,
    changed: bool,
) -> Result<Exit, AdminError> {
    let change = Changed {
        projection: name.to_owned(),
        status,
        changed,
    };
    out.emit(&change, |w| {
        if changed {
            writeln!(w, "projection `{name}` {status}")
        } else {
            writeln!(w, "projection `{name}` was already {status}")
        }
    })?;
    Ok(Exit::Ok)
}

async fn rebuild(admin: &Admin, name: &str, out: &mut Out<'_>) -> Result<Exit, AdminError> {
    let runner = admin.require_runner(name)?.clone();
    if let Some(checkpoint) = admin.projections.checkpoint(name).await? {
        if checkpoint.status == ProjectionStatus::Stopped {
            return Err(AdminError::Paused {
                name: name.to_owned(),
            });
        }
    }
    let total = admin.store.backlog(LogPosition::START).await?.events;
    let bar = progress::bar(total, "rebuilding");
    let done = if bar.is_hidden() {
        runner.rebuild().await
    } else {
        // the runner reports nothing while it works: follow its checkpoint
        let rebuild = runner.rebuild();
        tokio::pin!(rebuild);
        loop {
            tokio::select! {
                done = &mut rebuild => break done,
                () = tokio::time::sleep(Duration::from_millis(250)) => {
                    if let Ok(Some(c)) = admin.projections.checkpoint(name).await {
                        if let Ok(left) = admin.store.backlog(c.position).await {
                            bar.set_position(total.saturating_sub(left.events));
                        }
                    }
                }
            }
        }
    };
    bar.finish_and_clear();
    let done = done.map_err(|e| match e {
        ProjectionError::NotOwner { projection } => AdminError::Owned { name: projection },
        e => e.into(),
    })?;
    let rebuilt = Rebuilt {
        projection: name.to_owned(),
        events_read: done.events_read,
        events_applied: done.events_applied,
        events_parked: done.events_parked,
        checkpoint: done.position,
    };
    out.emit(&rebuilt, |w| {
        writeln!(
            w,
            "rebuilt `{name}`: {} event(s) read, {} applied, {} parked; checkpoint {}/{}",
            rebuilt.events_read,
            rebuilt.events_applied,
            rebuilt.events_parked,
            rebuilt.checkpoint.transaction_id,
            rebuilt.checkpoint.position
        )
    })?;
    Ok(Exit::Ok)
}
