//! Skills: answers that do not need the model. Platform-independent: a connector (DingTalk today, Feishu or
//! WeCom later) asks the [`SkillSet`] whether a message triggers a skill, delivers the [`SkillReply`] the
//! way it delivers model answers, and carries out its [`SkillAction`]s (reset the session, hand the
//! conversation to a person). Everything no skill claims goes to the model.
//!
//! Matching: every skill has [`Trigger`]s. A command (`/name`, optionally followed by arguments) beats an
//! exact keyword (the whole message, case-insensitive), which beats a regex; ties go to the higher configured
//! priority, then to the skill registered first. No match: the model (the fallback).
//!
//! Built-ins: `help`, `new` (`/new`: a fresh session), `status` (model, queue depth, uptime) and `escalate`
//! (configured patterns hand the conversation to a named person). Configured skills answer a fixed template
//! (`{text}` is the message, `{args}` a command's arguments), which is also how an `echo` skill is made.
//! The configuration is the `[skills]` section of the config file; [`SkillSet::watch`] reloads it when the
//! file changes and [`SkillSet::reload`] does it on demand (for the admin API).

pub mod calls;
pub mod config;
pub mod http;
mod skill;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use regex::Regex;
use tokio::sync::watch;

pub use calls::CallStatus;
pub use config::{CustomSkill, HttpSkillConfig, SkillError, SkillsConfig, TriggerKind};
pub use http::{CallOutcome, HttpSkill, ToolUse};
pub use skill::{SkillAction, SkillContext, SkillInput, SkillReply, Trigger};

/// An answer that needs no model.
pub trait Skill: Send + Sync {
    /// The name audit records and `help` show.
    fn name(&self) -> &str;
    /// A one-line description for `help`.
    fn description(&self) -> &str;
    /// What triggers it.
    fn triggers(&self) -> &[Trigger];
    /// Breaks ties between skills matched with the same kind of trigger; higher wins.
    fn priority(&self) -> i32 {
        0
    }
    /// Answer `input`. Synchronous and quick: side effects are returned as [`SkillAction`]s.
    fn answer(&self, input: &SkillInput<'_>, context: &SkillContext) -> SkillReply;
    /// An HTTP skill answers by an awaited call instead of [`answer`](Self::answer).
    fn http(&self) -> Option<&HttpSkill> {
        None
    }
}

impl Skill for HttpSkill {
    fn name(&self) -> &str {
        &self.name
    }
    fn description(&self) -> &str {
        &self.description
    }
    fn triggers(&self) -> &[Trigger] {
        &self.triggers
    }
    fn priority(&self) -> i32 {
        self.priority
    }
    /// Not used: the caller sees [`Skill::http`] and awaits [`HttpSkill::call`].
    fn answer(&self, _: &SkillInput<'_>, _: &SkillContext) -> SkillReply {
        SkillReply::text(format!("{} must be called, not answered directly", self.name))
    }
    fn http(&self) -> Option<&HttpSkill> {
        Some(self)
    }
}

/// A skill chosen for a message.
#[derive(Clone)]
pub struct Matched {
    pub skill: Arc<dyn Skill>,
    /// A command's arguments.
    pub args: String,
}

/// The skills of one configuration, in registration order.
pub struct SkillRegistry {
    skills: Vec<Arc<dyn Skill>>,
    /// The HTTP skills offered to the model as tools.
    tools: Vec<Arc<HttpSkill>>,
}

impl SkillRegistry {
    /// An empty registry (every message goes to the model).
    pub fn empty() -> Self {
        Self {
            skills: Vec::new(),
            tools: Vec::new(),
        }
    }

    /// Add a skill; earlier ones win full ties.
    pub fn register(&mut self, skill: Arc<dyn Skill>) {
        self.skills.push(skill);
    }

    /// The built-ins and the configured skills of `config`. A bad regex is an error naming the skill.
    pub fn from_config(config: &SkillsConfig) -> Result<Self, SkillError> {
        config.validate()?;
        let mut registry = Self::empty();
        if !config.enabled {
            return Ok(registry);
        }
        for custom in &config.custom {
            registry.register(Arc::new(Templated::new(custom)?));
        }
        for http in &config.http {
            let skill = Arc::new(HttpSkill::new(http)?);
            if skill.is_tool() {
                registry.tools.push(skill.clone());
            }
            registry.register(skill);
        }
        let help_lines: Vec<String> = registry
            .skills
            .iter()
            .map(|s| format!("- {}: {}", s.name(), s.description()))
            .collect();
        registry.register(Arc::new(Help {
            text: format!("{}\n\n{}", config.help_text, help_lines.join("\n"))
                .trim()
                .to_owned(),
            triggers: help_triggers(),
        }));
        registry.register(Arc::new(NewSession {
            triggers: vec![Trigger::Command("new".to_owned())],
        }));
        registry.register(Arc::new(Status {
            triggers: vec![
                Trigger::Command("status".to_owned()),
                Trigger::Keyword("status".to_owned()),
            ],
        }));
        if !config.escalate_to.is_empty() && !config.escalate_patterns.is_empty() {
            let mut triggers = vec![Trigger::Command("human".to_owned())];
            for pattern in &config.escalate_patterns {
                let regex = Regex::new(pattern).map_err(|e| SkillError::Regex {
                    skill: "escalate".to_owned(),
                    reason: e.to_string(),
                })?;
                triggers.push(Trigger::Regex(regex));
            }
            registry.register(Arc::new(Escalate {
                to: config.escalate_to.clone(),
                reply: config.escalate_reply.clone(),
                triggers,
            }));
        }
        Ok(registry)
    }

    /// The skill `text` triggers, if any: best trigger rank, then priority, then registration order.
    pub fn find(&self, text: &str) -> Option<Matched> {
        let mut best: Option<(u8, i32, &Arc<dyn Skill>, &str)> = None;
        for skill in &self.skills {
            for trigger in skill.triggers() {
                let Some(args) = trigger.matches(text) else { continue };
                let candidate = (trigger.rank(), skill.priority());
                if best
                    .as_ref()
                    .is_none_or(|(rank, priority, ..)| candidate > (*rank, *priority))
                {
                    best = Some((candidate.0, candidate.1, skill, args));
                }
            }
        }
        best.map(|(_, _, skill, args)| Matched {
            skill: skill.clone(),
            args: args.to_owned(),
        })
    }

    /// The HTTP skills offered to the model as tools, in configuration order.
    pub fn tools(&self) -> &[Arc<HttpSkill>] {
        &self.tools
    }

    /// The names of the registered skills, in order.
    pub fn names(&self) -> Vec<String> {
        self.skills.iter().map(|s| s.name().to_owned()).collect()
    }
}

fn help_triggers() -> Vec<Trigger> {
    vec![
        Trigger::Command("help".to_owned()),
        Trigger::Keyword("help".to_owned()),
        Trigger::Keyword("帮助".to_owned()),
    ]
}

/// `help`: the configured help text and every skill's description.
struct Help {
    text: String,
    triggers: Vec<Trigger>,
}

impl Skill for Help {
    fn name(&self) -> &str {
        "help"
    }
    fn description(&self) -> &str {
        "this list"
    }
    fn triggers(&self) -> &[Trigger] {
        &self.triggers
    }
    fn answer(&self, _: &SkillInput<'_>, _: &SkillContext) -> SkillReply {
        SkillReply::text(format!(
            "{}\n- help: this list\n- /new: start a new conversation\n- status: model, queue and uptime",
            self.text
        ))
    }
}

/// `/new`: forget the session.
struct NewSession {
    triggers: Vec<Trigger>,
}

impl Skill for NewSession {
    fn name(&self) -> &str {
        "new"
    }
    fn description(&self) -> &str {
        "start a new conversation"
    }
    fn triggers(&self) -> &[Trigger] {
        &self.triggers
    }
    fn answer(&self, _: &SkillInput<'_>, _: &SkillContext) -> SkillReply {
        SkillReply {
            text: "Started a new conversation; earlier messages are forgotten.".to_owned(),
            actions: vec![SkillAction::ResetSession],
        }
    }
}

/// `status`: the active model, its queue and the gateway's uptime.
struct Status {
    triggers: Vec<Trigger>,
}

impl Skill for Status {
    fn name(&self) -> &str {
        "status"
    }
    fn description(&self) -> &str {
        "model, queue depth and uptime"
    }
    fn triggers(&self) -> &[Trigger] {
        &self.triggers
    }
    fn answer(&self, _: &SkillInput<'_>, context: &SkillContext) -> SkillReply {
        let model = context.models.active();
        let stats = model.engine.stats();
        let uptime = context.started.elapsed().as_secs();
        SkillReply::text(format!(
            "model: {}\nrunning: {}\nqueue depth: {}\nuptime: {}h {}m {}s",
            model.name,
            stats.running,
            stats.waiting,
            uptime / 3600,
            uptime / 60 % 60,
            uptime % 60
        ))
    }
}

/// Escalation: hand the conversation to a person.
struct Escalate {
    to: String,
    reply: String,
    triggers: Vec<Trigger>,
}

impl Skill for Escalate {
    fn name(&self) -> &str {
        "escalate"
    }
    fn description(&self) -> &str {
        "hand the conversation to a person"
    }
    fn triggers(&self) -> &[Trigger] {
        &self.triggers
    }
    fn answer(&self, input: &SkillInput<'_>, _: &SkillContext) -> SkillReply {
        let who = if input.sender_nick.is_empty() {
            input.sender_id
        } else {
            input.sender_nick
        };
        SkillReply {
            text: self.reply.clone(),
            actions: vec![SkillAction::Escalate {
                to: self.to.clone(),
                summary: format!("{who} ({}) asks for a person: {}", input.sender_id, input.text),
            }],
        }
    }
}

/// A configured skill: a fixed template.
struct Templated {
    name: String,
    description: String,
    reply: String,
    priority: i32,
    triggers: Vec<Trigger>,
}

impl Templated {
    fn new(config: &CustomSkill) -> Result<Self, SkillError> {
        let mut triggers = Vec::new();
        for pattern in &config.patterns {
            triggers.push(match config.trigger {
                TriggerKind::Command => Trigger::Command(pattern.trim_start_matches('/').to_owned()),
                TriggerKind::Keyword => Trigger::Keyword(pattern.trim().to_owned()),
                TriggerKind::Regex => Trigger::Regex(Regex::new(pattern).map_err(|e| SkillError::Regex {
                    skill: config.name.clone(),
                    reason: e.to_string(),
                })?),
            });
        }
        Ok(Self {
            name: config.name.clone(),
            description: config.description.clone(),
            reply: config.reply.clone(),
            priority: config.priority,
            triggers,
        })
    }
}

impl Skill for Templated {
    fn name(&self) -> &str {
        &self.name
    }
    fn description(&self) -> &str {
        &self.description
    }
    fn triggers(&self) -> &[Trigger] {
        &self.triggers
    }
    fn priority(&self) -> i32 {
        self.priority
    }
    fn answer(&self, input: &SkillInput<'_>, _: &SkillContext) -> SkillReply {
        SkillReply::text(self.reply.replace("{text}", input.text).replace("{args}", input.args))
    }
}

/// The live skills: the current registry, swapped whole on reload, and the file it came from.
pub struct SkillSet {
    current: RwLock<Arc<SkillRegistry>>,
    /// The config file whose `[skills]` section is reloaded; `None`: fixed skills.
    file: Option<PathBuf>,
    /// Bumped on every successful reload, so callers can await one.
    version: watch::Sender<u64>,
    /// The knowledge base model answers draw on, if one is attached (see [`SkillSet::attach_knowledge`]).
    knowledge: std::sync::OnceLock<Arc<crate::kb::KnowledgeBase>>,
}

impl SkillSet {
    /// Skills from `config`, fixed (no file to reload from).
    pub fn new(config: &SkillsConfig) -> Result<Self, SkillError> {
        Self::build(SkillRegistry::from_config(config)?, None)
    }

    /// Skills from `config`, reloadable from the `[skills]` section of `file`.
    pub fn with_file(config: &SkillsConfig, file: PathBuf) -> Result<Self, SkillError> {
        Self::build(SkillRegistry::from_config(config)?, Some(file))
    }

    fn build(registry: SkillRegistry, file: Option<PathBuf>) -> Result<Self, SkillError> {
        Ok(Self {
            current: RwLock::new(Arc::new(registry)),
            file,
            version: watch::channel(0).0,
            knowledge: std::sync::OnceLock::new(),
        })
    }

    /// Let model answers draw on `knowledge` (once; a second knowledge base is ignored). It travels with the
    /// skills because every connector is handed them.
    pub fn attach_knowledge(&self, knowledge: Arc<crate::kb::KnowledgeBase>) {
        let _ = self.knowledge.set(knowledge);
    }

    /// The attached knowledge base, if any.
    pub fn knowledge(&self) -> Option<Arc<crate::kb::KnowledgeBase>> {
        self.knowledge.get().cloned()
    }

    /// The skill `text` triggers, if any.
    pub fn find(&self, text: &str) -> Option<Matched> {
        self.registry().find(text)
    }

    /// The current registry.
    pub fn registry(&self) -> Arc<SkillRegistry> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reloads so far; changes with every successful reload.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Replace the skills with `config`'s.
    pub fn replace(&self, config: &SkillsConfig) -> Result<(), SkillError> {
        let registry = Arc::new(SkillRegistry::from_config(config)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = registry;
        self.version.send_modify(|v| *v += 1);
        Ok(())
    }

    /// Read the file's `[skills]` section again and swap it in; on error the old skills stay. Without a
    /// file, nothing changes.
    pub fn reload(&self) -> Result<(), SkillError> {
        let Some(file) = &self.file else { return Ok(()) };
        let config = crate::config::Config::load_with_env(Some(file), []).map_err(|e| SkillError::Load {
            path: file.clone(),
            reason: e.to_string(),
        })?;
        self.replace(&config.skills)?;
        tracing::info!(file = %file.display(), skills = ?self.registry().names(), "skills reloaded");
        Ok(())
    }

    /// Poll the file's modification time every `every` and reload when it changes, until the returned
    /// task is aborted or the set is dropped.
    pub fn watch(self: &Arc<Self>, every: Duration) -> Option<tokio::task::JoinHandle<()>> {
        let file = self.file.clone()?;
        let weak = Arc::downgrade(self);
        Some(tokio::spawn(async move {
            let mut seen = modified(&file);
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(skills) = weak.upgrade() else { return };
                let now = modified(&file);
                if now != seen {
                    seen = now;
                    if let Err(err) = skills.reload() {
                        tracing::warn!(cause = %err, "the changed skills config is invalid; keeping the previous skills");
                    }
                }
            }
        }))
    }
}

fn modified(file: &Path) -> Option<(SystemTime, u64)> {
    std::fs::metadata(file)
        .ok()
        .and_then(|m| Some((m.modified().ok()?, m.len())))
}

#[cfg(test)]
mod tests;
