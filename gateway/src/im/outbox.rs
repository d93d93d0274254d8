//! [`Outbox`]: the stored record of every inbound message (in the [`Store`], SQLite or PostgreSQL),
//! written before the platform is acknowledged.
//!
//! The primary key `(platform, robot, msg_id)` makes dedupe atomic: the insert either records a new
//! message or changes nothing, so a redelivered push is recognised in one statement, also across
//! processes or nodes on one store. A message stays `accepted` until it is `answered` (finished card),
//! `answered_markdown` (plain-text fallback), `failed` (nothing could be delivered; logged) or `ignored`
//! (not addressed to the robot). [`Outbox::settle`] closes a message together with its audit record and
//! session turn, in one transaction. The platform's own message is kept as the adapter encodes it
//! (`payload`).
//!
//! Leases say which node answers an `accepted` message: the node that stores it holds it for
//! [`Outbox::with_lease`]'s duration and renews the lease while it answers ([`Outbox::renew`]). A node
//! takes up, at start, the messages it held before and those whose lease ran out ([`Outbox::resume`]),
//! and while it runs, as it has room, those whose lease ran out ([`Outbox::claim`]): a node that died
//! loses its messages to the others once its leases expire. Each claim bumps `attempts`, and
//! `shown_bytes` tells the claimer how much of the answer its cards already show. A node that stops
//! gracefully hands what it did not finish back at once ([`Outbox::release`]).

use super::adapter::{CardState, Envelope};
use crate::audit::{AuditRecord, Outcome};
use crate::db::{Database, DbError};
pub use crate::store::Unfinished;
use crate::store::{Arrival, Claim, Lease, Scope, Settlement, Store, Turn};

/// How long a node holds a message it does not renew: [`Outbox::on`]'s default.
pub const DEFAULT_LEASE: std::time::Duration = std::time::Duration::from_secs(30);

/// This machine's host name, the default node id: nodes sharing a store must have different ids.
pub fn default_node_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "hearth".to_owned())
}

/// A message taken up for answering.
#[derive(Debug, Clone)]
pub struct Job<M> {
    /// The platform's message.
    pub message: M,
    pub envelope: Envelope,
    /// The first card's id, derived from the message so a retry finds the same card.
    pub card_id: String,
    /// How many times answering began (1 on the first run).
    pub attempt: u32,
    /// The first card exists on the platform (an earlier run created it).
    pub card_created: bool,
    /// How far into the answer the user has seen it in its cards, in bytes, as an earlier run left it
    /// ([`SHOWN_ALL`]: the last card's final frame was sent); 0 for a new message. A resumed answer
    /// streams into the cards again once the regenerated text reaches this point.
    pub shown: usize,
}

impl Unfinished {
    /// The job, with its decoded platform `message`.
    pub fn into_job<M>(self, message: M) -> Job<M> {
        Job {
            message,
            envelope: self.envelope,
            card_id: self.card_id,
            attempt: self.attempt,
            card_created: self.card_created,
            shown: self.shown,
        }
    }
}

/// [`Job::shown`] once the answer's last card was finalized: nothing may overwrite it.
pub const SHOWN_ALL: usize = i64::MAX as usize;

/// The outbox of one platform account in a [`Store`].
#[derive(Clone)]
pub struct Outbox {
    store: Store,
    scope: Scope,
    /// This node's id in leases.
    node: String,
    /// How long a lease lasts unless renewed.
    lease: std::time::Duration,
}

/// The stored code of a card state owed to a card: the codes the outbox has kept since owed marks were
/// added, which are DingTalk's `flowStatus` values (its first adapter), so older databases read the same.
fn mark_code(state: CardState) -> &'static str {
    match state {
        CardState::Finished => "3",
        CardState::Failed => "5",
    }
}

/// The card state an owed mark's stored code names, if any.
pub fn parse_mark(code: &str) -> Option<CardState> {
    [CardState::Finished, CardState::Failed]
        .into_iter()
        .find(|state| mark_code(*state) == code)
}

impl Outbox {
    /// The outbox of `platform`'s `account` in the SQLite `database` (its tables migrated if needed).
    pub fn open(database: &Database, platform: &'static str, account: &str) -> Result<Self, DbError> {
        Ok(Self::on(Store::sqlite(database)?, platform, account))
    }

    /// The outbox of `platform`'s `account` in `store`, as node [`default_node_id`] with leases of
    /// [`DEFAULT_LEASE`].
    pub fn on(store: Store, platform: &'static str, account: &str) -> Self {
        Self {
            store,
            scope: Scope {
                platform,
                account: account.to_owned(),
            },
            node: default_node_id(),
            lease: DEFAULT_LEASE,
        }
    }

    /// The same outbox as node `node`, whose leases last `lease` unless renewed.
    pub fn with_lease(mut self, node: &str, lease: std::time::Duration) -> Self {
        self.node = node.to_owned();
        self.lease = lease;
        self
    }

    /// A lease of this node's from now.
    fn lease(&self) -> Lease {
        Lease {
            node: self.node.clone(),
            until_ms: crate::db::now_ms() + i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX / 2),
        }
    }

    /// The store it keeps its rows in.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Record `envelope`'s message (its platform form `payload`) as `accepted`, or `ignored` when it is not
    /// addressed to the robot. Returns the job when it is new and to be answered, `None` for a duplicate or
    /// an ignored message.
    pub async fn accept<M: Send + 'static>(
        &self,
        envelope: Envelope,
        message: M,
        payload: String,
    ) -> Result<Option<Job<M>>, DbError> {
        let ignore = !envelope.addressed;
        let card_id = card_id(&self.scope.account, &envelope.id);
        let arrival = Arrival {
            envelope: envelope.clone(),
            card_id: card_id.clone(),
            ignore,
            payload,
        };
        let inserted = self.store.accept(&self.scope, arrival, &self.lease()).await?;
        Ok((inserted && !ignore).then_some(Job {
            message,
            envelope,
            card_id,
            attempt: 1,
            card_created: false,
            shown: 0,
        }))
    }

    /// At start: every message still `accepted` that this node held before (interrupted by a crash or
    /// shutdown) or whose lease ran out, now leased to this node, each with its attempt bumped.
    pub async fn resume(&self) -> Result<Vec<Unfinished>, DbError> {
        self.store.claim(&self.scope, &self.lease(), Claim::OnStart).await
    }

    /// At most `limit` messages still `accepted` whose lease ran out (their node died or is cut off), now
    /// leased to this node, each with its attempt bumped.
    pub async fn claim(&self, limit: usize) -> Result<Vec<Unfinished>, DbError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.store
            .claim(&self.scope, &self.lease(), Claim::Expired(limit))
            .await
    }

    /// Renew this node's leases on `msg_ids` (the answers it is working on); how many it still holds.
    pub async fn renew(&self, msg_ids: Vec<String>) -> Result<usize, DbError> {
        if msg_ids.is_empty() {
            return Ok(0);
        }
        self.store.renew(&self.scope, &self.lease(), msg_ids).await
    }

    /// End this node's leases on what it did not finish, so another node takes it up at once.
    pub async fn release(&self) -> Result<usize, DbError> {
        self.store.release(&self.scope, &self.node).await
    }

    /// How long a lease lasts unless renewed.
    pub fn lease_duration(&self) -> std::time::Duration {
        self.lease
    }

    /// Note that the first card of `msg_id` exists.
    pub async fn card_created(&self, msg_id: &str) -> Result<(), DbError> {
        self.store.card_created(&self.scope, msg_id).await
    }

    /// Record that the user has seen `msg_id`'s answer up to byte `shown` in its cards (it never goes back).
    pub async fn shown(&self, msg_id: &str, shown: usize) -> Result<(), DbError> {
        let shown = i64::try_from(shown).unwrap_or(i64::MAX);
        self.store.shown(&self.scope, msg_id, shown).await
    }

    /// Close `msg_id` with `outcome`; only an `accepted` row changes, so a message finishes once.
    pub async fn finish(&self, msg_id: &str, outcome: Outcome, detail: &str) -> Result<bool, DbError> {
        self.settle(msg_id, outcome, detail, None, None).await
    }

    /// Close `msg_id` with `outcome` and, in the same transaction, write its audit `record` (already
    /// masked) and its session `turn` (session key, question, answer). Either all of it is stored or none:
    /// a crash before the commit leaves the message `accepted`, to be answered again with nothing doubled.
    /// Only an `accepted` message is closed; for any other, nothing is written and `false` comes back.
    pub async fn settle(
        &self,
        msg_id: &str,
        outcome: Outcome,
        detail: &str,
        record: Option<AuditRecord>,
        turn: Option<(String, String, String)>,
    ) -> Result<bool, DbError> {
        let settlement = Settlement {
            outcome,
            detail: detail.to_owned(),
            record,
            turn: turn.map(|(session, question, answer)| Turn {
                session,
                question,
                answer,
            }),
        };
        self.store.settle(&self.scope, msg_id, settlement).await
    }

    /// Keep `state` as owed to `card`: the platform refused to close the card for now, and the connector's
    /// marker closes it once the platform takes it, after a restart too.
    pub async fn defer_mark(&self, card: &str, state: CardState) -> Result<(), DbError> {
        self.store.defer_mark(&self.scope, card, mark_code(state)).await
    }

    /// The owed card marks, oldest first: (card, the state's stored code, see [`parse_mark`]).
    pub async fn pending_marks(&self) -> Result<Vec<(String, String)>, DbError> {
        self.store.pending_marks(&self.scope).await
    }

    /// `card` got its mark `code` (or it can never get it): it is no longer owed. A mark deferred again
    /// with another state meanwhile stays.
    pub async fn mark_done(&self, card: &str, code: &str) -> Result<(), DbError> {
        self.store.mark_done(&self.scope, card, code).await
    }

    /// Delete the settled messages (answered, failed or ignored) received before `before_ms`; a message
    /// still `accepted` stays whatever its age. Returns how many rows went.
    pub async fn prune(&self, before_ms: i64) -> Result<usize, DbError> {
        self.store.prune_messages(&self.scope, before_ms).await
    }

    /// The state of `msg_id`, if recorded (for tests and diagnostics).
    pub async fn state(&self, msg_id: &str) -> Result<Option<String>, DbError> {
        self.store.state(&self.scope, msg_id).await
    }
}

/// A card id derived from the account and message: stable across restarts, so the card is found again.
pub(crate) fn card_id(account: &str, msg_id: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{account}\n{msg_id}").as_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("hearth-{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::im::adapter::ChatKind;

    fn envelope(id: &str, addressed: bool) -> Envelope {
        Envelope {
            id: id.to_owned(),
            conversation: "c1".to_owned(),
            chat: ChatKind::Group,
            sender: "u1".to_owned(),
            sender_nick: "Ann".to_owned(),
            text: "hello".to_owned(),
            addressed,
        }
    }

    #[tokio::test]
    async fn messages_are_deduped_resumed_with_their_payload_and_settled_once() {
        let dir = tempfile::tempdir().unwrap();
        let database = Database::open(&dir.path().join("im.sqlite3")).unwrap();
        let outbox = Outbox::open(&database, "test", "robot").unwrap();
        let job = outbox
            .accept(envelope("m1", true), (), "{\"raw\":1}".to_owned())
            .await
            .unwrap()
            .expect("a new message is a job");
        assert_eq!((job.attempt, job.shown, job.card_created), (1, 0, false));
        assert!(outbox
            .accept(envelope("m1", true), (), String::new())
            .await
            .unwrap()
            .is_none());
        assert!(outbox
            .accept(envelope("m2", false), (), String::new())
            .await
            .unwrap()
            .is_none());
        assert_eq!(outbox.state("m2").await.unwrap().as_deref(), Some("ignored"));
        // Another account of the same platform, and another platform, have their own rows.
        let other = Outbox::open(&database, "test", "robot2").unwrap();
        assert!(other
            .accept(envelope("m1", true), (), String::new())
            .await
            .unwrap()
            .is_some());

        outbox.shown("m1", 42).await.unwrap();
        let unfinished = outbox.resume().await.unwrap();
        assert_eq!(unfinished.len(), 1);
        let row = &unfinished[0];
        assert_eq!(row.envelope, envelope("m1", true));
        assert_eq!(row.payload.as_deref(), Some("{\"raw\":1}"));
        assert_eq!(
            (row.attempt, row.shown, row.card_id.as_str()),
            (2, 42, job.card_id.as_str())
        );

        assert!(outbox.finish("m1", Outcome::Answered, "card finalized").await.unwrap());
        assert!(!outbox.finish("m1", Outcome::Failed, "again").await.unwrap());
        assert_eq!(outbox.state("m1").await.unwrap().as_deref(), Some("answered"));
        assert!(outbox.resume().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn owed_card_marks_stay_until_done_with_their_own_state() {
        let dir = tempfile::tempdir().unwrap();
        let database = Database::open(&dir.path().join("im.sqlite3")).unwrap();
        let outbox = Outbox::open(&database, "test", "robot").unwrap();
        outbox.defer_mark("card-1", CardState::Finished).await.unwrap();
        outbox.defer_mark("card-2", CardState::Failed).await.unwrap();
        let mut owed = outbox.pending_marks().await.unwrap();
        owed.sort();
        let states: Vec<_> = owed
            .iter()
            .map(|(card, code)| (card.as_str(), parse_mark(code)))
            .collect();
        assert_eq!(
            states,
            [
                ("card-1", Some(CardState::Finished)),
                ("card-2", Some(CardState::Failed))
            ]
        );
        // Done with another state than the one owed (it was deferred again meanwhile): still owed.
        outbox.mark_done("card-1", mark_code(CardState::Failed)).await.unwrap();
        assert_eq!(outbox.pending_marks().await.unwrap().len(), 2);
        outbox
            .mark_done("card-1", mark_code(CardState::Finished))
            .await
            .unwrap();
        let left = outbox.pending_marks().await.unwrap();
        assert_eq!(left, [("card-2".to_owned(), mark_code(CardState::Failed).to_owned())]);
        assert!(Outbox::open(&database, "test", "robot2")
            .unwrap()
            .pending_marks()
            .await
            .unwrap()
            .is_empty());
        assert_eq!(parse_mark("9"), None);
    }
}
