//! The seam between the IM core and a platform: the [`Adapter`] trait, what crosses it ([`Envelope`],
//! [`CardRef`], [`Update`], [`Ending`]) and the [`Inbox`] a platform's receive loop hands messages to.
//!
//! A platform is an adapter: its receive loop turns the platform's pushes into messages with a stable
//! platform message id and hands each to the [`Inbox`], acknowledging the platform once the inbox has
//! stored it; and it opens, streams into, finishes and closes a card, and sends plain text, each as one
//! platform call. Everything around those calls (dedupe, pacing, retries, cutting and rolling over cards,
//! the plain-text fallback, sessions, skills, the model, audit, retention) is the core's.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use super::retry::{DeliveryError, PlatformError, Retrier};
use super::settings::Settings;
use crate::platform::PlatformHealth;

/// A one-to-one chat or a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatKind {
    Direct,
    Group,
}

/// What the core knows of an inbound message, whatever its platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The platform's id of the message, stable across redeliveries: the dedupe key.
    pub id: String,
    /// The conversation (chat or group) it came from.
    pub conversation: String,
    pub chat: ChatKind,
    /// The sender as sessions, rate limits and the audit log know them.
    pub sender: String,
    pub sender_nick: String,
    /// The question, trimmed.
    pub text: String,
    /// Whether the message is for the robot (a group message without a mention may not be): one that is
    /// not is stored as ignored and not answered.
    pub addressed: bool,
}

/// One card of an answer, as the adapter addresses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardRef {
    /// The card's id, stable across restarts: the first card's is derived from the message, a
    /// continuation card's from the first (`{id}-p2`, `-p3`, …).
    pub id: String,
    /// 1 for the message's first card.
    pub number: u32,
    /// How many times answering this message began (1 on the first run), for ids that must differ
    /// between runs. `number` and `attempt` are 0 for a card whose close is owed from an earlier run: only
    /// its id is kept.
    pub attempt: u32,
}

/// What opening a card found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// The card is new and delivered.
    Created,
    /// The card already existed: an earlier run created it.
    AlreadyExisted,
}

/// One streaming update of a card.
#[derive(Debug, Clone, Copy)]
pub struct Update<'a> {
    /// Everything the card is to show now (a platform that streams full snapshots sends this).
    pub content: &'a str,
    /// What the card showed after its last accepted update (a platform that streams deltas sends what
    /// `content` adds to it).
    pub shown: &'a str,
    /// Strictly increasing over the answer's updates in this run (across its cards); [`CardRef::attempt`]
    /// tells runs apart.
    pub seq: u32,
}

/// How a card's final frame ends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The card holds its share of the answer.
    Finished,
    /// The answer broke off (the card says so).
    Failed,
    /// The card is given up: the answer went out as plain text instead, and the card says that.
    Abandoned,
}

/// The state a card is left in after its final frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardState {
    Finished,
    Failed,
}

/// The inbox could not store a message; the platform must not be acknowledged, so it delivers it again.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the message was not stored: {0}")]
pub struct NotStored(pub String);

/// A message handed to the core, with where to say whether it was stored.
pub(crate) struct Arrival<M> {
    pub(crate) message: M,
    pub(crate) stored: oneshot::Sender<Result<(), NotStored>>,
}

/// Where a platform's receive loop hands its messages. Bounded: a loop that outruns the outbox waits.
pub struct Inbox<M> {
    tx: mpsc::Sender<Arrival<M>>,
}

impl<M> Clone for Inbox<M> {
    fn clone(&self) -> Self {
        Self { tx: self.tx.clone() }
    }
}

impl<M: Send> Inbox<M> {
    /// An inbox holding up to `capacity` messages not yet stored, and its receiving end.
    pub(crate) fn new(capacity: usize) -> (Self, mpsc::Receiver<Arrival<M>>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Self { tx }, rx)
    }

    /// Hand `message` to the core. Returns once the outbox has it (a known duplicate included): only then
    /// may the platform be acknowledged.
    pub async fn accept(&self, message: M) -> Result<(), NotStored> {
        let (stored, answer) = oneshot::channel();
        self.tx
            .send(Arrival { message, stored })
            .await
            .map_err(|_| NotStored("the connector is stopping".to_owned()))?;
        answer
            .await
            .map_err(|_| NotStored("the connector is stopping".to_owned()))?
    }
}

/// A chat platform, as the IM core drives it. Each method is one platform call (or the receive loop); the
/// core paces, retries and bounds them.
pub trait Adapter: Send + Sync + Sized + 'static {
    /// The platform's message as received; stored with it (as JSON) so an answer resumed after a crash
    /// has it.
    type Message: Clone + Send + Sync + serde::Serialize + serde::de::DeserializeOwned + 'static;
    /// The platform's call errors.
    type Error: PlatformError;

    /// The platform's name in keys, metrics and the audit log (`dingtalk`).
    const PLATFORM: &'static str;

    /// The robot or app this connector answers as; with the platform, it keys the outbox and sessions.
    fn account(&self) -> &str;
    /// The core's settings, from the platform's configuration section.
    fn settings(&self) -> &Settings;
    /// The connection's health, for the status page.
    fn health(&self) -> &Arc<PlatformHealth>;

    /// What the core needs to know of `message`.
    fn envelope(&self, message: &Self::Message) -> Envelope;
    /// `message` as stored in the outbox.
    fn encode(&self, message: &Self::Message) -> String {
        serde_json::to_string(message).unwrap_or_default()
    }
    /// A stored message back: from its stored form (`None` in rows from before it was kept), else from
    /// what the envelope holds.
    fn decode(&self, envelope: &Envelope, stored: Option<&str>) -> Self::Message {
        stored
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or_else(|| self.rebuild(envelope))
    }
    /// A message rebuilt from what its envelope holds: for outbox rows from before messages were kept
    /// whole.
    fn rebuild(&self, envelope: &Envelope) -> Self::Message;
    /// An unfinished `message` is about to be answered again after a restart: a platform that keeps state
    /// per message restores it here. By default nothing.
    fn resuming(&self, _message: &Self::Message) {}

    /// The receive loop: keep the platform connection, hand every message to `inbox` (acknowledging it
    /// only once the inbox returns), until `shutdown` turns true.
    fn receive(
        self: Arc<Self>,
        inbox: Inbox<Self::Message>,
        shutdown: watch::Receiver<bool>,
    ) -> impl Future<Output = ()> + Send;

    /// Why `message` cannot get a card at all, known without a call (the answer goes out as text at once).
    fn no_card(&self, message: &Self::Message) -> Option<Self::Error>;
    /// Create `card` where `message` came from and deliver it, empty.
    fn open_card(
        &self,
        message: &Self::Message,
        card: &CardRef,
    ) -> impl Future<Output = Result<Opened, Self::Error>> + Send;
    /// Stream an update into an open card.
    fn update_card(&self, card: &CardRef, update: Update<'_>) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// Send a card's final frame: its whole `content`. Must be idempotent: a finish retried after a crash is
    /// applied once.
    fn finish_card(
        &self,
        card: &CardRef,
        content: &str,
        ending: Ending,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// Leave a finished card in `state` (a status the platform shows beside it); a no-op where the final
    /// frame says it all.
    fn close_card(&self, card: &CardRef, state: CardState) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// Send `text` as a plain message where `message` came from (the fallback when cards fail), with its
    /// platform calls run by `retry`. Returns the route it went by, for the outbox.
    fn send_text(
        &self,
        message: &Self::Message,
        text: &str,
        retry: Retrier<'_>,
    ) -> impl Future<Output = Result<&'static str, DeliveryError<Self::Error>>> + Send;
    /// Hand a conversation to the person `to` with `summary` (the escalate skill).
    fn escalate(&self, to: &str, summary: &str) -> impl Future<Output = Result<(), Self::Error>> + Send;
}
