//! [`EngineLoop`]: the step loop on the engine thread.
//!
//! Each turn: take commands (block on the channel when idle, drain it without waiting when busy); drop
//! requests whose stream receiver is gone, freeing their blocks that same step; ask the [`Scheduler`] for a
//! step; run the model on it; sample, detokenize and check stop rules for every sequence that produced logits;
//! send events. The loop owns all per-request state; nothing here is shared but counters.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Instant;

use models::{Batch, CausalLm, KvCache, SeqInput};
use tokio::sync::mpsc::UnboundedSender;

use crate::handle::Shared;
use crate::sampler::Sampler;
use crate::scheduler::{Scheduled, Scheduler, SchedulerConfig, SeqId};
use crate::stop::{StopChecker, StopOutcome};
use crate::{
    Completion, Detokenizer, EngineConfig, EngineError, Event, FinishReason, GenerateRequest, Grammar, Timings,
    TokenChunk, Usage,
};

/// What the handle sends to the engine thread.
pub(crate) enum Command {
    /// A validated request with its reserved waiting slot.
    Add(Box<NewRequest>),
    /// Stop: fail what is in flight and exit.
    Shutdown,
}

/// A request as it enters the engine.
pub(crate) struct NewRequest {
    pub id: SeqId,
    pub req: GenerateRequest,
    pub events: UnboundedSender<Event>,
    pub submitted: Instant,
    /// The caller's span (request id, route), linked from each step's span.
    pub span: tracing::Span,
}

/// Per-request state kept by the loop.
struct Active {
    events: UnboundedSender<Event>,
    sampler: Sampler,
    stop: StopChecker,
    detok: Detokenizer,
    /// The output constraint, when the request has one: masks logits before sampling.
    grammar: Option<Grammar>,
    prompt_len: usize,
    generated: usize,
    /// Still counted in the shared waiting counter (not yet scheduled).
    waiting: bool,
    submitted: Instant,
    admitted: Option<Instant>,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    span: tracing::Span,
}

impl Active {
    fn timings(&self) -> Timings {
        let first = self.first_token.unwrap_or(self.submitted);
        Timings {
            queue: self.admitted.map(|a| a - self.submitted).unwrap_or_default(),
            time_to_first_token: first - self.submitted,
            decode: self.last_token.map(|l| l - first).unwrap_or_default(),
        }
    }
}

/// The engine thread's state.
pub(crate) struct EngineLoop {
    model: Box<dyn CausalLm>,
    cache: KvCache,
    scheduler: Scheduler,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Command>,
    active: HashMap<SeqId, Active>,
    context_length: usize,
    eos: Vec<u32>,
}

impl EngineLoop {
    pub(crate) fn new(
        model: Box<dyn CausalLm>,
        cache: KvCache,
        config: &EngineConfig,
        shared: Arc<Shared>,
        rx: mpsc::Receiver<Command>,
    ) -> Self {
        let scheduler = Scheduler::new(SchedulerConfig {
            max_batch_tokens: config.max_batch_tokens,
            max_running: config.max_running,
            block_size: cache.block_size(),
            num_blocks: cache.num_blocks(),
            prefix_caching: config.prefix_caching,
        });
        let context_length = shared.info.context_length;
        let eos = shared.tokenizer.eos_token_ids().to_vec();
        Self {
            model,
            cache,
            scheduler,
            shared,
            rx,
            active: HashMap::new(),
            context_length,
            eos,
        }
    }

    /// Run until shutdown or until every handle is gone.
    pub(crate) fn run(mut self) {
        let _span = tracing::info_span!("engine").entered();
        loop {
            if self.scheduler.is_idle() {
                match self.rx.recv() {
                    Ok(cmd) => {
                        if !self.command(cmd) {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
            let mut stop = false;
            while let Ok(cmd) = self.rx.try_recv() {
                if !self.command(cmd) {
                    stop = true;
                    break;
                }
            }
            if stop {
                break;
            }
            self.drop_cancelled();
            self.step();
        }
        let ids: Vec<SeqId> = self.active.keys().copied().collect();
        for id in ids {
            self.fail(id, EngineError::ShutDown);
        }
        tracing::info!("engine stopped");
    }

    /// Apply a command; false on shutdown.
    fn command(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Shutdown => false,
            Command::Add(new) => {
                let NewRequest {
                    id,
                    req,
                    events,
                    submitted,
                    span,
                } = *new;
                let prompt_len = req.prompt.len();
                let mut stop_params = req.stop.clone();
                // Generation also ends when the context is full.
                stop_params.max_tokens = stop_params.max_tokens.min(self.context_length - prompt_len);
                let active = Active {
                    sampler: Sampler::new(req.sampling.clone(), &req.prompt, req.logprobs),
                    stop: StopChecker::new(stop_params, &self.eos),
                    detok: Detokenizer::new(true),
                    grammar: req.grammar,
                    events,
                    prompt_len,
                    generated: 0,
                    waiting: true,
                    submitted,
                    admitted: None,
                    first_token: None,
                    last_token: None,
                    span,
                };
                self.scheduler.add(id, req.prompt);
                self.active.insert(id, active);
                let mut stats = self.shared.stats.lock().expect("engine stats");
                stats.requests_total += 1;
                stats.prompt_tokens_total += prompt_len as u64;
                true
            }
        }
    }

    /// Release the waiting slot of a request that leaves the queue.
    fn leave_queue(shared: &Shared, active: &mut Active) {
        if active.waiting {
            active.waiting = false;
            shared.waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn drop_cancelled(&mut self) {
        let gone: Vec<SeqId> = self
            .active
            .iter()
            .filter(|(_, a)| a.events.is_closed())
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            let mut a = self.active.remove(&id).expect("cancelled request is active");
            Self::leave_queue(&self.shared, &mut a);
            self.scheduler.remove(id);
            tracing::debug!(parent: &a.span, id, generated = a.generated, "request cancelled");
            self.shared.stats.lock().expect("engine stats").requests_cancelled += 1;
        }
    }

    /// End a request with an error event.
    fn fail(&mut self, id: SeqId, err: EngineError) {
        self.scheduler.remove(id);
        if let Some(mut a) = self.active.remove(&id) {
            Self::leave_queue(&self.shared, &mut a);
            tracing::warn!(parent: &a.span, id, error = %err, "request failed");
            self.publish_release().requests_failed += 1;
            let _ = a.events.send(Event::Error(err));
        }
    }

    fn step(&mut self) {
        let step = self.scheduler.schedule();
        let now = Instant::now();
        for &id in &step.admitted {
            if let Some(a) = self.active.get_mut(&id) {
                a.admitted.get_or_insert(now);
                Self::leave_queue(&self.shared, a);
            }
            let cached = self.scheduler.get(id).map_or(0, |s| s.cached_tokens);
            self.shared.stats.lock().expect("engine stats").prefix_cache_hit_tokens += cached as u64;
        }
        for id in step.out_of_memory.clone() {
            let err = self.scheduler.out_of_blocks_error(id);
            self.fail(id, err);
        }
        if step.scheduled.is_empty() {
            self.publish_stats(&step.preempted, false);
            return;
        }

        let mut logits = match self.forward(&step.scheduled) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "forward pass failed");
                for s in &step.scheduled {
                    self.fail(s.id, EngineError::Model(e.to_string()));
                }
                self.publish_stats(&step.preempted, true);
                return;
            }
        };
        self.scheduler.complete(&step.scheduled);
        let mut row = 0;
        for s in &step.scheduled {
            if s.completes {
                // Each row is sampled once: taken, not copied (8 × 49 152 floats a SmolLM2 step).
                let mut logits = std::mem::take(&mut logits[row]);
                row += 1;
                self.emit(s.id, &mut logits);
            }
        }
        self.publish_stats(&step.preempted, true);
    }

    /// Run the model on the scheduled chunks; one logits row per completing sequence, in order.
    fn forward(&mut self, scheduled: &[Scheduled]) -> Result<Vec<Vec<f32>>, models::ModelError> {
        let mut tokens = Vec::new();
        let mut seqs = Vec::with_capacity(scheduled.len());
        for s in scheduled {
            let seq = self.scheduler.get(s.id).expect("scheduled sequence exists");
            tokens.extend_from_slice(&seq.tokens[seq.num_computed..seq.num_computed + s.num_new]);
            seqs.push(SeqInput {
                num_computed: seq.num_computed,
                num_new: s.num_new,
                block_table: &seq.blocks,
                prompt_len: seq.prompt_len,
                want_logits: s.completes,
                all_logits: false,
            });
        }
        let span = tracing::debug_span!("step", tokens = tokens.len(), seqs = seqs.len());
        for s in scheduled {
            if let Some(a) = self.active.get(&s.id) {
                span.follows_from(&a.span);
            }
        }
        let _enter = span.enter();
        let logits = self.model.forward(
            &Batch {
                tokens: &tokens,
                seqs: &seqs,
            },
            &mut self.cache,
        )?;
        Ok(logits.to_vec2::<f32>()?)
    }

    /// Sample the next token of `id` and stream it; finish the request when a stop rule fires.
    fn emit(&mut self, id: SeqId, logits: &mut [f32]) {
        let Some(a) = self.active.get_mut(&id) else { return };
        if let Some(grammar) = &mut a.grammar {
            // This row only, after the forward pass: the batch's other rows never see it.
            if let Err(e) = grammar.mask(logits) {
                self.fail(id, e);
                return;
            }
        }
        let (token, logprob) = a.sampler.sample(logits);
        if let Some(grammar) = &mut a.grammar {
            if let Err(e) = grammar.consume(token) {
                self.fail(id, e);
                return;
            }
        }
        let now = Instant::now();
        a.first_token.get_or_insert(now);
        a.last_token = Some(now);
        a.generated += 1;
        self.scheduler.push_token(id, token);
        self.shared.stats.lock().expect("engine stats").generated_tokens_total += 1;
        let text = if a.stop.is_stop_token(token) {
            String::new()
        } else {
            match a.detok.push(&self.shared.tokenizer, token) {
                Ok(t) => t,
                Err(e) => {
                    self.fail(id, e);
                    return;
                }
            }
        };
        let outcome = a.stop.push(token, &text);
        let (text, finish) = match outcome {
            StopOutcome::Continue { text } => (text, None),
            StopOutcome::Stop { text, reason } => (text, Some(reason)),
        };
        let mut text = text;
        if finish == Some(FinishReason::Length) || (finish == Some(FinishReason::Stop) && a.stop.is_stop_token(token)) {
            // Nothing was cut: whatever the detokenizer still holds belongs to the output.
            text.push_str(&a.detok.finish(&self.shared.tokenizer).unwrap_or_default());
        }
        let _ = a.events.send(Event::Token(TokenChunk {
            text,
            token_id: token,
            logprob,
        }));
        if let Some(reason) = finish {
            let a = self.active.remove(&id).expect("finishing request is active");
            let cached = self.scheduler.get(id).map(|s| s.cached_tokens).unwrap_or(0);
            self.scheduler.remove(id);
            let completion = Completion {
                reason,
                usage: Usage {
                    prompt_tokens: a.prompt_len,
                    cached_prompt_tokens: cached,
                    completion_tokens: a.generated,
                },
                timings: a.timings(),
            };
            tracing::debug!(parent: &a.span, id, generated = a.generated, ?reason, "request finished");
            self.publish_release().requests_finished += 1;
            let _ = a.events.send(Event::Finished(completion));
        }
    }

    /// Publish the running count and block use after a request left, before its last event is sent: a
    /// caller that has seen the end of its stream also sees its blocks returned.
    fn publish_release(&self) -> std::sync::MutexGuard<'_, crate::EngineStats> {
        let oldest_waiting_since = self.oldest_waiting_since();
        let mut stats = self.shared.stats.lock().expect("engine stats");
        stats.running = self.scheduler.num_running();
        stats.kv_blocks_used = self.scheduler.blocks_used();
        stats.oldest_waiting_since = oldest_waiting_since;
        stats
    }

    /// When the longest-waiting request not yet scheduled was submitted.
    fn oldest_waiting_since(&self) -> Option<Instant> {
        self.active.values().filter(|a| a.waiting).map(|a| a.submitted).min()
    }

    fn publish_stats(&self, preempted: &[SeqId], ran: bool) {
        let oldest_waiting_since = self.oldest_waiting_since();
        let mut stats = self.shared.stats.lock().expect("engine stats");
        stats.oldest_waiting_since = oldest_waiting_since;
        stats.running = self.scheduler.num_running();
        stats.kv_blocks_used = self.scheduler.blocks_used();
        stats.preemptions_total += preempted.len() as u64;
        stats.steps_total += u64::from(ran);
    }
}
