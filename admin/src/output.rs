//! Output: aligned tables for people, JSON for scripts.

use std::io::Write;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Where a command writes, and how.
pub(crate) struct Out<'a> {
    pub(crate) json: bool,
    pub(crate) stdout: &'a mut (dyn Write + Send),
}

impl Out<'_> {
    /// Writes `value` as pretty JSON (with `--json`) or `human` otherwise.
    pub(crate) fn emit<T: Serialize>(
        &mut self,
        value: &T,
        human: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        if self.json {
            serde_json::to_writer_pretty(&mut *self.stdout, value).map_err(std::io::Error::from)?;
            writeln!(self.stdout)
        } else {
            human(&mut *self.stdout)
        }
    }

    /// Writes one line of compact JSON (streams, in both modes).
    pub(crate) fn line<T: Serialize>(&mut self, value: &T) -> std::io::Result<()> {
        serde_json::to_writer(&mut *self.stdout, value).map_err(std::io::Error::from)?;
        writeln!(self.stdout)?;
        self.stdout.flush()
    }
}

/// A table with a header row, columns padded to their widest cell.
pub(crate) struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(headers: &[&'static str]) -> Self {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub(crate) fn write(&self, w: &mut dyn Write) -> std::io::Result<()> {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(cell.chars().count());
                }
            }
        }
        let line = |w: &mut dyn Write, cells: &mut dyn Iterator<Item = &str>| {
            let mut text = String::new();
            for (i, cell) in cells.enumerate() {
                if i > 0 {
                    text.push_str("  ");
                }
                text.push_str(cell);
                let pad = widths.get(i).copied().unwrap_or(0) - cell.chars().count();
                text.extend(std::iter::repeat_n(' ', pad));
            }
            writeln!(w, "{}", text.trim_end())
        };
        line(w, &mut self.headers.iter().copied())?;
        for row in &self.rows {
            line(w, &mut row.iter().map(String::as_str))?;
        }
        if self.rows.is_empty() {
            writeln!(w, "(none)")?;
        }
        Ok(())
    }
}

/// A time as the tables show it (seconds, UTC).
pub(crate) fn time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(
        || "-".to_owned(),
        |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
    )
}

/// An optional value, `-` when absent.
pub(crate) fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// One line of a possibly long text (errors in tables), cut to `max` characters.
pub(crate) fn short(text: &str, max: usize) -> String {
    let first = text.lines().next().unwrap_or_default();
    if first.chars().count() <= max && first.len() == text.len() {
        first.to_owned()
    } else {
        let cut: String = first.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}
