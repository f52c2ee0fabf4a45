//! The embedding refresh job: re-embed the rows of an old model, in
//! batches, resumably.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Duration as ChronoDuration, Timelike, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::embedder::{check_vectors, Embedder};
use super::knowledge::{
    validate_model_name, BatchCommit, EmbeddingUpdate, KnowledgeBase, KnowledgeError,
};

/// Progress of a refresh, after each batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RefreshProgress {
    /// The job.
    pub job_id: Uuid,
    /// The model rows are re-embedded with.
    pub model: String,
    /// Rows re-embedded by the job so far (earlier runs included).
    pub done: u64,
    /// Rows the job had to re-embed when it started.
    pub total: u64,
    /// Rows re-embedded by this run.
    pub refreshed: u64,
    /// Batches committed by this run.
    pub batches: u64,
}

/// What a refresh run did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RefreshOutcome {
    /// The job.
    pub job_id: Uuid,
    /// Rows re-embedded by this run.
    pub refreshed: u64,
    /// Rows the job had to re-embed when it started.
    pub total: u64,
    /// Rows the job re-embedded in all its runs.
    pub done: u64,
    /// Whether this run resumed a job an earlier run left unfinished.
    pub resumed: bool,
    /// Active rows still embedded by another model when the job finished:
    /// written during the run by an ingestor still on the old model. Zero
    /// once every writer uses the new model; otherwise run the job again.
    pub stale_left: u64,
}

/// Re-embeds every active row whose embedding is not of the embedder's
/// model, `batch_size` rows at a time (default 100).
///
/// Each batch is read in id order after the job's cursor, embedded, and
/// stored together with the moved cursor and progress in one atomic step,
/// so a run that crashes or is dropped resumes after its last stored batch:
/// run it again and it picks the job up (`resumed` in the outcome). A row
/// that is refreshed is no longer stale, so even a new job never redoes it.
/// Searches keep working throughout: each batch is a short write; rows not
/// yet refreshed are found by searches with the old model, refreshed ones
/// by searches with the new one.
///
/// Progress goes to the callback and to `tracing` (info) after every batch,
/// and to the [`EMBEDDING_REFRESH_ROWS_TOTAL`](crate::metrics::EMBEDDING_REFRESH_ROWS_TOTAL)
/// and [`EMBEDDING_REFRESH_PENDING_ROWS`](crate::metrics::EMBEDDING_REFRESH_PENDING_ROWS)
/// metrics.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// use annals::rag::*;
///
/// let kb = InMemoryKnowledgeBase::new();
/// let old = Ingestor::new(HashingEmbedder::new(64));
/// # let meta = DocumentMeta { source_type: "faq".into(), title: "t".into(), clinic_id: None, language: None, tags: vec![], metadata: Default::default() };
/// # kb.ingest(&old, &DocumentEvent::Added(Document { document_id: uuid::Uuid::now_v7(), meta, content: "hello".into() })).await?;
/// // the configured model changes
/// let refresh = EmbeddingRefresh::new(HashingEmbedder::new(64).with_seed(2)).batch_size(100);
/// let outcome = refresh.run(&kb, |p| println!("{}/{}", p.done, p.total)).await?;
/// assert_eq!((outcome.refreshed, outcome.total), (1, 1));
/// # Ok::<(), KnowledgeError>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct EmbeddingRefresh<E> {
    embedder: E,
    batch_size: usize,
}

/// Rows per batch by default.
pub const DEFAULT_REFRESH_BATCH: usize = 100;

impl<E: Embedder> EmbeddingRefresh<E> {
    /// A refresh to `embedder`'s model.
    pub fn new(embedder: E) -> Self {
        EmbeddingRefresh {
            embedder,
            batch_size: DEFAULT_REFRESH_BATCH,
        }
    }

    /// Rows per batch (at least 1).
    pub fn batch_size(mut self, rows: usize) -> Self {
        self.batch_size = rows.max(1);
        self
    }

    /// The embedder.
    pub fn embedder(&self) -> &E {
        &self.embedder
    }

    /// Runs (or resumes) the job to the end. An embedding or database error
    /// stops the run and is returned; the job stays resumable.
    pub async fn run<K: KnowledgeBase>(
        &self,
        kb: &K,
        mut on_progress: impl FnMut(&RefreshProgress) + Send,
    ) -> Result<RefreshOutcome, KnowledgeError> {
        let model = self.embedder.model();
        validate_model_name(model)?;
        let mut job = kb.refresh_start(model).await?;
        tracing::info!(job_id = %job.job_id, model, total = job.total, done = job.done, resumed = job.resumed, "embedding refresh started");
        let mut refreshed = 0u64;
        let mut batches = 0u64;
        loop {
            let rows = kb.refresh_batch(model, job.cursor, self.batch_size).await?;
            let Some(last) = rows.last().map(|r| r.id) else {
                break;
            };
            let texts: Vec<&str> = rows.iter().map(|r| r.content.as_str()).collect();
            let vectors = match self.embedder.embed(&texts).await.and_then(|v| {
                check_vectors(model, self.embedder.dimensions(), texts.len(), &v).map(|()| v)
            }) {
                Ok(v) => v,
                Err(e) => {
                    let _ = kb.refresh_failed(&job, &e.to_string()).await;
                    tracing::warn!(job_id = %job.job_id, model, error = %e, "embedding refresh stopped; run it again to resume");
                    return Err(e.into());
                }
            };
            let updates: Vec<EmbeddingUpdate> = rows
                .into_iter()
                .zip(vectors)
                .map(|(r, vector)| EmbeddingUpdate {
                    id: r.id,
                    content_hash: r.content_hash,
                    vector,
                })
                .collect();
            match kb.refresh_commit(&job, job.cursor, last, &updates).await? {
                BatchCommit::Committed { updated, done } => {
                    refreshed += updated;
                    batches += 1;
                    job.cursor = Some(last);
                    job.done = done;
                    crate::metrics::record_refresh_progress(
                        model,
                        updated,
                        job.total.saturating_sub(done),
                    );
                }
                BatchCommit::Superseded { cursor, done } => {
                    // another worker stored this batch first
                    job.cursor = cursor;
                    job.done = done;
                }
            }
            let progress = RefreshProgress {
                job_id: job.job_id,
                model: model.to_owned(),
                done: job.done,
                total: job.total,
                refreshed,
                batches,
            };
            tracing::info!(job_id = %job.job_id, model, done = job.done, total = job.total, "embedding refresh progress");
            on_progress(&progress);
        }
        kb.refresh_finish(&job).await?;
        let stale_left = kb.count_stale(model).await?;
        crate::metrics::record_refresh_progress(model, 0, stale_left);
        if stale_left > 0 {
            tracing::warn!(job_id = %job.job_id, model, stale_left, "embedding refresh completed, but rows of another model were written meanwhile; switch every ingestor to the new model and run the refresh again");
        } else {
            tracing::info!(job_id = %job.job_id, model, refreshed, done = job.done, total = job.total, "embedding refresh completed");
        }
        Ok(RefreshOutcome {
            job_id: job.job_id,
            refreshed,
            total: job.total,
            done: job.done,
            resumed: job.resumed,
            stale_left,
        })
    }
}

// ---------------------------------------------------------------------------
// Scheduling
// ---------------------------------------------------------------------------

/// When to run a periodic job, as the minute, hour and day-of-week fields
/// of a cron expression (UTC): `0 3 * * 0` is every Sunday at 03:00.
///
/// Each field is a number or `*`; day of month and month must be `*`. Days
/// of the week count from Sunday = 0 (7 is Sunday too).
///
/// ```
/// use annals::rag::Schedule;
/// use chrono::{TimeZone, Utc};
///
/// let weekly: Schedule = "0 3 * * 0".parse()?;
/// let friday = Utc.with_ymd_and_hms(2025, 1, 3, 12, 0, 0).unwrap();
/// assert_eq!(weekly.next_after(friday), Utc.with_ymd_and_hms(2025, 1, 5, 3, 0, 0).unwrap());
/// # Ok::<(), annals::rag::ScheduleError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    minute: Option<u32>,
    hour: Option<u32>,
    weekday: Option<u32>,
}

/// A cron expression [`Schedule`] cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid schedule {expression:?}: {reason}; write `minute hour * * weekday`, each a number or `*`, e.g. `0 3 * * 0`")]
pub struct ScheduleError {
    /// The expression.
    pub expression: String,
    /// What is wrong.
    pub reason: String,
}

impl FromStr for Schedule {
    type Err = ScheduleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| ScheduleError {
            expression: s.to_owned(),
            reason,
        };
        let fields: Vec<&str> = s.split_whitespace().collect();
        let [minute, hour, dom, month, weekday] = fields[..] else {
            return Err(err(format!("expected 5 fields, found {}", fields.len())));
        };
        let field = |value: &str, name: &str, max: u32| -> Result<Option<u32>, ScheduleError> {
            if value == "*" {
                return Ok(None);
            }
            match value.parse::<u32>() {
                Ok(n) if n <= max => Ok(Some(n)),
                _ => Err(err(format!(
                    "{name} must be `*` or 0 to {max}, not `{value}`"
                ))),
            }
        };
        if dom != "*" || month != "*" {
            return Err(err("day of month and month must be `*`".to_owned()));
        }
        Ok(Schedule {
            minute: field(minute, "minute", 59)?,
            hour: field(hour, "hour", 23)?,
            weekday: field(weekday, "day of week", 7)?.map(|d| d % 7),
        })
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: Option<u32>| v.map_or_else(|| "*".to_owned(), |n| n.to_string());
        write!(
            f,
            "{} {} * * {}",
            show(self.minute),
            show(self.hour),
            show(self.weekday)
        )
    }
}

impl Schedule {
    /// Every week on `weekday` (Sunday = 0) at `hour:minute` UTC.
    pub fn weekly(weekday: u32, hour: u32, minute: u32) -> Self {
        Schedule {
            minute: Some(minute.min(59)),
            hour: Some(hour.min(23)),
            weekday: Some(weekday % 7),
        }
    }

    /// The first matching minute strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> DateTime<Utc> {
        let start = after
            .with_second(0)
            .and_then(|t| t.with_nanosecond(0))
            .unwrap_or(after)
            + ChronoDuration::minutes(1);
        // at most a week of minutes
        let mut t = start;
        for _ in 0..=(7 * 24 * 60) {
            let ok = self.minute.is_none_or(|m| t.minute() == m)
                && self.hour.is_none_or(|h| t.hour() == h)
                && self
                    .weekday
                    .is_none_or(|d| t.weekday().num_days_from_sunday() == d);
            if ok {
                return t;
            }
            t += ChronoDuration::minutes(1);
        }
        start
    }

    /// Runs `job` at every matching time, forever (spawn it on a task;
    /// abort the task to stop, or use [`run_until`](Self::run_until)).
    /// Each run's result goes to `on_result`.
    pub async fn run_forever<F, Fut, T>(&self, job: F, on_result: impl FnMut(T))
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        self.run_until(crate::Shutdown::never(), job, on_result)
            .await
    }

    /// Runs `job` at every matching time until `shutdown` is triggered; a
    /// run in progress finishes first. Each run's result goes to
    /// `on_result`.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// use annals::Shutdown;
    /// use annals::rag::Schedule;
    ///
    /// let weekly: Schedule = "0 3 * * 0".parse().unwrap();
    /// let (stop, shutdown) = Shutdown::new();
    /// let job = tokio::spawn(async move {
    ///     weekly
    ///         .run_until(shutdown, || async { "refreshed" }, |outcome| println!("{outcome}"))
    ///         .await
    /// });
    /// // ... at shutdown:
    /// stop.trigger();
    /// job.await.unwrap();
    /// # });
    /// ```
    pub async fn run_until<F, Fut, T>(
        &self,
        mut shutdown: crate::Shutdown,
        mut job: F,
        mut on_result: impl FnMut(T),
    ) where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        loop {
            let now = Utc::now();
            let next = self.next_after(now);
            let wait = (next - now).to_std().unwrap_or_default();
            tracing::debug!(%next, "scheduled job sleeping");
            if shutdown.sleep(wait).await {
                return;
            }
            on_result(job().await);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_scheduled_job_runs_at_its_times_until_shutdown() {
        let every_minute: Schedule = "* * * * *".parse().unwrap();
        let runs = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let (stop, shutdown) = crate::Shutdown::new();
        let counted = runs.clone();
        let task = tokio::spawn(async move {
            every_minute
                .run_until(
                    shutdown,
                    || async { 7 },
                    move |n: u32| {
                        counted.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
                    },
                )
                .await
        });
        // nothing before its first time (at most a minute away) ...
        tokio::task::yield_now().await;
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 0);
        // ... then runs (tokio's clock is paused and jumps ahead)
        tokio::time::sleep(std::time::Duration::from_secs(5 * 60)).await;
        let ran = runs.load(std::sync::atomic::Ordering::SeqCst);
        assert!(ran >= 7 && ran % 7 == 0, "{ran}");
        stop.trigger();
        tokio::time::timeout(std::time::Duration::from_secs(1), task)
            .await
            .expect("stops at once when triggered")
            .unwrap();
    }

    #[test]
    fn schedules_parse_and_find_the_next_time() {
        let s: Schedule = "0 3 * * 0".parse().unwrap();
        assert_eq!(s, Schedule::weekly(0, 3, 0));
        assert_eq!(s.to_string(), "0 3 * * 0");
        // Sunday 03:00 exactly: the next one is a week later
        let sunday = Utc.with_ymd_and_hms(2025, 1, 5, 3, 0, 0).unwrap();
        assert_eq!(s.next_after(sunday), sunday + ChronoDuration::days(7));
        let hourly: Schedule = "30 * * * *".parse().unwrap();
        assert_eq!(
            hourly.next_after(Utc.with_ymd_and_hms(2025, 1, 5, 3, 30, 10).unwrap()),
            Utc.with_ymd_and_hms(2025, 1, 5, 4, 30, 0).unwrap()
        );
        assert_eq!(
            "0 0 * * 7".parse::<Schedule>().unwrap(),
            Schedule::weekly(0, 0, 0)
        );
        for bad in ["", "0 3 * *", "60 3 * * 0", "0 3 1 * 0", "x 3 * * 0"] {
            let e = bad.parse::<Schedule>().unwrap_err();
            assert!(e.to_string().starts_with("invalid schedule"), "{e}");
        }
    }
}
