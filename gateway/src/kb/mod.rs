//! The knowledge base: company documents (Markdown, text, HTML) in an embedded lexical index that IM answers
//! draw on, citing the documents they used.
//!
//! Storage: one SQLite file in the data directory ([`DATABASE_FILE`]), written by `hearth kb add|remove` and
//! read by the gateway. Each document is cut into passages of at most [`PASSAGE_CHARS`] characters on
//! paragraph boundaries; each passage is segmented into words with jieba (Chinese word segmentation; Latin
//! text splits on non-alphanumerics) and the words go into an FTS5 table, ranked by BM25. No model and no
//! network: it works air-gapped. SQLite's FTS5 rather than tantivy keeps the build small: rusqlite's
//! bundled SQLite already has it, and jieba-rs is the only new crate.
//!
//! Access: documents belong to a named base (`--kb`), and a base may be owned by groups (IM conversation
//! ids) and departments (from `[access] directory`). A base with owners is searched only for a sender in one
//! of its groups or departments, or an admin; a base without owners is for everyone. The check is made in
//! the query ([`Reader`]): an outsider's search never reads the base's passages.

mod extract;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use jieba_rs::Jieba;
use rusqlite::{params, Connection, OptionalExtension};

pub use extract::{extract, Format};

/// The knowledge base's file in the data directory.
pub const DATABASE_FILE: &str = "kb.sqlite3";
/// The longest passage, in characters; longer paragraphs are cut.
pub const PASSAGE_CHARS: usize = 600;
/// The largest document `add` takes, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024;
/// The most words of a query that are searched.
const MAX_QUERY_WORDS: usize = 32;

/// A knowledge base failure.
#[derive(Debug, thiserror::Error)]
pub enum KbError {
    #[error("knowledge base database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is {size} bytes, more than the {MAX_DOCUMENT_BYTES} a document may have")]
    TooLarge { path: PathBuf, size: u64 },
    #[error("{path}: unsupported format (supported: .md, .markdown, .txt, .text, .html, .htm)")]
    Unsupported { path: PathBuf },
    #[error("{path} has no text")]
    Empty { path: PathBuf },
    #[error("the knowledge base name must not be empty")]
    NoName,
}

/// Who may read a base: none of either means everyone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owners {
    /// IM group conversation ids.
    pub groups: Vec<String>,
    /// Departments, as the access directory names them.
    pub departments: Vec<String>,
}

/// Who is asking, for [`KnowledgeBase::search`].
#[derive(Debug, Clone, Copy)]
pub struct Reader<'a> {
    /// The group the question came from, if any.
    pub group: Option<&'a str>,
    /// The sender's departments.
    pub departments: &'a [String],
    /// Admins read every base.
    pub admin: bool,
}

impl Reader<'_> {
    /// Whether this reader may read a base owned by `owners`.
    pub fn may_read(&self, owners: &Owners) -> bool {
        self.admin
            || (owners.groups.is_empty() && owners.departments.is_empty())
            || self.group.is_some_and(|g| owners.groups.iter().any(|o| o == g))
            || self.departments.iter().any(|d| owners.departments.contains(d))
    }
}

/// One stored document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub base: String,
    /// Its name: the file name it was added from.
    pub name: String,
    pub passages: usize,
    pub chars: usize,
    pub added_ms: i64,
}

/// A passage found for a query.
#[derive(Debug, Clone, PartialEq)]
pub struct Passage {
    pub base: String,
    /// The document's name, cited in answers.
    pub document: String,
    pub text: String,
    /// BM25 (lower is better, as FTS5 gives it).
    pub rank: f64,
}

/// The shared segmenter: jieba's default dictionary, loaded once.
fn jieba() -> &'static Jieba {
    static JIEBA: OnceLock<Jieba> = OnceLock::new();
    JIEBA.get_or_init(Jieba::new)
}

/// The words of `text` for the index: jieba's search-mode cut, lowercased, without punctuation and spaces.
pub fn words(text: &str) -> Vec<String> {
    jieba()
        .cut_for_search(text, true)
        .into_iter()
        .map(|t| t.word.trim().to_lowercase())
        .filter(|w| w.chars().any(char::is_alphanumeric))
        .collect()
}

/// The knowledge base in one SQLite file.
pub struct KnowledgeBase {
    conn: Mutex<Connection>,
}

impl KnowledgeBase {
    /// Open (or create) the knowledge base at `path`.
    pub fn open(path: &Path) -> Result<Self, KbError> {
        let conn = Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE IF NOT EXISTS kb_bases (
                 name TEXT PRIMARY KEY,
                 groups TEXT NOT NULL,
                 departments TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS kb_documents (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 base TEXT NOT NULL,
                 name TEXT NOT NULL,
                 passages INTEGER NOT NULL,
                 chars INTEGER NOT NULL,
                 added_ms INTEGER NOT NULL,
                 UNIQUE (base, name)
             );
             CREATE VIRTUAL TABLE IF NOT EXISTS kb_passages USING fts5(
                 words, base UNINDEXED, document UNINDEXED, text UNINDEXED
             );",
        )?;
        Ok(Self { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Set who may read `base` (creating it).
    pub fn set_owners(&self, base: &str, owners: &Owners) -> Result<(), KbError> {
        if base.trim().is_empty() {
            return Err(KbError::NoName);
        }
        let join = |list: &[String]| serde_json::to_string(list).unwrap_or_else(|_| "[]".to_owned());
        self.conn().execute(
            "INSERT INTO kb_bases (name, groups, departments) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET groups = ?2, departments = ?3",
            params![base, join(&owners.groups), join(&owners.departments)],
        )?;
        Ok(())
    }

    /// Who may read `base` (everyone when it has no owners or does not exist).
    pub fn owners(&self, base: &str) -> Result<Owners, KbError> {
        Ok(self
            .bases()?
            .into_iter()
            .find(|(b, _)| b == base)
            .map(|(_, o)| o)
            .unwrap_or_default())
    }

    /// Every base with its owners.
    pub fn bases(&self) -> Result<Vec<(String, Owners)>, KbError> {
        let conn = self.conn();
        let mut statement = conn.prepare("SELECT name, groups, departments FROM kb_bases ORDER BY name")?;
        let rows = statement.query_map([], |row| {
            let parse = |text: String| serde_json::from_str::<Vec<String>>(&text).unwrap_or_default();
            Ok((
                row.get::<_, String>(0)?,
                Owners {
                    groups: parse(row.get(1)?),
                    departments: parse(row.get(2)?),
                },
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Add the file at `path` to `base` under its file name, replacing a document of that name.
    pub fn add_file(&self, base: &str, path: &Path) -> Result<Document, KbError> {
        let read_error = |source| KbError::Read {
            path: path.to_owned(),
            source,
        };
        let size = std::fs::metadata(path).map_err(read_error)?.len();
        if size > MAX_DOCUMENT_BYTES as u64 {
            return Err(KbError::TooLarge {
                path: path.to_owned(),
                size,
            });
        }
        let format = Format::of(path).ok_or_else(|| KbError::Unsupported { path: path.to_owned() })?;
        let bytes = std::fs::read(path).map_err(read_error)?;
        let text = extract(format, &String::from_utf8_lossy(&bytes));
        if text.trim().is_empty() {
            return Err(KbError::Empty { path: path.to_owned() });
        }
        let name = path
            .file_name()
            .map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
        self.add_text(base, &name, &text)
    }

    /// Add `text` to `base` as the document `name`, replacing a document of that name.
    pub fn add_text(&self, base: &str, name: &str, text: &str) -> Result<Document, KbError> {
        if base.trim().is_empty() {
            return Err(KbError::NoName);
        }
        let passages = passages(text);
        // Segmenting is the slow part: done before the transaction.
        let indexed: Vec<(String, &str)> = passages.iter().map(|p| (words(p).join(" "), p.as_str())).collect();
        let document = Document {
            base: base.to_owned(),
            name: name.to_owned(),
            passages: passages.len(),
            chars: text.chars().count(),
            added_ms: crate::db::now_ms(),
        };
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT OR IGNORE INTO kb_bases (name, groups, departments) VALUES (?1, '[]', '[]')",
            params![base],
        )?;
        remove_in(&tx, base, name)?;
        tx.execute(
            "INSERT INTO kb_documents (base, name, passages, chars, added_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                base,
                name,
                document.passages as i64,
                document.chars as i64,
                document.added_ms
            ],
        )?;
        {
            let mut insert =
                tx.prepare("INSERT INTO kb_passages (words, base, document, text) VALUES (?1, ?2, ?3, ?4)")?;
            for (words, text) in &indexed {
                insert.execute(params![words, base, name, text])?;
            }
        }
        tx.commit()?;
        Ok(document)
    }

    /// The stored documents, by base and name.
    pub fn list(&self) -> Result<Vec<Document>, KbError> {
        let conn = self.conn();
        let mut statement =
            conn.prepare("SELECT base, name, passages, chars, added_ms FROM kb_documents ORDER BY base, name")?;
        let rows = statement.query_map([], |row| {
            Ok(Document {
                base: row.get(0)?,
                name: row.get(1)?,
                passages: row.get::<_, i64>(2)? as usize,
                chars: row.get::<_, i64>(3)? as usize,
                added_ms: row.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Remove the document `name` from `base`; whether it was there.
    pub fn remove(&self, base: &str, name: &str) -> Result<bool, KbError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let removed = remove_in(&tx, base, name)?;
        tx.commit()?;
        Ok(removed)
    }

    /// The best `limit` passages for `query` among the bases `reader` may read.
    pub fn search(&self, query: &str, reader: &Reader<'_>, limit: usize) -> Result<Vec<Passage>, KbError> {
        let readable: Vec<String> = self
            .bases()?
            .into_iter()
            .filter(|(_, owners)| reader.may_read(owners))
            .map(|(base, _)| base)
            .collect();
        let words: BTreeSet<String> = words(query).into_iter().take(MAX_QUERY_WORDS).collect();
        if readable.is_empty() || words.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        // Each word quoted (FTS5 syntax stays out of the user's hands), any of them may match.
        let matching = words
            .iter()
            .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(" OR ");
        let bases = serde_json::to_string(&readable).unwrap_or_else(|_| "[]".to_owned());
        let conn = self.conn();
        let mut statement = conn.prepare(
            "SELECT base, document, text, bm25(kb_passages) AS rank FROM kb_passages
             WHERE kb_passages MATCH ?1 AND base IN (SELECT value FROM json_each(?2))
             ORDER BY rank LIMIT ?3",
        )?;
        let rows = statement.query_map(params![matching, bases, limit as i64], |row| {
            Ok(Passage {
                base: row.get(0)?,
                document: row.get(1)?,
                text: row.get(2)?,
                rank: row.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// Remove a document and its passages inside `tx`; whether it was there.
fn remove_in(tx: &rusqlite::Transaction<'_>, base: &str, name: &str) -> Result<bool, rusqlite::Error> {
    let id: Option<i64> = tx
        .query_row(
            "SELECT id FROM kb_documents WHERE base = ?1 AND name = ?2",
            params![base, name],
            |row| row.get(0),
        )
        .optional()?;
    if id.is_none() {
        return Ok(false);
    }
    tx.execute(
        "DELETE FROM kb_passages WHERE base = ?1 AND document = ?2",
        params![base, name],
    )?;
    tx.execute(
        "DELETE FROM kb_documents WHERE base = ?1 AND name = ?2",
        params![base, name],
    )?;
    Ok(true)
}

/// `text` cut into passages of at most [`PASSAGE_CHARS`] characters: paragraphs (blank-line separated)
/// joined while they fit, a longer paragraph cut on character boundaries.
pub fn passages(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut current_chars = 0;
    for paragraph in text.split("\n\n").map(str::trim).filter(|p| !p.is_empty()) {
        let chars = paragraph.chars().count();
        if current_chars > 0 && current_chars + 2 + chars > PASSAGE_CHARS {
            out.push(std::mem::take(&mut current));
            current_chars = 0;
        }
        if chars > PASSAGE_CHARS {
            let all: Vec<char> = paragraph.chars().collect();
            for piece in all.chunks(PASSAGE_CHARS) {
                out.push(piece.iter().collect());
            }
            continue;
        }
        if current_chars > 0 {
            current.push_str("\n\n");
            current_chars += 2;
        }
        current.push_str(paragraph);
        current_chars += chars;
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The question as the model sees it with `passages`: the numbered passages first, then the question.
pub fn grounded_question(question: &str, passages: &[Passage]) -> String {
    let mut text = String::from("Answer the question using these documents.\n");
    for (i, passage) in passages.iter().enumerate() {
        text.push_str(&format!("\n[{}] {}:\n{}\n", i + 1, passage.document, passage.text));
    }
    text.push_str(&format!("\nQuestion: {question}"));
    text
}

/// The distinct document names of `passages`, best first: what an answer cites.
pub fn sources(passages: &[Passage]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for passage in passages {
        if !names.contains(&passage.document) {
            names.push(passage.document.clone());
        }
    }
    names
}

#[cfg(test)]
mod tests;
