//! [`Card`]: one CardKit card entity (§8) — its card JSON, its text elements, the streaming-mode flag with
//! its window, the strictly increasing `sequence`, the `uuid`s already applied, and the history every
//! read-back shows. No IO: `cardkit.rs` puts HTTP around it.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;

use super::config::{EmulatorConfig, UuidReplay};
use crate::ids::now_ms;

/// A refused card operation: the platform's `code` and `msg` (HTTP 400 unless the caller says otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardError {
    pub code: i64,
    pub msg: String,
}

impl CardError {
    pub(crate) fn new(code: i64, msg: impl Into<String>) -> Self {
        Self { code, msg: msg.into() }
    }
}

/// One element of the card that carries an `element_id`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Element {
    pub element_id: String,
    pub tag: String,
    /// The text of a `markdown` or `plain_text` element.
    pub content: Option<String>,
}

impl Element {
    /// Only these can be streamed (`300310` otherwise).
    pub fn is_text(&self) -> bool {
        matches!(self.tag.as_str(), "markdown" | "plain_text")
    }
}

/// One accepted (or replayed) operation on a card.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CardOp {
    pub at_ms: u64,
    /// `create`, `send`, `content`, `settings`, `update`, `delete_element` or `auto_close` (the platform
    /// ended streaming mode after its window).
    pub api: String,
    pub sequence: Option<i64>,
    pub uuid: Option<String>,
    pub element_id: Option<String>,
    /// The full text of a `content` call.
    pub content: Option<String>,
    /// For `content`: the previous text was a prefix of this one, so the client types only the tail.
    pub appended: Option<bool>,
    pub streaming_mode_after: bool,
}

/// One card entity, keyed by `card_id`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Card {
    pub card_id: String,
    pub created_ms: u64,
    /// The card JSON as it stands after the last update.
    pub card: Value,
    pub elements: Vec<Element>,
    pub streaming_mode: bool,
    /// `config.summary.content`, the chat list's preview text.
    pub summary: Option<String>,
    /// The sequence of the last applied mutation (0 before any).
    pub sequence: i64,
    /// The message that sent it (a card entity is sent once).
    pub message_id: Option<String>,
    pub chat_id: Option<String>,
    /// What it shows: the text elements' contents, in card order, joined by blank lines.
    pub text: String,
    pub history: Vec<CardOp>,
    /// Calls on this card refused (sequence, quota, streaming closed, bad element…).
    pub rejected_calls: u32,
    /// `uuid` → the request it applied, for idempotent retries.
    #[serde(skip)]
    pub(crate) uuids: HashMap<String, String>,
    #[serde(skip)]
    pub(crate) streaming_since: Option<Instant>,
    /// Admitted operations of the last quota window.
    #[serde(skip)]
    pub(crate) ops: VecDeque<Instant>,
}

/// A mutation's `uuid` and `sequence`, and a fingerprint of the request for uuid replays.
pub(crate) struct Mutation<'a> {
    pub api: &'a str,
    pub uuid: Option<&'a str>,
    pub sequence: Option<i64>,
    pub fingerprint: String,
}

/// What [`Card::begin`] decided.
pub(crate) enum Begin {
    /// Apply the mutation.
    Apply,
    /// The identical request was applied already: answer success, change nothing.
    Replayed,
}

/// Parse and check a card JSON 2.0 document (§8.1, §8.8).
pub(crate) fn parse_card_json(data: &str, config: &EmulatorConfig) -> Result<(Value, Vec<Element>), CardError> {
    if data.trim().is_empty() {
        return Err(CardError::new(300_307, "card DSL is empty"));
    }
    if data.len() > config.max_card_bytes {
        return Err(CardError::new(200_860, "card content exceeds 30KB"));
    }
    let card: Value = serde_json::from_str(data)
        .map_err(|err| CardError::new(200_220, format!("failed to generate card content: {err}")))?;
    if !card.is_object() {
        return Err(CardError::new(
            200_220,
            "failed to generate card content: not a JSON object",
        ));
    }
    if card.get("schema").and_then(Value::as_str) != Some("2.0") {
        return Err(CardError::new(
            300_303,
            "only card JSON 2.0 (\"schema\": \"2.0\") is supported",
        ));
    }
    let mut elements = Vec::new();
    let mut count = 0;
    if let Some(body) = card.get("body") {
        collect_elements(body, &mut elements, &mut count);
    }
    if count > config.max_card_elements {
        return Err(CardError::new(
            300_305,
            format!("the card has {count} elements, more than 200"),
        ));
    }
    let tables: usize = elements
        .iter()
        .filter(|e| e.tag == "markdown")
        .filter_map(|e| e.content.as_deref())
        .map(markdown_tables)
        .sum();
    if tables > config.max_card_tables {
        return Err(too_many_tables());
    }
    for (i, element) in elements.iter().enumerate() {
        if !valid_element_id(&element.element_id) {
            return Err(CardError::new(
                10_002,
                format!(
                    "element_id {:?} must be 1-20 letters, digits or underscores starting with a letter",
                    element.element_id
                ),
            ));
        }
        if elements[..i].iter().any(|e| e.element_id == element.element_id) {
            return Err(CardError::new(
                300_301,
                format!("duplicate element_id {}", element.element_id),
            ));
        }
    }
    Ok((card, elements))
}

/// Every object with a `tag` under `value`, counting them; those with an `element_id` are kept.
/// The refusal of a card with too many tables, as the platform words it (§8.8).
fn too_many_tables() -> CardError {
    CardError::new(
        230_099,
        "Failed to create card content, ext=ErrCode: 11310; ErrMsg: card table number over limit; ErrorValue: table; ",
    )
}

/// How many GFM tables `markdown` holds: a row with `|` followed by a delimiter row (`|---|:--:|`) of as
/// many cells, outside fenced code blocks.
pub(crate) fn markdown_tables(markdown: &str) -> usize {
    fn cells(row: &str) -> Vec<&str> {
        let row = row.trim();
        let row = row.strip_prefix('|').unwrap_or(row);
        row.strip_suffix('|').unwrap_or(row).split('|').map(str::trim).collect()
    }
    let is_delimiter = |row: &str| {
        cells(row).iter().all(|cell| {
            let dashes = cell.trim_start_matches(':').trim_end_matches(':');
            !dashes.is_empty() && dashes.chars().all(|c| c == '-')
        })
    };
    let mut fence: Option<String> = None;
    let mut previous: Option<&str> = None;
    let mut count = 0;
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        let marker: String = trimmed.chars().take_while(|c| *c == '`' || *c == '~').collect();
        if let Some(open) = &fence {
            let closes = marker.len() >= open.len() && marker.starts_with(&open[..1]) && trimmed.trim_end() == marker;
            if closes {
                fence = None;
            }
            previous = None;
            continue;
        }
        if marker.len() >= 3 {
            fence = Some(marker);
            previous = None;
            continue;
        }
        if let Some(header) = previous {
            if header.contains('|') && is_delimiter(line) && cells(header).len() == cells(line).len() {
                count += 1;
                previous = None;
                continue;
            }
        }
        previous = Some(line);
    }
    count
}

fn collect_elements(value: &Value, out: &mut Vec<Element>, count: &mut usize) {
    match value {
        Value::Object(map) => {
            if let Some(tag) = map.get("tag").and_then(Value::as_str) {
                *count += 1;
                if let Some(id) = map.get("element_id").and_then(Value::as_str) {
                    let content = match tag {
                        "markdown" | "plain_text" => map.get("content").and_then(Value::as_str).map(str::to_owned),
                        _ => None,
                    };
                    out.push(Element {
                        element_id: id.to_owned(),
                        tag: tag.to_owned(),
                        content,
                    });
                }
            }
            for child in map.values() {
                collect_elements(child, out, count);
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_elements(item, out, count)),
        _ => {}
    }
}

/// 1–20 letters, digits or underscores, starting with a letter.
fn valid_element_id(id: &str) -> bool {
    (1..=20).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_alphabetic())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Card {
    /// A new entity from checked card JSON.
    pub(crate) fn new(card_id: String, card: Value, elements: Vec<Element>, now: Instant) -> Self {
        let config = card.get("config");
        let streaming_mode = config
            .and_then(|c| c.get("streaming_mode"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let summary = config
            .and_then(|c| c.pointer("/summary/content"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let mut card = Self {
            card_id,
            created_ms: now_ms(),
            card,
            elements,
            streaming_mode,
            summary,
            sequence: 0,
            message_id: None,
            chat_id: None,
            text: String::new(),
            history: Vec::new(),
            rejected_calls: 0,
            uuids: HashMap::new(),
            streaming_since: streaming_mode.then_some(now),
            ops: VecDeque::new(),
        };
        card.refresh_text();
        card.record("create", None, None, None, None);
        card
    }

    /// The element `element_id`.
    pub fn element(&self, element_id: &str) -> Option<&Element> {
        self.elements.iter().find(|e| e.element_id == element_id)
    }

    /// The `content` calls applied to `element_id`, in order: its streaming history.
    pub fn content_history(&self, element_id: &str) -> Vec<String> {
        self.history
            .iter()
            .filter(|op| op.api == "content" && op.element_id.as_deref() == Some(element_id))
            .filter_map(|op| op.content.clone())
            .collect()
    }

    fn refresh_text(&mut self) {
        self.text = self
            .elements
            .iter()
            .filter_map(|e| e.content.as_deref())
            .filter(|c| !c.is_empty())
            .collect::<Vec<_>>()
            .join("\n\n");
    }

    pub(crate) fn record(
        &mut self,
        api: &str,
        mutation: Option<&Mutation<'_>>,
        element_id: Option<&str>,
        content: Option<String>,
        appended: Option<bool>,
    ) {
        self.history.push(CardOp {
            at_ms: now_ms(),
            api: api.to_owned(),
            sequence: mutation.and_then(|m| m.sequence),
            uuid: mutation.and_then(|m| m.uuid.map(str::to_owned)),
            element_id: element_id.map(str::to_owned),
            content,
            appended,
            streaming_mode_after: self.streaming_mode,
        });
    }

    /// The checks every mutation passes after the card is found: the uuid replay rule, then the sequence
    /// rule (§8.4). On [`Begin::Apply`] the caller applies the change and calls [`Card::commit`].
    pub(crate) fn begin(&self, config: &EmulatorConfig, mutation: &Mutation<'_>) -> Result<Begin, CardError> {
        let sequence = mutation
            .sequence
            .ok_or_else(|| CardError::new(10_002, "sequence is required"))?;
        if !(1..=i64::from(i32::MAX)).contains(&sequence) {
            return Err(CardError::new(10_002, "sequence must be in 1..=2147483647"));
        }
        if let Some(uuid) = mutation.uuid {
            if uuid.is_empty() || uuid.chars().count() > 64 {
                return Err(CardError::new(10_002, "uuid must be 1-64 characters"));
            }
            if let Some(applied) = self.uuids.get(uuid) {
                return if *applied == mutation.fingerprint && config.uuid_replay == UuidReplay::Idempotent {
                    Ok(Begin::Replayed)
                } else {
                    Err(CardError::new(
                        200_770,
                        format!("uuid {uuid} conflicts with an earlier request"),
                    ))
                };
            }
        }
        if sequence <= self.sequence {
            return Err(CardError::new(
                300_317,
                format!(
                    "sequence {sequence} is not greater than the card's last sequence {}",
                    self.sequence
                ),
            ));
        }
        Ok(Begin::Apply)
    }

    /// Record an applied mutation's sequence and uuid.
    pub(crate) fn commit(&mut self, mutation: &Mutation<'_>) {
        if let Some(sequence) = mutation.sequence {
            self.sequence = sequence;
        }
        if let Some(uuid) = mutation.uuid {
            self.uuids.insert(uuid.to_owned(), mutation.fingerprint.clone());
        }
    }

    /// Stream `content` (the full text so far) into text element `element_id` (§8.3).
    pub(crate) fn check_content(
        &self,
        config: &EmulatorConfig,
        element_id: &str,
        content: &str,
    ) -> Result<(), CardError> {
        if content.is_empty() {
            return Err(CardError::new(10_002, "content must be 1-100000 characters"));
        }
        if content.chars().count() > config.max_stream_chars {
            return Err(CardError::new(10_002, "content must be 1-100000 characters"));
        }
        let element = self
            .element(element_id)
            .ok_or_else(|| CardError::new(10_002, format!("element {element_id} does not exist in the card")))?;
        if !element.is_text() {
            return Err(CardError::new(
                300_310,
                "only markdown and plain_text elements can be streamed",
            ));
        }
        let others: usize = self
            .elements
            .iter()
            .filter(|e| e.tag == "markdown" && e.element_id != element_id)
            .filter_map(|e| e.content.as_deref())
            .map(markdown_tables)
            .sum();
        if element.tag == "markdown" && others + markdown_tables(content) > config.max_card_tables {
            return Err(too_many_tables());
        }
        if !self.streaming_mode {
            return Err(CardError::new(
                config.streaming_closed_code,
                "streaming mode is closed: turn it on with the settings API",
            ));
        }
        if self.card.pointer("/config/update_multi").and_then(Value::as_bool) == Some(false) {
            return Err(CardError::new(300_302, "update_multi is false: the card is not shared"));
        }
        Ok(())
    }

    /// Apply a checked content call; returns whether it extended the previous text.
    pub(crate) fn apply_content(&mut self, element_id: &str, content: &str) -> bool {
        let element = self
            .elements
            .iter_mut()
            .find(|e| e.element_id == element_id)
            .expect("checked by check_content");
        let appended = element.content.as_deref().is_some_and(|old| content.starts_with(old));
        element.content = Some(content.to_owned());
        self.refresh_text();
        appended
    }

    /// Apply a settings document (`{"config": {...}, "card_link": {...}}`, §8.5).
    pub(crate) fn apply_settings(&mut self, settings: &Value, now: Instant) {
        if let Some(config) = settings.get("config") {
            if let Some(mode) = config.get("streaming_mode").and_then(Value::as_bool) {
                if mode && !self.streaming_mode {
                    self.streaming_since = Some(now);
                }
                if !mode {
                    self.streaming_since = None;
                }
                self.streaming_mode = mode;
            }
            if let Some(summary) = config.pointer("/summary/content").and_then(Value::as_str) {
                self.summary = Some(summary.to_owned());
            }
            if let Some(card) = self.card.as_object_mut() {
                let target = card
                    .entry("config")
                    .or_insert_with(|| Value::Object(Default::default()));
                if let (Some(target), Some(changes)) = (target.as_object_mut(), config.as_object()) {
                    for (key, value) in changes {
                        target.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        if let (Some(link), Some(card)) = (settings.get("card_link"), self.card.as_object_mut()) {
            card.insert("card_link".to_owned(), link.clone());
        }
    }

    /// Replace the whole card (§8.6 full update).
    pub(crate) fn replace(&mut self, card: Value, elements: Vec<Element>, now: Instant) {
        let streaming = card
            .pointer("/config/streaming_mode")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if streaming && !self.streaming_mode {
            self.streaming_since = Some(now);
        }
        if !streaming {
            self.streaming_since = None;
        }
        self.streaming_mode = streaming;
        self.summary = card
            .pointer("/config/summary/content")
            .and_then(Value::as_str)
            .map(str::to_owned);
        self.card = card;
        self.elements = elements;
        self.refresh_text();
    }

    /// Remove element `element_id` from the card JSON and the element list.
    pub(crate) fn remove_element(&mut self, element_id: &str) {
        fn strip(value: &mut Value, element_id: &str) {
            match value {
                Value::Array(items) => {
                    items.retain(|item| item.get("element_id").and_then(Value::as_str) != Some(element_id));
                    items.iter_mut().for_each(|item| strip(item, element_id));
                }
                Value::Object(map) => map.values_mut().for_each(|child| strip(child, element_id)),
                _ => {}
            }
        }
        if let Some(body) = self.card.get_mut("body") {
            strip(body, element_id);
        }
        self.elements.retain(|e| e.element_id != element_id);
        self.refresh_text();
    }

    /// When the platform ends this card's streaming mode, if it is on.
    pub(crate) fn streaming_ends(&self, config: &EmulatorConfig) -> Option<Instant> {
        self.streaming_since
            .filter(|_| self.streaming_mode)
            .map(|since| since + config.streaming_window)
    }

    /// End streaming mode if its window is over (§8.5's auto-close).
    pub(crate) fn close_expired_streaming(&mut self, config: &EmulatorConfig, now: Instant) {
        if self.streaming_ends(config).is_some_and(|end| end <= now) {
            tracing::info!(card_id = %self.card_id, "streaming mode closed by the platform after its window");
            self.streaming_mode = false;
            self.streaming_since = None;
            if let Some(config) = self.card.get_mut("config").and_then(Value::as_object_mut) {
                config.insert("streaming_mode".to_owned(), Value::Bool(false));
            }
            self.record("auto_close", None, None, None, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::markdown_tables;

    #[test]
    fn tables_are_counted_as_gfm_reads_them() {
        let table = "| a | b |\n| --- | :-: |\n| 1 | 2 |\n";
        assert_eq!(markdown_tables(table), 1);
        assert_eq!(markdown_tables(&format!("{table}\ntext\n\n{table}")), 2);
        // In a code block, without a delimiter row, or with cells that do not match: no table.
        assert_eq!(markdown_tables(&format!("```\n{table}```\n")), 0);
        assert_eq!(markdown_tables("| a | b |\n| 1 | 2 |\n"), 0);
        assert_eq!(markdown_tables("| a | b |\n|---|\n"), 0);
        // A last delimiter row without its newline still makes a table.
        assert_eq!(markdown_tables("a | b\n--|--"), 1);
    }
}
