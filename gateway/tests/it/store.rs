//! The store's two backends give the same answers: each test runs on a SQLite file and on a real
//! PostgreSQL server started for it (`ThrowawayPostgres`). Two handles on one store stand for two nodes.

use std::time::Duration;

use gateway::audit::{AuditLog, AuditRecord, Handler, Masker, Outcome};
use gateway::im::adapter::{CardState, ChatKind, Envelope};
use gateway::im::outbox::Outbox;
use gateway::sessions::SessionStore;
use gateway::store::throwaway::ThrowawayPostgres;
use gateway::store::{Backend, Store};

use crate::store_support::shared_postgres;

/// A SQLite store in `dir`, and a store in a new PostgreSQL database: each opened twice (two nodes).
async fn both_backends(dir: &tempfile::TempDir) -> Vec<(Store, Store)> {
    let file = dir.path().join("im.sqlite3");
    let sqlite = file.to_str().unwrap().to_owned();
    let postgres = shared_postgres().create_database().unwrap();
    let mut pairs = Vec::new();
    for locator in [sqlite, postgres] {
        pairs.push((
            Store::open(&locator).await.unwrap(),
            Store::open(&locator).await.unwrap(),
        ));
    }
    pairs
}

fn envelope(id: &str, sender: &str) -> Envelope {
    Envelope {
        id: id.to_owned(),
        conversation: "c1".to_owned(),
        chat: ChatKind::Group,
        sender: sender.to_owned(),
        sender_nick: "Ann".to_owned(),
        text: "hello".to_owned(),
        addressed: true,
    }
}

fn record(msg_id: &str) -> AuditRecord {
    AuditRecord {
        at_ms: gateway::db::now_ms(),
        platform: "test".to_owned(),
        msg_id: msg_id.to_owned(),
        conversation_id: "c1".to_owned(),
        session: "s1".to_owned(),
        sender_id: "u1".to_owned(),
        sender_nick: "Ann".to_owned(),
        handler: Handler::Model("m".to_owned()),
        question: "call 13812345678".to_owned(),
        answer: "ok".to_owned(),
        first_visible_ms: Some(12),
        prompt_tokens: 3,
        completion_tokens: 4,
        context_turns: 0,
        outcome: Outcome::Answered,
    }
}

#[tokio::test]
async fn a_message_is_recorded_once_and_settled_once_across_nodes() {
    let dir = tempfile::tempdir().unwrap();
    for (first, second) in both_backends(&dir).await {
        let backend = first.backend();
        let (a, b) = (
            Outbox::on(first.clone(), "test", "robot"),
            Outbox::on(second.clone(), "test", "robot"),
        );
        // The same push reaching both nodes at once: exactly one records it.
        let (x, y) = tokio::join!(
            a.accept(envelope("m1", "u1"), (), "{}".to_owned()),
            b.accept(envelope("m1", "u1"), (), "{}".to_owned())
        );
        let jobs = [x.unwrap(), y.unwrap()];
        assert_eq!(
            jobs.iter().flatten().count(),
            1,
            "{backend:?}: one node owns the message"
        );
        b.shown("m1", 40).await.unwrap();
        a.shown("m1", 10).await.unwrap();
        a.card_created("m1").await.unwrap();
        let resumed = b.resume().await.unwrap();
        assert_eq!(resumed.len(), 1, "{backend:?}");
        assert_eq!(
            (resumed[0].attempt, resumed[0].shown, resumed[0].card_created),
            (2, 40, true),
            "{backend:?}: shown never goes back"
        );
        assert_eq!(resumed[0].payload.as_deref(), Some("{}"));
        assert_eq!(resumed[0].envelope, envelope("m1", "u1"));

        // Both nodes settle it: one wins, and only its audit record and turn are stored.
        let masker = Masker::new(&gateway::audit::default_mask_patterns()).unwrap();
        let audit = AuditLog::open(first.clone(), masker);
        let turn = || Some(("s1".to_owned(), "q".to_owned(), "a".to_owned()));
        let (x, y) = tokio::join!(
            a.settle("m1", Outcome::Answered, "card finalized", Some(record("m1")), turn()),
            b.settle("m1", Outcome::Failed, "other", Some(record("m1")), turn())
        );
        assert_eq!(
            [x.unwrap(), y.unwrap()].iter().filter(|settled| **settled).count(),
            1,
            "{backend:?}"
        );
        assert_eq!(audit.records(0).await.unwrap().len(), 1, "{backend:?}");
        let sessions = SessionStore::open(second.clone(), Duration::from_secs(60));
        assert_eq!(sessions.history("s1").await.unwrap().len(), 2, "{backend:?}");
        assert!(a.resume().await.unwrap().is_empty(), "{backend:?}");

        // Audit records round-trip on either node; recent is newest first.
        audit.record(record("m2")).await.unwrap();
        let other = AuditLog::open(second.clone(), Masker::new(&[]).unwrap());
        let recent = other.recent(1).await.unwrap();
        assert_eq!(recent[0].msg_id, "m2", "{backend:?}");
        assert_eq!(recent[0].question, "call [masked]", "{backend:?}");
        assert_eq!(recent[0].handler, Handler::Model("m".to_owned()));
        assert_eq!(other.prune(gateway::db::now_ms() + 1).await.unwrap(), 2, "{backend:?}");

        // Owed marks, retention.
        a.defer_mark("card-1", CardState::Finished).await.unwrap();
        b.defer_mark("card-1", CardState::Failed).await.unwrap();
        assert_eq!(
            a.pending_marks().await.unwrap(),
            [("card-1".to_owned(), "5".to_owned())]
        );
        b.mark_done("card-1", "5").await.unwrap();
        assert!(a.pending_marks().await.unwrap().is_empty(), "{backend:?}");
        assert_eq!(a.prune(gateway::db::now_ms() + 1).await.unwrap(), 1, "{backend:?}");
        assert_eq!(a.state("m1").await.unwrap(), None, "{backend:?}");
        assert!(matches!(backend, Backend::Sqlite | Backend::Postgres));
    }
}

#[tokio::test]
async fn a_session_continues_on_either_node_and_expires_on_both() {
    let dir = tempfile::tempdir().unwrap();
    for (first, second) in both_backends(&dir).await {
        let backend = first.backend();
        let (a, b) = (
            SessionStore::open(first, Duration::from_secs(60)),
            SessionStore::open(second, Duration::from_secs(60)),
        );
        a.append("k", "q1", "a1").await.unwrap();
        b.append("k", "q2", "a2").await.unwrap();
        let turns: Vec<_> = a
            .history("k")
            .await
            .unwrap()
            .into_iter()
            .map(|m| (m.role, m.content))
            .collect();
        assert_eq!(
            turns,
            [("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("assistant", "a2")]
                .map(|(r, c)| (r.to_owned(), c.to_owned())),
            "{backend:?}"
        );
        b.reset("k").await.unwrap();
        assert!(a.history("k").await.unwrap().is_empty(), "{backend:?}");
        a.append("old", "q", "a").await.unwrap();
        let expired = SessionStore::open(b_store(&b), Duration::ZERO);
        // Idle for zero time: anything older than now is past its expiry.
        let cutoff_passed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if expired.prune_idle().await.unwrap() > 0 {
                    break;
                }
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(cutoff_passed.is_ok(), "{backend:?}: the idle session is pruned");
        assert!(a.history("old").await.unwrap().is_empty(), "{backend:?}");
    }
}

fn b_store(sessions: &SessionStore) -> Store {
    sessions.store().clone()
}

#[tokio::test]
async fn migrations_apply_once_and_nodes_starting_together_agree() {
    let postgres = shared_postgres().create_database().unwrap();
    let opened = futures::future::join_all((0..4).map(|_| Store::open(&postgres))).await;
    for store in opened {
        assert_eq!(
            store.unwrap().schema_version().await.unwrap(),
            gateway::store::SCHEMA_VERSION
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("im.sqlite3");
    let sqlite = Store::open(path.to_str().unwrap()).await.unwrap();
    assert_eq!(sqlite.schema_version().await.unwrap(), gateway::store::SCHEMA_VERSION);
    drop(sqlite);
    assert_eq!(
        Store::open(&format!("sqlite://{}", path.display()))
            .await
            .unwrap()
            .schema_version()
            .await
            .unwrap(),
        gateway::store::SCHEMA_VERSION
    );
}

#[tokio::test]
async fn a_store_that_cannot_be_reached_or_named_is_a_clear_error() {
    let err = Store::open("mysql://localhost/hearth").await.err().unwrap().to_string();
    assert!(err.contains("unknown store scheme"), "{err}");
    // A server that is gone: an error within the pool's bounded wait, not a hang.
    let mut server = ThrowawayPostgres::start().unwrap();
    let url = server.url("postgres");
    server.stop();
    let err = tokio::time::timeout(Duration::from_secs(30), Store::open(&url))
        .await
        .expect("a bounded wait")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("PostgreSQL"), "{err}");
    server.restart().unwrap();
    assert_eq!(
        Store::open(&url).await.unwrap().schema_version().await.unwrap(),
        gateway::store::SCHEMA_VERSION
    );
}

#[tokio::test]
async fn a_message_belongs_to_one_node_until_its_lease_runs_out_or_is_released() {
    let dir = tempfile::tempdir().unwrap();
    for (first, second) in both_backends(&dir).await {
        let backend = first.backend();
        let lease = Duration::from_secs(60);
        let a = Outbox::on(first.clone(), "test", "robot").with_lease("node-a", lease);
        let b = Outbox::on(second.clone(), "test", "robot").with_lease("node-b", lease);
        a.accept(envelope("m1", "u1"), (), "{}".to_owned())
            .await
            .unwrap()
            .unwrap();
        // Node a holds it: b neither claims it nor takes it up at start; a renews it.
        assert!(b.claim(10).await.unwrap().is_empty(), "{backend:?}");
        assert!(b.resume().await.unwrap().is_empty(), "{backend:?}");
        assert_eq!(a.renew(vec!["m1".to_owned()]).await.unwrap(), 1, "{backend:?}");
        // Node a restarts: it takes up what it held at once.
        let resumed = a.resume().await.unwrap();
        assert_eq!(resumed.len(), 1, "{backend:?}");
        assert_eq!(resumed[0].attempt, 2, "{backend:?}");
        // Node a stops gracefully: its lease ends and b claims the message; a no longer holds it.
        assert_eq!(a.release().await.unwrap(), 1, "{backend:?}");
        let claimed = b.claim(10).await.unwrap();
        assert_eq!(claimed.len(), 1, "{backend:?}");
        assert_eq!(
            (claimed[0].envelope.id.as_str(), claimed[0].attempt),
            ("m1", 3),
            "{backend:?}"
        );
        assert_eq!(a.renew(vec!["m1".to_owned()]).await.unwrap(), 0, "{backend:?}");
        assert!(a.claim(10).await.unwrap().is_empty(), "{backend:?}");

        // A node that stops renewing (dead) loses its messages once the lease runs out; two nodes claiming
        // at once take different ones, together all of them.
        let dead = Outbox::on(first.clone(), "test", "robot").with_lease("node-dead", Duration::from_millis(1));
        for i in 0..20 {
            dead.accept(envelope(&format!("d{i}"), "u2"), (), "{}".to_owned())
                .await
                .unwrap()
                .unwrap();
        }
        // The only wait: for the clock to pass a 1 ms lease.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (x, y) = tokio::join!(a.claim(15), b.claim(15));
        let (x, y) = (x.unwrap(), y.unwrap());
        let mut ids: Vec<String> = x.iter().chain(&y).map(|u| u.envelope.id.clone()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(x.len() + y.len(), 20, "{backend:?}: {} + {}", x.len(), y.len());
        assert_eq!(ids.len(), 20, "{backend:?}: no message claimed twice");
        assert!(x.len() <= 15 && y.len() <= 15, "{backend:?}: each claim is bounded");
    }
}
