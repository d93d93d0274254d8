//! The audit log: one row per answered IM message (who asked, in which conversation, which skill or model
//! answered, time to the first visible token, tokens, how delivery ended), in the store next to the outbox.
//! Question and answer text pass through a [`Masker`] first, so configured sensitive patterns (phone
//! numbers and Chinese ID numbers by default) never reach the disk. [`export`] writes the rows as JSON lines
//! or CSV (`hearth audit export`).

use std::io::Write;
use std::path::{Path, PathBuf};

use regex::Regex;

use crate::db::{Database, DbError};
use crate::store::Store;

pub mod record;

pub use record::{AuditRecord, Handler, Outcome, UnknownOutcome};

/// The default sensitive patterns: mainland Chinese ID numbers (18 characters) first, then mobile numbers.
pub fn default_mask_patterns() -> Vec<String> {
    vec![r"\d{17}[\dXx]".to_owned(), r"\+?(?:86)?1[3-9]\d{9}".to_owned()]
}

/// What replaces a masked match.
pub const MASK: &str = "[masked]";

/// Replaces sensitive matches before anything is stored.
#[derive(Debug, Clone)]
pub struct Masker {
    patterns: Vec<Regex>,
}

impl Masker {
    /// A masker for `patterns` (regexes); a bad one is an error naming it.
    pub fn new(patterns: &[String]) -> Result<Self, AuditError> {
        let patterns = patterns
            .iter()
            .map(|p| {
                Regex::new(p).map_err(|e| AuditError::Pattern {
                    pattern: p.clone(),
                    reason: e.to_string(),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { patterns })
    }

    /// `text` with every match of every pattern replaced by [`MASK`], patterns applied in order.
    pub fn mask(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for pattern in &self.patterns {
            text = pattern.replace_all(&text, MASK).into_owned();
        }
        text
    }
}

/// An audit failure.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("invalid sensitive pattern {pattern:?}: {reason}")]
    Pattern { pattern: String, reason: String },
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("cannot open the audit database {path}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("cannot write the export: {0}")]
    Write(#[from] std::io::Error),
    #[error("cannot write the CSV export: {0}")]
    Csv(#[from] csv::Error),
}

/// The audit log of one store.
#[derive(Clone)]
pub struct AuditLog {
    store: Store,
    masker: Masker,
    /// Records written by this handle and its clones, so callers can await one.
    written: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

impl AuditLog {
    /// The log in `store`, masking with `masker`.
    pub fn open(store: Store, masker: Masker) -> Self {
        Self {
            store,
            masker,
            written: std::sync::Arc::new(tokio::sync::watch::channel(0).0),
        }
    }

    /// Store an HTTP skill call's audit row (`skill_calls`, beside the records).
    pub async fn record_call(&self, call: crate::skills::calls::SkillCall) -> Result<(), AuditError> {
        Ok(self.store.insert_skill_call(call).await?)
    }

    /// The HTTP skill calls since `since_ms`, oldest first.
    pub async fn calls(&self, since_ms: i64) -> Result<Vec<crate::skills::calls::SkillCall>, AuditError> {
        Ok(self.store.skill_calls_since(since_ms).await?)
    }

    /// Store `record`, its question and answer masked.
    pub async fn record(&self, record: AuditRecord) -> Result<(), AuditError> {
        let record = self.masked(record);
        self.store.insert_record(record).await?;
        self.note_written();
        Ok(())
    }

    /// `record` with its question and answer masked, ready to store.
    pub(crate) fn masked(&self, mut record: AuditRecord) -> AuditRecord {
        record.question = self.masker.mask(&record.question);
        record.answer = self.masker.mask(&record.answer);
        record
    }

    /// A record was committed (by this log or in a caller's transaction): wake those awaiting records.
    pub(crate) fn note_written(&self) {
        self.written.send_modify(|n| *n += 1);
    }

    /// The number of records written through this log; changes after each one.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.written.subscribe()
    }

    /// Wait until at least `count` records were written through this log, then return every record.
    pub async fn wait_for_records(&self, count: u64) -> Result<Vec<AuditRecord>, AuditError> {
        let mut written = self.subscribe();
        // The sender lives as long as `self`, so this only ends when the count is reached.
        let _ = written.wait_for(|n| *n >= count).await;
        self.records(0).await
    }

    /// Every record since `since_ms`, oldest first.
    pub async fn records(&self, since_ms: i64) -> Result<Vec<AuditRecord>, AuditError> {
        Ok(self.store.records_since(since_ms).await?)
    }

    /// Delete the records taken up before `before_ms`; returns how many went.
    pub async fn prune(&self, before_ms: i64) -> Result<usize, AuditError> {
        Ok(self.store.prune_records(before_ms).await?)
    }

    /// The `limit` newest records, newest first.
    pub async fn recent(&self, limit: usize) -> Result<Vec<AuditRecord>, AuditError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(self.store.recent_records(limit).await?)
    }
}

/// An export format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// One JSON object per line.
    Jsonl,
    /// A header row, then one row per record.
    Csv,
}

/// Write the records of the database at `database` since `since_ms` to `out`; returns how many.
pub fn export(database: &Path, format: ExportFormat, since_ms: i64, out: impl Write) -> Result<usize, AuditError> {
    let database = Database::open_existing(database).map_err(|source| AuditError::Open {
        path: database.to_owned(),
        source,
    })?;
    let conn = database.connection();
    let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
    crate::store::sqlite_migrate(&mut conn).map_err(DbError::from)?;
    let records = crate::store::sqlite_records_since(&conn, since_ms).map_err(DbError::from)?;
    write_records(&records, format, out)?;
    Ok(records.len())
}

/// Write `records` to `out` as `format`.
pub fn write_records(records: &[AuditRecord], format: ExportFormat, mut out: impl Write) -> Result<(), AuditError> {
    match format {
        ExportFormat::Jsonl => {
            for record in records {
                serde_json::to_writer(&mut out, record).map_err(std::io::Error::from)?;
                out.write_all(b"\n")?;
            }
            out.flush()?;
        }
        ExportFormat::Csv => {
            let mut writer = csv::Writer::from_writer(out);
            for record in records {
                writer.serialize(record)?;
            }
            writer.flush()?;
        }
    }
    Ok(())
}

/// Parse `--since`: Unix milliseconds, or an age such as `90s`, `30m`, `24h`, `7d` counted back from now.
pub fn parse_since(text: &str, now_ms: i64) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "`{text}` is neither Unix milliseconds nor an age like 30m, 24h or 7d"
            ))
        }
    };
    let number: i64 = number
        .parse()
        .map_err(|_| format!("`{text}` needs a number before `{unit}`"))?;
    Ok(now_ms - number.saturating_mul(unit_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_phone_and_id_numbers() {
        let masker = Masker::new(&default_mask_patterns()).unwrap();
        assert_eq!(masker.mask("call 13812345678 now"), "call [masked] now");
        assert_eq!(
            masker.mask("我的身份证号是11010519491231002X，电话+8613912345678"),
            "我的身份证号是[masked]，电话[masked]"
        );
        assert_eq!(masker.mask("order 12345"), "order 12345");
        assert!(Masker::new(&["(".to_owned()]).is_err());
    }

    #[test]
    fn handlers_keep_their_stored_and_exported_names() {
        for (handler, name) in [
            (Handler::RateLimited, "rate_limited"),
            (Handler::Skill("echo".to_owned()), "skill:echo"),
            (Handler::Model("smollm2".to_owned()), "model:smollm2"),
            (
                Handler::Refused("not in any allow list".to_owned()),
                "refused:not in any allow list",
            ),
            (Handler::Other("admin:switch".to_owned()), "admin:switch"),
        ] {
            assert_eq!(handler.to_string(), name);
            assert_eq!(Handler::from(name), handler);
            assert_eq!(serde_json::to_value(&handler).unwrap(), name);
            assert_eq!(serde_json::from_value::<Handler>(name.into()).unwrap(), handler);
            assert!(handler == name, "{handler:?} == {name}");
        }
        // A model whose name has a colon stays that model.
        assert_eq!(Handler::from("model:qwen:7b"), Handler::Model("qwen:7b".to_owned()));
    }

    #[test]
    fn outcomes_keep_their_stored_and_exported_names() {
        let names = ["answered", "answered_markdown", "busy", "failed", "ignored"];
        assert_eq!(Outcome::ALL.map(Outcome::as_str), names);
        for outcome in Outcome::ALL {
            assert_eq!(outcome.as_str().parse(), Ok(outcome));
            assert_eq!(serde_json::to_value(outcome).unwrap(), outcome.as_str());
            assert_eq!(
                serde_json::from_value::<Outcome>(outcome.as_str().into()).unwrap(),
                outcome
            );
        }
        assert_eq!(
            "finalized".parse::<Outcome>(),
            Err(UnknownOutcome("finalized".to_owned()))
        );
    }

    #[test]
    fn since_accepts_ms_and_ages() {
        assert_eq!(parse_since("1700000000000", 0), Ok(1_700_000_000_000));
        assert_eq!(parse_since("2h", 10_000_000), Ok(10_000_000 - 7_200_000));
        assert!(parse_since("yesterday", 0).is_err());
    }
}
