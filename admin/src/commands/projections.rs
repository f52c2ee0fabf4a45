//! `projections list|rebuild|pause|resume`.

use std::time::Duration;

use annals_core::projection::{ProjectionError, ProjectionStatus};
use annals_core::{EventStore, LogPosition, ProjectionStore};
use indicatif::ProgressBar;
use serde::Serialize;

use super::status::{health, projections_table};
use crate::cli::ProjectionsCommand;
use crate::output::Out;
use crate::{progress, Admin, AdminError, Exit};

/// What a rebuild did.
#[derive(Debug, Serialize)]
pub(crate) struct Rebuilt {
    projection: String,
    events_read: u64,
    events_applied: u64,
    events_parked: u64,
    checkpoint: LogPosition,
}

/// What a pause or a resume did.
#[derive(Debug, Serialize)]
pub(crate) struct Changed {
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
        ProjectionsCommand::Rebuild { name } => {
            let rebuilt = rebuild(admin, name, true).await?;
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
        ProjectionsCommand::Pause { name } => report(out, pause(admin, name).await?),
        ProjectionsCommand::Resume { name } => report(out, resume(admin, name).await?),
    }
}

/// Stops every runner of the projection until it is resumed.
pub(crate) async fn pause(admin: &Admin, name: &str) -> Result<Changed, AdminError> {
    // a registered projection that never ran gets its checkpoint, so that
    // it can be paused before its first run
    if admin.runner(name).is_some() {
        admin.projections.init_checkpoint(name).await?;
    } else {
        require_checkpoint(admin, name).await?;
    }
    let changed = admin.projections.pause(name).await?;
    Ok(Changed {
        projection: name.to_owned(),
        status: "paused",
        changed,
    })
}

/// Lets a paused projection's runners take it again.
pub(crate) async fn resume(admin: &Admin, name: &str) -> Result<Changed, AdminError> {
    require_checkpoint(admin, name).await?;
    let changed = admin.projections.resume(name).await?;
    Ok(Changed {
        projection: name.to_owned(),
        status: "running",
        changed,
    })
}

/// A projection is known when registered or checkpointed.
async fn require_checkpoint(admin: &Admin, name: &str) -> Result<(), AdminError> {
    if admin.projections.checkpoint(name).await?.is_some() {
        return Ok(());
    }
    admin.require_runner(name).map(|_| ())
}

fn report(out: &mut Out<'_>, change: Changed) -> Result<Exit, AdminError> {
    out.emit(&change, |w| {
        let Changed {
            projection, status, ..
        } = &change;
        if change.changed {
            writeln!(w, "projection `{projection}` {status}")
        } else {
            writeln!(w, "projection `{projection}` was already {status}")
        }
    })?;
    Ok(Exit::Ok)
}

/// Clears the projection's read model and applies the whole log again;
/// with `progress`, a progress bar on a terminal.
pub(crate) async fn rebuild(
    admin: &Admin,
    name: &str,
    progress: bool,
) -> Result<Rebuilt, AdminError> {
    let runner = admin.require_runner(name)?.clone();
    if let Some(checkpoint) = admin.projections.checkpoint(name).await? {
        if checkpoint.status == ProjectionStatus::Stopped {
            return Err(AdminError::Paused {
                name: name.to_owned(),
            });
        }
    }
    let bar = if progress {
        let total = admin.store.backlog(LogPosition::START).await?.events;
        progress::bar(total, "rebuilding")
    } else {
        ProgressBar::hidden()
    };
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
                            bar.set_position(bar.length().unwrap_or(0).saturating_sub(left.events));
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
    Ok(Rebuilt {
        projection: name.to_owned(),
        events_read: done.events_read,
        events_applied: done.events_applied,
        events_parked: done.events_parked,
        checkpoint: done.position,
    })
}
