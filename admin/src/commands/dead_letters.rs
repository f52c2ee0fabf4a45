//! `dead-letters list|show|replay|discard`.

use std::collections::HashSet;
use std::io::Write;

use annals_core::dead_letter::{DeadLetter, DeadLetterQuery, DeadLetterStatus, DeadLetterStore};
use annals_core::projection::ReplayOutcome;
use annals_core::EventStore;
use indicatif::ProgressBar;
use serde::Serialize;

use super::streams::{decoded, DecodedEvent};
use crate::cli::{DeadLettersCommand, StatusFilter};
use crate::output::{opt, short, time, Out, Table};
use crate::registered::RegisteredProjection;
use crate::{progress, Admin, AdminError, Exit};

/// One dead letter with its stored event.
#[derive(Debug, Serialize)]
pub(crate) struct Shown {
    dead_letter: DeadLetter,
    /// The parked event (`None`: no longer in the store).
    event: Option<DecodedEvent>,
}

/// A dead letter replayed successfully.
#[derive(Debug, Serialize)]
pub(crate) struct Replayed {
    id: u64,
    handler: String,
    outcome: &'static str,
}

/// What replaying a handler's dead letters did.
#[derive(Debug, Default, Serialize)]
pub(crate) struct ReplaySummary {
    handler: String,
    resolved: u64,
    failed: u64,
    skipped: u64,
    /// The last error of each entry that failed again, by id.
    errors: Vec<(u64, String)>,
}

/// A dead letter given up on.
#[derive(Debug, Serialize)]
pub(crate) struct Discarded {
    id: u64,
    reason: String,
}

pub(crate) async fn run(
    admin: &Admin,
    command: &DeadLettersCommand,
    out: &mut Out<'_>,
) -> Result<Exit, AdminError> {
    match command {
        DeadLettersCommand::List {
            handler,
            status,
            after,
            limit,
        } => {
            let letters = list(admin, handler.clone(), *status, *after, *limit).await?;
            out.emit(&letters, |w| table(&letters).write(w))?;
            Ok(Exit::Ok)
        }
        DeadLettersCommand::Show { id } => {
            let shown = show(admin, *id).await?;
            out.emit(&shown, |w| write_shown(w, &shown))?;
            Ok(Exit::Ok)
        }
        DeadLettersCommand::Replay { id, handler } => match (id, handler) {
            (Some(id), _) => {
                let bar = progress::bar(1, "replaying");
                let replayed = replay_one(admin, *id).await;
                bar.finish_and_clear();
                let replayed = replayed?;
                out.emit(&replayed, |w| {
                    writeln!(w, "dead letter {id} replayed: {}", replayed.outcome)
                })?;
                Ok(Exit::Ok)
            }
            (None, Some(handler)) => {
                let summary = replay_handler(admin, handler, true).await?;
                out.emit(&summary, |w| {
                    writeln!(
                        w,
                        "replayed `{handler}`: {} resolved, {} failed again, {} skipped (behind a failure in their stream)",
                        summary.resolved, summary.failed, summary.skipped
                    )?;
                    for (id, error) in &summary.errors {
                        writeln!(w, "  dead letter {id}: {}", short(error, 100))?;
                    }
                    Ok(())
                })?;
                Ok(if summary.failed == 0 {
                    Exit::Ok
                } else {
                    Exit::Failed
                })
            }
            (None, None) => Err(AdminError::MissingArgument {
                argument: "ID or --handler",
            }),
        },
        DeadLettersCommand::Discard { id, reason } => {
            let discarded = discard(admin, *id, reason).await?;
            out.emit(&discarded, |w| writeln!(w, "dead letter {id} discarded"))?;
            Ok(Exit::Ok)
        }
    }
}

/// A page of dead letters, by id.
pub(crate) async fn list(
    admin: &Admin,
    handler: Option<String>,
    status: StatusFilter,
    after: u64,
    limit: usize,
) -> Result<Vec<DeadLetter>, AdminError> {
    let query = DeadLetterQuery {
        handler,
        status: match status {
            StatusFilter::Pending => Some(DeadLetterStatus::Pending),
            StatusFilter::Resolved => Some(DeadLetterStatus::Resolved),
            StatusFilter::Discarded => Some(DeadLetterStatus::Discarded),
            StatusFilter::All => None,
        },
        after_id: after,
        limit,
    };
    Ok(admin.projections.list_dead_letters(&query).await?)
}

/// One dead letter, with its stored event decoded.
pub(crate) async fn show(admin: &Admin, id: u64) -> Result<Shown, AdminError> {
    let letter = find(admin, id).await?;
    let event = admin
        .store
        .read_event(letter.event_position)
        .await?
        .map(|event| decoded(admin, event));
    Ok(Shown {
        dead_letter: letter,
        event,
    })
}

/// Gives up on a pending dead letter.
pub(crate) async fn discard(admin: &Admin, id: u64, reason: &str) -> Result<Discarded, AdminError> {
    if !admin.projections.discard_dead_letter(id, reason).await? {
        let letter = find(admin, id).await?;
        return Err(AdminError::not_pending(id, letter.status));
    }
    Ok(Discarded {
        id,
        reason: reason.to_owned(),
    })
}

async fn find(admin: &Admin, id: u64) -> Result<DeadLetter, AdminError> {
    admin
        .projections
        .dead_letter(id)
        .await?
        .ok_or(AdminError::DeadLetterNotFound { id })
}

fn table(letters: &[DeadLetter]) -> Table {
    let mut table = Table::new(&[
        "ID",
        "HANDLER",
        "STATUS",
        "POSITION",
        "STREAM",
        "TYPE",
        "ATTEMPTS",
        "LAST FAILED",
        "ERROR",
    ]);
    for l in letters {
        table.row(vec![
            l.id.to_string(),
            l.handler.clone(),
            l.status.as_str().to_owned(),
            l.event_position.to_string(),
            l.stream_id.clone(),
            l.event_type.clone(),
            l.attempts.to_string(),
            time(Some(l.last_failed_at)),
            short(&l.error, 60),
        ]);
    }
    table
}

fn write_shown(w: &mut dyn Write, shown: &Shown) -> std::io::Result<()> {
    let l = &shown.dead_letter;
    writeln!(w, "dead letter {}", l.id)?;
    writeln!(w, "  handler:      {}", l.handler)?;
    writeln!(w, "  status:       {}", l.status.as_str())?;
    writeln!(
        w,
        "  event:        {} (position {}, id {})",
        l.event_type, l.event_position, l.event_id
    )?;
    writeln!(w, "  stream:       {}", l.stream_id)?;
    writeln!(w, "  attempts:     {}", l.attempts)?;
    writeln!(w, "  first failed: {}", time(Some(l.first_failed_at)))?;
    writeln!(w, "  last failed:  {}", time(Some(l.last_failed_at)))?;
    writeln!(w, "  resolved at:  {}", time(l.resolved_at))?;
    writeln!(w, "  discarded:    {}", opt(l.discard_reason.as_deref()))?;
    writeln!(w, "  blocked by:   {}", opt(l.blocked_by))?;
    writeln!(w, "  error:        {}", l.error)?;
    match &shown.event {
        Some(event) => {
            let json = serde_json::to_string_pretty(event).map_err(std::io::Error::from)?;
            writeln!(w, "  stored event:\n{json}")
        }
        None => writeln!(w, "  stored event: (no longer in the event store)"),
    }
}

/// Runs a pending dead letter through its registered projection again.
pub(crate) async fn replay_one(admin: &Admin, id: u64) -> Result<Replayed, AdminError> {
    let letter = find(admin, id).await?;
    if letter.status != DeadLetterStatus::Pending {
        return Err(AdminError::not_pending(id, letter.status));
    }
    let runner = admin
        .runner(&letter.handler)
        .ok_or_else(|| AdminError::HandlerNotRegistered {
            id,
            handler: letter.handler.clone(),
        })?;
    match runner.replay(id).await? {
        ReplayOutcome::Resolved => Ok(Replayed {
            id,
            handler: letter.handler,
            outcome: "resolved",
        }),
        ReplayOutcome::Failed(e) => Err(AdminError::ReplayFailed {
            id,
            error: e.to_string(),
        }),
        // resolved or discarded by someone else meanwhile
        _ => {
            let status = find(admin, id).await?.status;
            Err(AdminError::not_pending(id, status))
        }
    }
}

/// Every pending entry of a handler, stream by stream in log order; within
/// a stream it stops at the first entry that fails again (as
/// `ProjectionRunner::replay_all`, one entry at a time for the progress bar,
/// drawn on a terminal with `progress`).
pub(crate) async fn replay_handler(
    admin: &Admin,
    handler: &str,
    progress: bool,
) -> Result<ReplaySummary, AdminError> {
    let runner: &dyn RegisteredProjection = admin.require_runner(handler)?.as_ref();
    let mut pending = Vec::new();
    let mut query = DeadLetterQuery::pending(handler).limit(500);
    loop {
        let page = admin.projections.list_dead_letters(&query).await?;
        let Some(last) = page.last() else { break };
        query = query.after(last.id);
        pending.extend(page);
    }
    pending.sort_by_key(|l| l.event_position);
    let bar = if progress {
        progress::bar(pending.len() as u64, "replaying")
    } else {
        ProgressBar::hidden()
    };
    let mut summary = ReplaySummary {
        handler: handler.to_owned(),
        ..ReplaySummary::default()
    };
    let mut failed_streams = HashSet::new();
    for letter in pending {
        bar.inc(1);
        if failed_streams.contains(&letter.stream_id) {
            summary.skipped += 1;
            continue;
        }
        match runner.replay(letter.id).await {
            Ok(ReplayOutcome::Resolved) => summary.resolved += 1,
            Ok(ReplayOutcome::Failed(e)) => {
                summary.failed += 1;
                summary.errors.push((letter.id, e.to_string()));
                failed_streams.insert(letter.stream_id);
            }
            Ok(_) => {}
            Err(e) => {
                bar.finish_and_clear();
                return Err(e.into());
            }
        }
    }
    bar.finish_and_clear();
    Ok(summary)
}
