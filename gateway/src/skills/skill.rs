//! What a skill is given and gives back: its [`Trigger`]s, the [`SkillInput`] and [`SkillContext`] it answers
//! from, and its [`SkillReply`]. The [`Skill`](super::Skill) trait itself is in the parent module.

use std::sync::Arc;
use std::time::Instant;

use regex::Regex;

use crate::routing::ModelRouter;

/// What makes a skill answer a message.
#[derive(Debug, Clone)]
pub enum Trigger {
    /// `/name` as the first word (case-insensitive); what follows is the skill's arguments.
    Command(String),
    /// The whole message, trimmed, equals this (case-insensitive).
    Keyword(String),
    /// The regex matches somewhere in the message.
    Regex(Regex),
}

impl Trigger {
    /// The match rank: command 3, keyword 2, regex 1 (the model is 0).
    pub(crate) fn rank(&self) -> u8 {
        match self {
            Self::Command(_) => 3,
            Self::Keyword(_) => 2,
            Self::Regex(_) => 1,
        }
    }

    /// The arguments when `text` triggers this, else `None`.
    pub(crate) fn matches<'t>(&self, text: &'t str) -> Option<&'t str> {
        let text = text.trim();
        match self {
            Self::Command(name) => {
                let rest = text.strip_prefix('/')?;
                let (word, args) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                word.eq_ignore_ascii_case(name).then(|| args.trim())
            }
            Self::Keyword(word) => (text.to_lowercase() == word.to_lowercase()).then_some(""),
            Self::Regex(regex) => regex.is_match(text).then_some(""),
        }
    }
}

/// What a skill sees of the message.
#[derive(Debug, Clone)]
pub struct SkillInput<'a> {
    /// The message text (mention stripped).
    pub text: &'a str,
    /// A command's arguments (empty otherwise).
    pub args: &'a str,
    /// Who wrote it (platform user id) and their display name.
    pub sender_id: &'a str,
    pub sender_nick: &'a str,
}

/// What the platform lends skills: the models (for `status`) and when the gateway started.
#[derive(Clone)]
pub struct SkillContext {
    pub models: Arc<ModelRouter>,
    pub started: Instant,
}

/// Something the connector does besides delivering the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkillAction {
    /// Forget the conversation's session (the history sent to the model).
    ResetSession,
    /// Send `summary` to the person `to` (a platform user id) so they take over.
    Escalate { to: String, summary: String },
}

/// A skill's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkillReply {
    /// Delivered like a model answer (a finalized card on DingTalk).
    pub text: String,
    pub actions: Vec<SkillAction>,
}

impl SkillReply {
    pub(crate) fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            actions: Vec::new(),
        }
    }
}
