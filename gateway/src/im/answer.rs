//! Answering one message, whatever its platform: route it, generate or fetch the answer, deliver it, and
//! record how it ended.
//!
//! Routing: a sender over their rate gets a short "slow down" answer; a message a skill claims gets the
//! skill's answer (its actions carried out: a session reset, an escalation through the adapter); everything
//! else goes to the model with the conversation's session history (trimmed to its context, newest turns
//! kept), through the shared generation path (`generation`); a full engine queue gets a "busy" answer and
//! a failed generation says why. Every message ends with one delivery metric and one transaction: its
//! audit record, its session turn and its outcome in the outbox.

use std::sync::Arc;

use engine::tool_calls::{HermesStream, Piece};
use engine::{ChatMessage, EngineError, GenerateRequest};
use tokio::sync::watch;
use tokio::time::Instant;

use super::adapter::{Adapter, ChatKind, Envelope};
use super::cards::Deliverer;
use super::draft::{Draft, Failure, Generated, BUSY, SLOW_DOWN};
use super::outbox::Job;
use super::settings::GroupSessions;
use crate::access_rules::{AccessRules, Sender};
use crate::audit::{AuditLog, AuditRecord, Handler, Outcome};
use crate::generation::{self, PromptLimits};
use crate::kb;
use crate::metrics;
use crate::routing::{Loaded, ModelRouter};
use crate::sessions::SessionStore;
use crate::skills::calls::SkillCall;
use crate::skills::{
    CallOutcome, CallStatus, HttpSkill, Skill, SkillAction, SkillContext, SkillInput, SkillSet, ToolUse,
};

/// How a message is to be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A skill or the model.
    Normal,
    /// The sender is over their rate: a short "slow down" answer.
    RateLimited,
}

/// What answering needs.
pub struct Answerer<A: Adapter> {
    /// The adapter's cards and text, under the connector's budget; and the outbox.
    pub deliverer: Arc<Deliverer<A>>,
    /// Which model answers; each answer holds its model until it ends (see `routing`).
    pub models: Arc<ModelRouter>,
    /// The tokenizer pool of the generation path.
    pub prompts: Arc<PromptLimits>,
    /// Conversation histories.
    pub sessions: SessionStore,
    /// Answers without the model; reloadable.
    pub skills: Arc<SkillSet>,
    /// What skills may look at.
    pub skill_context: SkillContext,
    pub audit: AuditLog,
    /// Who may be answered, and with which skills and models.
    pub access: Arc<AccessRules>,
}

impl<A: Adapter> Answerer<A> {
    /// The session `envelope` continues: its 1:1 chat, its group, or (configured) its group and sender.
    pub fn session_key(&self, envelope: &Envelope) -> String {
        let adapter = &self.deliverer.adapter;
        let base = format!("{}:{}:{}", A::PLATFORM, adapter.account(), envelope.conversation);
        match (envelope.chat, adapter.settings().group_sessions) {
            (ChatKind::Group, GroupSessions::GroupUser) => format!("{base}:{}", envelope.sender),
            _ => base,
        }
    }

    /// Answer `job` and record how it ended. Never panics on platform or engine errors; they end the job
    /// with a fallback or a logged failure.
    ///
    /// The audit record, the session turn and the message's outcome are written in one transaction once
    /// the answer is delivered and its last card closed. A crash before that commit leaves the message to
    /// be answered again (its cards are found again), with nothing recorded twice.
    ///
    /// `stored`: when the message was stored (or read back to be resumed), which the metrics' time to first
    /// visible text counts from.
    pub async fn answer(self: &Arc<Self>, job: Job<A::Message>, route: Route, stored: Instant) {
        let started = Instant::now();
        let envelope = &job.envelope;
        let question = envelope.text.clone();
        let session = self.session_key(envelope);
        let mut record = AuditRecord {
            at_ms: crate::db::now_ms(),
            platform: A::PLATFORM.to_owned(),
            msg_id: envelope.id.clone(),
            conversation_id: envelope.conversation.clone(),
            session: session.clone(),
            sender_id: envelope.sender.clone(),
            sender_nick: envelope.sender_nick.clone(),
            handler: Handler::RateLimited,
            question: question.clone(),
            answer: String::new(),
            first_visible_ms: None,
            prompt_tokens: 0,
            completion_tokens: 0,
            context_turns: 0,
            // Set once delivery ended.
            outcome: Outcome::Failed,
        };
        let deliverer = &self.deliverer;
        let mut busy = false;
        let mut turn = None;
        let sender = Sender {
            platform: A::PLATFORM,
            user: &envelope.sender,
            group: (envelope.chat == ChatKind::Group).then_some(envelope.conversation.as_str()),
        };
        let decision = self.access.decide(&sender);
        let matched = match (route, &decision) {
            (Route::Normal, Ok(_)) => self.skills.find(&question),
            _ => None,
        };
        // The model is routed once: the one the access rules check is the one that answers.
        let model = (route == Route::Normal && matched.is_none()).then(|| self.models.route());
        let refusal = match (&decision, &matched, &model) {
            (Err(refusal), _, _) => Some(refusal.clone()),
            (Ok(role), Some(matched), _) => self.access.may_use_skill(*role, matched.skill.name()).err(),
            (Ok(role), None, Some(model)) => self.access.may_use_model(*role, &model.name).err(),
            (Ok(_), None, None) => None,
        };
        let delivered = if let Some(refusal) = refusal {
            tracing::info!(sender = %envelope.sender, %refusal, "refused by the access rules");
            metrics::im_refusal(A::PLATFORM);
            if let Some(http) = matched.as_ref().and_then(|m| m.skill.http()) {
                self.audit_call(envelope, http.name(), CallStatus::Refused, None, 0)
                    .await;
            }
            let text = self.access.answer(&refusal).to_owned();
            record.handler = Handler::Refused(refusal.to_string());
            record.answer = text.clone();
            deliverer.deliver_fixed(&job, &text).await
        } else if route == Route::RateLimited {
            record.answer = SLOW_DOWN.to_owned();
            deliverer.deliver_fixed(&job, SLOW_DOWN).await
        } else if let Some(matched) = matched {
            record.handler = Handler::Skill(matched.skill.name().to_owned());
            let input = SkillInput {
                text: &question,
                args: &matched.args,
                sender_id: &envelope.sender,
                sender_nick: &envelope.sender_nick,
            };
            let text = if let Some(http) = matched.skill.http() {
                let outcome = http.call(&input).await;
                let latency = outcome.latency.as_millis() as i64;
                self.audit_call(envelope, http.name(), outcome.status, outcome.http_status, latency)
                    .await;
                outcome.text
            } else {
                let reply = matched.skill.answer(&input, &self.skill_context);
                let mut text = reply.text;
                for action in reply.actions {
                    match action {
                        SkillAction::ResetSession => {
                            if let Err(err) = self.sessions.reset(&session).await {
                                tracing::warn!(cause = %err, "cannot reset the session");
                            }
                        }
                        SkillAction::Escalate { to, summary } => {
                            match deliverer.adapter.escalate(&to, &summary).await {
                                Ok(()) => tracing::info!(to, "conversation escalated to a person"),
                                Err(err) => {
                                    tracing::warn!(to, cause = %err, "cannot reach the escalation contact");
                                    text = "Sorry, I could not reach a colleague just now; please try again later."
                                        .to_owned();
                                }
                            }
                        }
                    }
                }
                text
            };
            record.answer = text.clone();
            deliverer.deliver_fixed(&job, &text).await
        } else {
            let model = model.unwrap_or_else(|| self.models.route());
            record.handler = Handler::Model(model.name.to_string());
            let history = self.sessions.history(&session).await.unwrap_or_else(|err| {
                tracing::warn!(cause = %err, "cannot read the session; answering without history");
                Vec::new()
            });
            let (draft_tx, draft_rx) = watch::channel(Draft::default());
            let max_tokens = deliverer.adapter.settings().max_answer_tokens;
            let offers = match &decision {
                Ok(role) => self.tool_offers(*role),
                Err(_) => Vec::new(),
            };
            let admin = matches!(decision, Ok(crate::access_rules::Role::Admin));
            let budget = model.engine.info().context_length / 2;
            let (grounded, sources) = self.ground(envelope, admin, &question, budget).await;
            let generation = tokio::spawn(generate(
                model,
                self.prompts.clone(),
                history,
                grounded,
                Tools {
                    offers,
                    sender: envelope.sender.clone(),
                    question: question.clone(),
                    sources,
                },
                max_tokens,
                draft_tx,
            ));
            let (delivered, generated) = deliverer.deliver_generated(&job, draft_rx, generation).await;
            if let Some(at) = delivered.first_visible {
                metrics::im_first_visible(A::PLATFORM, at.duration_since(stored));
            }
            match generated {
                Some(Ok(generated)) => {
                    if let Some(tool) = &generated.tool {
                        record.handler = match &tool.refusal {
                            Some(why) => Handler::Refused(why.clone()),
                            None => Handler::Skill(tool.skill.clone()),
                        };
                        let outcome = &tool.outcome;
                        let latency = outcome.latency.as_millis() as i64;
                        self.audit_call(envelope, &tool.skill, outcome.status, outcome.http_status, latency)
                            .await;
                    }
                    record.answer = generated.text.clone();
                    record.prompt_tokens = generated.prompt_tokens as i64;
                    record.completion_tokens = generated.completion_tokens as i64;
                    record.context_turns = generated.context_turns as i64;
                    turn = Some((session.clone(), question.clone(), generated.text));
                }
                Some(Err(Failure::Busy)) => {
                    record.answer = BUSY.to_owned();
                    busy = true;
                }
                Some(Err(Failure::Failed(reason))) => record.answer = reason.to_string(),
                None => {}
            }
            delivered
        };
        record.first_visible_ms = delivered
            .first_visible
            .map(|t| t.duration_since(started).as_millis() as i64);
        record.outcome = if busy { Outcome::Busy } else { delivered.outcome };
        metrics::im_delivery(A::PLATFORM, delivered.outcome.as_str());
        // Before the commit: a crash before it answers the message again, which closes the card again.
        if let Some((card, state)) = &delivered.close {
            deliverer.close(card, *state).await;
        }
        // A failed card is marked beside the fallback message (the user's answer never waits for it), and the
        // commit waits for the mark, bounded by the retry bound: a crash in that window answers the message
        // again, while a commit first would leave the card "typing" for good if the process died before the
        // mark went through.
        if let Some(marking) = delivered.marking {
            let _ = marking.await;
        }
        let record = self.audit.masked(record);
        let detail = delivered.via.detail();
        match deliverer
            .outbox
            .settle(&envelope.id, delivered.outcome, detail, Some(record), turn)
            .await
        {
            Ok(true) => {
                self.audit.note_written();
                tracing::info!(outcome = ?delivered.outcome, detail, "message finished")
            }
            Ok(false) => tracing::warn!("message was already finished"),
            Err(err) => {
                tracing::error!(cause = %err, "cannot record the message's end; it will be answered again after a restart")
            }
        }
    }
}

impl<A: Adapter> Answerer<A> {
    /// The HTTP skills offered to the model as tools, each with the refusal (audited reason, answer) a
    /// sender of `role` gets when the model calls it and the access rules reserve it.
    fn tool_offers(&self, role: crate::access_rules::Role) -> Vec<ToolOffer> {
        self.skills
            .registry()
            .tools()
            .iter()
            .map(|skill| ToolOffer {
                skill: skill.clone(),
                refusal: self
                    .access
                    .may_use_skill(role, skill.name())
                    .err()
                    .map(|refusal| (refusal.to_string(), self.access.answer(&refusal).to_owned())),
            })
            .collect()
    }

    /// `question` with the knowledge base passages its sender may read (at most `budget` characters of
    /// them), and the documents to cite; the question as it is without a knowledge base or a match.
    async fn ground(&self, envelope: &Envelope, admin: bool, question: &str, budget: usize) -> (String, Vec<String>) {
        let Some(knowledge) = self.skills.knowledge() else {
            return (question.to_owned(), Vec::new());
        };
        let group = (envelope.chat == ChatKind::Group).then(|| envelope.conversation.clone());
        let sender = Sender {
            platform: A::PLATFORM,
            user: &envelope.sender,
            group: group.as_deref(),
        };
        let departments = self.access.departments(&sender).to_vec();
        let query = question.to_owned();
        let found = tokio::task::spawn_blocking(move || {
            let reader = kb::Reader {
                group: group.as_deref(),
                departments: &departments,
                admin,
            };
            knowledge.search(&query, &reader, KB_PASSAGES)
        })
        .await;
        let mut passages = match found {
            Ok(Ok(passages)) => passages,
            Ok(Err(err)) => {
                tracing::warn!(cause = %err, "cannot search the knowledge base; answering without it");
                Vec::new()
            }
            Err(err) => {
                tracing::warn!(cause = %err, "the knowledge base search failed; answering without it");
                Vec::new()
            }
        };
        let mut used = 0;
        passages.retain(|p| {
            used += p.text.chars().count();
            used <= budget
        });
        if passages.is_empty() {
            return (question.to_owned(), Vec::new());
        }
        (kb::grounded_question(question, &passages), kb::sources(&passages))
    }

    /// Audit one HTTP skill call (a failure to write is logged: the answer was delivered).
    async fn audit_call(
        &self,
        envelope: &Envelope,
        skill: &str,
        status: CallStatus,
        http_status: Option<u16>,
        latency_ms: i64,
    ) {
        let call = SkillCall {
            at_ms: crate::db::now_ms(),
            platform: A::PLATFORM.to_owned(),
            msg_id: envelope.id.clone(),
            sender_id: envelope.sender.clone(),
            skill: skill.to_owned(),
            status,
            http_status,
            latency_ms,
        };
        tracing::info!(skill, sender = %envelope.sender, %status, ?http_status, latency_ms, "HTTP skill called");
        if let Err(err) = self.audit.record_call(call).await {
            tracing::warn!(cause = %err, "cannot audit the HTTP skill call");
        }
    }
}

/// An HTTP skill offered to the model.
struct ToolOffer {
    skill: Arc<HttpSkill>,
    /// `Some((why, answer))`: the sender may not use it.
    refusal: Option<(String, String)>,
}

/// The knowledge base passages a model answer may draw on.
const KB_PASSAGES: usize = 3;

/// The aids of one answer: the tools offered, who asks (for the skills' `{sender}`), and the knowledge base
/// documents the question was grounded in (cited under the answer).
struct Tools {
    offers: Vec<ToolOffer>,
    sender: String,
    /// The question as asked (the prompt's may carry knowledge base passages), for the skills' `{text}`.
    question: String,
    sources: Vec<String>,
}

/// Generate the answer to `question` after the session's `history` through the shared generation path,
/// publishing the text as it grows. Returns the whole text with its counts, or why it failed; the caller
/// stores the turn with the message's outcome.
async fn generate(
    model: Arc<Loaded>,
    prompts: Arc<PromptLimits>,
    history: Vec<ChatMessage>,
    question: String,
    tools: Tools,
    max_tokens: usize,
    draft: watch::Sender<Draft>,
) -> Result<Generated, Failure> {
    let fail = |draft: &watch::Sender<Draft>, failure: Failure| {
        draft.send_modify(|d| d.end = Some(Err(failure.clone())));
        Err(failure)
    };
    let engine = model.engine.clone();
    let context_length = engine.info().context_length;
    let reserve = max_tokens.min(context_length / 2);
    let chat_tools = engine::ChatTools {
        tools: tools.offers.iter().map(|o| o.skill.tool_definition()).collect(),
        extras: Vec::new(),
    };
    let names: Vec<String> = tools.offers.iter().map(|o| o.skill.name().to_owned()).collect();
    let built =
        generation::fitted_chat_prompt_with_tools(&prompts, engine, history, question.clone(), reserve, chat_tools);
    let (prompt, context_turns) = match built.await {
        Ok(built) => built,
        Err(err) => return fail(&draft, Failure::Failed(Arc::new(err))),
    };
    let room = context_length.saturating_sub(prompt.len()).max(1);
    let mut events = match generation::submit(&model, GenerateRequest::greedy(prompt, max_tokens.min(room))) {
        Ok(events) => events,
        Err(err @ EngineError::Overloaded { .. }) => {
            tracing::info!(cause = %err, "the engine is overloaded; answering busy");
            return fail(&draft, Failure::Busy);
        }
        Err(err) => return fail(&draft, Failure::Failed(Arc::new(err.into()))),
    };
    // With tools, the text shown is the text outside calls (a call is held back until it is whole).
    let mut reader = (!names.is_empty()).then(|| HermesStream::lenient(names));
    let mut shown = String::new();
    let mut calls = Vec::new();
    let mut take = |pieces: Vec<Piece>, shown: &mut String| {
        for piece in pieces {
            match piece {
                Piece::Text(text) => shown.push_str(&text),
                Piece::Call(Ok(call)) => calls.push(call),
                Piece::Call(Err(malformed)) => tracing::info!(%malformed, "the model wrote a malformed tool call"),
            }
        }
    };
    let collected = generation::collect(&mut events, |chunk, text| {
        let snapshot = match &mut reader {
            Some(reader) => {
                take(reader.push(&chunk.text), &mut shown);
                shown.clone()
            }
            None => text.to_owned(),
        };
        draft.send_modify(|d| d.text = snapshot);
    })
    .await;
    if let Some(reader) = reader {
        take(reader.finish(), &mut shown);
    }
    match collected {
        Ok((mut text, done)) => {
            let call = calls
                .into_iter()
                .find_map(|call| Some((tools.offers.iter().find(|o| o.skill.name() == call.name)?, call)));
            let mut tool = None;
            if let Some((offer, call)) = call {
                let query = call
                    .arguments
                    .get("query")
                    .and_then(|q| q.as_str())
                    .unwrap_or(&tools.question);
                let used = match &offer.refusal {
                    Some((why, answer)) => ToolUse {
                        skill: call.name.clone(),
                        outcome: CallOutcome {
                            text: answer.clone(),
                            status: CallStatus::Refused,
                            http_status: None,
                            latency: std::time::Duration::ZERO,
                        },
                        refusal: Some(why.clone()),
                    },
                    None => {
                        let input = SkillInput {
                            text: &tools.question,
                            args: query,
                            sender_id: &tools.sender,
                            sender_nick: "",
                        };
                        ToolUse {
                            skill: call.name.clone(),
                            outcome: offer.skill.call(&input).await,
                            refusal: None,
                        }
                    }
                };
                text = used.outcome.text.clone();
                tool = Some(used);
            } else if !shown.trim().is_empty() {
                text = shown;
            }
            if tool.is_none() && !tools.sources.is_empty() {
                text = format!("{}\n\nSources: {}", text.trim_end(), tools.sources.join(", "));
            }
            let snapshot = text.clone();
            draft.send_modify(|d| {
                d.text = snapshot;
                d.end = Some(Ok(()));
            });
            Ok(Generated {
                text,
                prompt_tokens: done.usage.prompt_tokens,
                completion_tokens: done.usage.completion_tokens,
                context_turns,
                tool,
            })
        }
        Err(err) => fail(&draft, Failure::Failed(Arc::new(err.into()))),
    }
}
