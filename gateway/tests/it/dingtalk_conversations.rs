//! Conversations, skills, limits and audit of the DingTalk connector, end to end: the real emulator, the
//! real engine with SmolLM2, the sessions and the audit log in a real SQLite file.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use emulator::dingtalk::{CardStatus, ConversationKind, DingTalkEmulator, FaultCommand, World, DEFAULT_CLIENT_ID};
use gateway::audit::{AuditRecord, ExportFormat, Outcome};
use gateway::dingtalk::{DingTalkConfig, DingTalkConnector, BUSY, SLOW_DOWN};
use gateway::routing::ModelRouter;
use gateway::skills::{CustomSkill, SkillSet, SkillsConfig, TriggerKind};

use crate::dingtalk::{all_answered, connector_config, emulator, say, shared_models, PATIENCE};
use crate::support::{load_engine, Limits, MODEL_NAME};

/// A connector config for many cards at once: the emulator's QPS limit is off in these tests.
fn fast_config(dingtalk: &DingTalkEmulator, db: &Path) -> DingTalkConfig {
    DingTalkConfig {
        card_updates_per_second: 200,
        max_answer_tokens: 8,
        ..connector_config(dingtalk, db)
    }
}

async fn fast_emulator() -> DingTalkEmulator {
    emulator(|c| c.qps_per_api = 0).await
}

fn skill(name: &str, trigger: TriggerKind, patterns: &[&str], reply: &str, priority: i32) -> CustomSkill {
    CustomSkill {
        name: name.to_owned(),
        description: format!("the {name} skill"),
        trigger,
        patterns: patterns.iter().map(|p| (*p).to_owned()).collect(),
        reply: reply.to_owned(),
        priority,
    }
}

/// Finished cards of `conversation`, in delivery order.
fn finished_texts(world: &World, conversation: &str) -> Option<Vec<String>> {
    let cards = world.cards_in(conversation);
    cards
        .iter()
        .all(|c| c.status == CardStatus::Finished)
        .then(|| cards.iter().map(|c| c.text.clone()).collect())
}

/// The audit records once at least `count` were written (a record follows its card's final frame).
async fn audit(connector: &DingTalkConnector, count: u64) -> Vec<AuditRecord> {
    tokio::time::timeout(PATIENCE, connector.audit().wait_for_records(count))
        .await
        .expect("the audit records were written")
        .unwrap()
}

/// Post `text` as `user` in their 1:1 chat and return the text of the card that answers it, once the
/// message is settled (its audit record, and with it its session turn, committed).
async fn ask(dingtalk: &DingTalkEmulator, connector: &DingTalkConnector, user: &str, text: &str) -> String {
    let before = dingtalk.inspect(|w| {
        let ids = w.conversation_ids();
        ids.iter()
            .find(|id| w.conversation(id).is_some_and(|c| c.user_id.as_deref() == Some(user)))
            .map_or(0, |id| w.cards_in(id).len())
    });
    let records = connector.audit().records(0).await.unwrap().len() as u64;
    let posted = say(dingtalk, ConversationKind::Single, None, user, text, false);
    let texts = dingtalk
        .wait_for(PATIENCE, |w| {
            finished_texts(w, &posted.conversation_id).filter(|t| t.len() > before)
        })
        .await
        .unwrap_or_else(|e| panic!("no answer to {text:?}: {e}"));
    assert_eq!(texts.len(), before + 1, "one card per message");
    audit(connector, records + 1).await;
    texts[before].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dingtalk_100_messages_from_20_users_each_get_one_card_and_sessions_carry_context() {
    let dingtalk = fast_emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let connector = DingTalkConnector::start(fast_config(&dingtalk, &dir.path().join("db.sqlite3")), shared_models())
        .await
        .unwrap();
    dingtalk
        .wait_for(PATIENCE, |w| (w.stats().live_connections == 1).then_some(()))
        .await
        .unwrap();

    // 20 users, 5 messages each: even ones in one of 5 groups (with a mention), odd ones in a 1:1 chat.
    let topics = ["a color", "a fruit", "a city", "an animal", "a number"];
    let mut msg_ids = HashSet::new();
    for round in 0..5 {
        for user in 0..20 {
            let text = format!("Name {}.", topics[(user + round) % topics.len()]);
            let (user, group) = (format!("user{user:02}"), format!("cidGroup{}", user % 5));
            let posted = if round % 2 == 0 {
                say(&dingtalk, ConversationKind::Group, Some(&group), &user, &text, true)
            } else {
                say(&dingtalk, ConversationKind::Single, None, &user, &text, false)
            };
            assert!(msg_ids.insert(posted.msg_id));
        }
    }
    let cards = dingtalk.wait_for(Duration::from_secs(600), all_answered).await.unwrap();
    assert_eq!(cards, 100, "exactly one finished card per message");
    let (ids, texts): (HashSet<String>, Vec<String>) = dingtalk.inspect(|w| {
        let cards: Vec<_> = w.conversation_ids().iter().flat_map(|id| w.cards_in(id)).collect();
        (
            cards.iter().map(|c| c.out_track_id.clone()).collect(),
            cards.iter().map(|c| c.text.clone()).collect(),
        )
    });
    assert_eq!(ids.len(), 100, "no card is shared or duplicated");
    assert!(
        texts
            .iter()
            .all(|t| !t.trim().is_empty() && t != BUSY && t != SLOW_DOWN),
        "every card holds a model answer"
    );
    let records = audit(&connector, 100).await;
    assert_eq!(records.len(), 100);
    assert!(records.iter().all(|r| r.handler == format!("model:{MODEL_NAME}")
        && r.outcome == Outcome::Answered
        && r.first_visible_ms.is_some()));
    assert!(records.iter().all(|r| r.completion_tokens >= 1 && r.prompt_tokens > 0));

    // A session carries context: the second question is sent after the first turn.
    let first = ask(&dingtalk, &connector, "zed", "My name is Zed. Say hi.").await;
    let second = ask(&dingtalk, &connector, "zed", "What is my name?").await;
    assert!(!first.is_empty() && !second.is_empty());
    let records = audit(&connector, 102).await;
    let zed: Vec<&AuditRecord> = records.iter().filter(|r| r.sender_id == "zed").collect();
    assert_eq!(zed.len(), 2);
    assert_eq!(
        (zed[0].context_turns, zed[1].context_turns),
        (0, 2),
        "the second prompt holds the first question and answer"
    );
    assert!(
        zed[1].prompt_tokens > zed[0].prompt_tokens + 5,
        "{} vs {}",
        zed[1].prompt_tokens,
        zed[0].prompt_tokens
    );
    let key = format!("dingtalk:{DEFAULT_CLIENT_ID}:{}", zed[0].conversation_id);
    let history = connector.sessions().history(&key).await.unwrap();
    assert_eq!(history.len(), 4);
    assert_eq!(history[0].content, "My name is Zed. Say hi.");
    assert_eq!(history[1].content.trim(), first.trim());

    // A history longer than the context is trimmed by tokens, oldest turns first, newest kept.
    ask(&dingtalk, &connector, "long", "Say hi.").await;
    let conversation = dingtalk.inspect(|w| {
        w.conversation_ids()
            .into_iter()
            .find(|id| w.conversation(id).unwrap().user_id.as_deref() == Some("long"))
            .unwrap()
    });
    let key = format!("dingtalk:{DEFAULT_CLIENT_ID}:{conversation}");
    for turn in 0..6 {
        let filler = format!("turn {turn}: {}", "lorem ipsum dolor sit amet ".repeat(40));
        connector.sessions().append(&key, &filler, &filler).await.unwrap();
    }
    assert_eq!(connector.sessions().history(&key).await.unwrap().len(), 14);
    ask(&dingtalk, &connector, "long", "What did I say last?").await;
    let records = audit(&connector, 104).await;
    let last = records.iter().rev().find(|r| r.sender_id == "long").unwrap();
    assert!(
        last.context_turns > 0 && last.context_turns < 14 && last.context_turns % 2 == 0,
        "kept {} turns",
        last.context_turns
    );
    assert!(
        last.prompt_tokens as usize + 8 <= crate::support::SHARED_CONTEXT,
        "{} prompt tokens",
        last.prompt_tokens
    );
    // Shutdown waits for the answer tasks, which record each outcome right after its audit record.
    let outbox = connector.outbox().clone();
    connector.shutdown(Duration::from_secs(30)).await;
    for msg_id in &msg_ids {
        assert_eq!(outbox.state(msg_id).await.unwrap().as_deref(), Some("answered"));
    }
    dingtalk.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dingtalk_skills_score_reset_escalate_and_reload() {
    let dingtalk = fast_emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let skills_config = |ping_reply: &str| SkillsConfig {
        escalate_to: "boss".to_owned(),
        custom: vec![
            skill("ping", TriggerKind::Keyword, &["ping"], ping_reply, 0),
            skill(
                "weather",
                TriggerKind::Regex,
                &["(?i)weather", "(?i)^ping"],
                "Sunny, as always.",
                0,
            ),
            skill("echo", TriggerKind::Command, &["echo"], "{args}", 0),
            skill("low", TriggerKind::Regex, &["tie"], "low wins", 1),
            skill("high", TriggerKind::Regex, &["tie"], "high wins", 9),
        ],
        ..SkillsConfig::default()
    };
    let file = dir.path().join("hearth.toml");
    let write_config = |ping_reply: &str| {
        let section = toml::to_string(&gateway::config::Config {
            skills: skills_config(ping_reply),
            ..Default::default()
        })
        .unwrap();
        std::fs::write(&file, section).unwrap();
    };
    write_config("pong");
    let skills = Arc::new(SkillSet::with_file(&skills_config("pong"), file.clone()).unwrap());
    let watcher = skills.watch(Duration::from_millis(50)).unwrap();
    let config = fast_config(&dingtalk, &dir.path().join("db.sqlite3"));
    let connector = DingTalkConnector::start_with_skills(config, shared_models(), skills.clone())
        .await
        .unwrap();
    dingtalk
        .wait_for(PATIENCE, |w| (w.stats().live_connections == 1).then_some(()))
        .await
        .unwrap();

    assert_eq!(
        ask(&dingtalk, &connector, "sam", "ping").await,
        "pong",
        "an exact keyword beats a regex"
    );
    assert_eq!(
        ask(&dingtalk, &connector, "sam", "ping me later").await,
        "Sunny, as always."
    );
    assert_eq!(
        ask(&dingtalk, &connector, "sam", "/echo hello there").await,
        "hello there"
    );
    assert_eq!(
        ask(&dingtalk, &connector, "sam", "a tie!").await,
        "high wins",
        "ties go to the higher priority"
    );
    let help = ask(&dingtalk, &connector, "sam", "help").await;
    assert!(help.contains("/new") && help.contains("echo"), "{help}");
    let status = ask(&dingtalk, &connector, "sam", "/status").await;
    assert!(
        status.contains(MODEL_NAME) && status.contains("queue depth") && status.contains("uptime"),
        "{status}"
    );

    // The model answers the rest, into the session; /new forgets it.
    let answer = ask(&dingtalk, &connector, "sam", "Tell me a fact about the moon.").await;
    assert!(!answer.is_empty());
    let conversation = dingtalk.inspect(|w| {
        w.conversation_ids()
            .into_iter()
            .find(|id| w.conversation(id).unwrap().user_id.as_deref() == Some("sam"))
            .unwrap()
    });
    let key = format!("dingtalk:{DEFAULT_CLIENT_ID}:{conversation}");
    assert_eq!(
        connector.sessions().history(&key).await.unwrap().len(),
        2,
        "skill answers stay out of the session"
    );
    assert!(ask(&dingtalk, &connector, "sam", "/new")
        .await
        .contains("new conversation"));
    assert!(connector.sessions().history(&key).await.unwrap().is_empty());

    // Escalation: the named person gets a robot message, the user is told.
    let told = ask(&dingtalk, &connector, "sam", "I want to talk to a human").await;
    assert_eq!(told, SkillsConfig::default().escalate_reply);
    let to_boss = dingtalk
        .wait_for(PATIENCE, |w| {
            let boss = w
                .conversation_ids()
                .into_iter()
                .find(|id| w.conversation(id).unwrap().user_id.as_deref() == Some("boss"))?;
            Some(crate::dingtalk::robot_messages(w, &boss, "robotApi")).filter(|m| !m.is_empty())
        })
        .await
        .unwrap();
    assert_eq!(to_boss.len(), 1);
    assert!(
        to_boss[0].contains("sam") && to_boss[0].contains("I want to talk to a human"),
        "{}",
        to_boss[0]
    );

    // Reload: the file changes, the watcher swaps the skills in.
    let mut version = skills.subscribe();
    write_config("pong, reloaded");
    tokio::time::timeout(PATIENCE, version.changed())
        .await
        .expect("the change was noticed")
        .unwrap();
    assert_eq!(ask(&dingtalk, &connector, "sam", "ping").await, "pong, reloaded");
    // A broken file keeps the previous skills.
    std::fs::write(
        &file,
        "[skills]\ncustom = [{ name = \"bad\", trigger = \"regex\", patterns = [\"(\"], reply = \"x\" }]\n",
    )
    .unwrap();
    assert!(skills.reload().is_err());
    assert_eq!(ask(&dingtalk, &connector, "sam", "ping").await, "pong, reloaded");
    watcher.abort();

    let handlers: Vec<String> = audit(&connector, 11)
        .await
        .into_iter()
        .map(|r| r.handler.to_string())
        .collect();
    for expected in [
        "skill:ping",
        "skill:weather",
        "skill:echo",
        "skill:high",
        "skill:help",
        "skill:status",
        "skill:new",
        "skill:escalate",
    ] {
        assert!(handlers.iter().any(|h| h == expected), "{expected} in {handlers:?}");
    }
    assert_eq!(handlers.iter().filter(|h| h.starts_with("model:")).count(), 1);
    connector.shutdown(Duration::from_secs(30)).await;
    dingtalk.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dingtalk_rate_limited_users_are_told_to_slow_down_and_a_full_engine_answers_busy() {
    let dingtalk = fast_emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let skills = SkillsConfig {
        custom: vec![skill("ping", TriggerKind::Keyword, &["ping"], "pong", 0)],
        ..SkillsConfig::default()
    };
    let config = DingTalkConfig {
        user_requests_per_second: 1,
        ..fast_config(&dingtalk, &dir.path().join("a.sqlite3"))
    };
    let connector =
        DingTalkConnector::start_with_skills(config, shared_models(), Arc::new(SkillSet::new(&skills).unwrap()))
            .await
            .unwrap();
    dingtalk
        .wait_for(PATIENCE, |w| (w.stats().live_connections == 1).then_some(()))
        .await
        .unwrap();
    // Three messages at once from one user with a budget of one per second; another user is unaffected.
    let posted: Vec<_> = (0..3)
        .map(|_| say(&dingtalk, ConversationKind::Single, None, "flood", "ping", false))
        .collect();
    let calm = say(&dingtalk, ConversationKind::Single, None, "calm", "ping", false);
    let texts = dingtalk
        .wait_for(PATIENCE, |w| {
            finished_texts(w, &posted[0].conversation_id).filter(|t| t.len() == 3)
        })
        .await
        .unwrap();
    let slowed = texts.iter().filter(|t| *t == SLOW_DOWN).count();
    assert_eq!(
        (slowed, texts.iter().filter(|t| *t == "pong").count()),
        (2, 1),
        "{texts:?}"
    );
    let calm = dingtalk
        .wait_for(PATIENCE, |w| {
            finished_texts(w, &calm.conversation_id).filter(|t| t.len() == 1)
        })
        .await
        .unwrap();
    assert_eq!(calm, ["pong"]);
    let records = audit(&connector, 4).await;
    assert_eq!(records.iter().filter(|r| r.handler == "rate_limited").count(), 2);
    connector.shutdown(Duration::from_secs(30)).await;

    // An engine that takes one request and queues one: the others get a finalized "busy" card.
    let engine = load_engine(Limits {
        max_running: 1,
        max_waiting: 1,
        kv_cache_tokens: 1024,
        context_length: 512,
    });
    let models = Arc::new(ModelRouter::single(MODEL_NAME, engine.clone()));
    let config = DingTalkConfig {
        max_answer_tokens: 48,
        ..fast_config(&dingtalk, &dir.path().join("b.sqlite3"))
    };
    let connector = DingTalkConnector::start(config, models).await.unwrap();
    dingtalk
        .wait_for(PATIENCE, |w| (w.stats().live_connections == 1).then_some(()))
        .await
        .unwrap();
    let posted: Vec<_> = (0..6)
        .map(|i| {
            say(
                &dingtalk,
                ConversationKind::Single,
                None,
                &format!("busy{i}"),
                "Write a long story about a dragon.",
                false,
            )
        })
        .collect();
    let texts: Vec<String> = dingtalk
        .wait_for(PATIENCE, |w| {
            posted
                .iter()
                .map(|p| {
                    finished_texts(w, &p.conversation_id)
                        .filter(|t| t.len() == 1)
                        .map(|t| t[0].clone())
                })
                .collect()
        })
        .await
        .unwrap();
    let busy = texts.iter().filter(|t| *t == BUSY).count();
    assert!(
        (1..=4).contains(&busy),
        "at most two are taken, some are refused: {texts:?}"
    );
    assert!(texts.iter().filter(|t| *t != BUSY).all(|t| !t.trim().is_empty()));
    let records = audit(&connector, 6).await;
    assert_eq!(records.iter().filter(|r| r.outcome == Outcome::Busy).count(), busy);
    connector.shutdown(Duration::from_secs(30)).await;
    let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
    dingtalk.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dingtalk_audit_masks_sensitive_text_and_exports_jsonl_and_csv() {
    let dingtalk = fast_emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite3");
    let skills = SkillsConfig {
        custom: vec![skill("echo", TriggerKind::Command, &["echo"], "you said: {args}", 0)],
        ..SkillsConfig::default()
    };
    let connector = DingTalkConnector::start_with_skills(
        fast_config(&dingtalk, &db),
        shared_models(),
        Arc::new(SkillSet::new(&skills).unwrap()),
    )
    .await
    .unwrap();
    dingtalk
        .wait_for(PATIENCE, |w| (w.stats().live_connections == 1).then_some(()))
        .await
        .unwrap();
    let secret = "/echo call 13812345678, ID 11010519491231002X";
    assert_eq!(
        ask(&dingtalk, &connector, "pat", secret).await,
        "you said: call 13812345678, ID 11010519491231002X"
    );
    assert!(!ask(&dingtalk, &connector, "pat", "Say one word.").await.is_empty());
    connector.shutdown(Duration::from_secs(30)).await;

    let mut jsonl = Vec::new();
    assert_eq!(
        gateway::audit::export(&db, ExportFormat::Jsonl, 0, &mut jsonl).unwrap(),
        2
    );
    let text = String::from_utf8(jsonl).unwrap();
    assert!(
        !text.contains("13812345678") && !text.contains("11010519491231002X"),
        "{text}"
    );
    let from_jsonl: Vec<AuditRecord> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(from_jsonl[0].question, "/echo call [masked], ID [masked]");
    assert_eq!(from_jsonl[0].answer, "you said: call [masked], ID [masked]");
    assert_eq!(
        (
            from_jsonl[0].handler.to_string().as_str(),
            from_jsonl[0].sender_id.as_str()
        ),
        ("skill:echo", "pat")
    );
    assert_eq!(from_jsonl[1].handler, format!("model:{MODEL_NAME}"));
    assert!(from_jsonl
        .iter()
        .all(|r| r.outcome == Outcome::Answered && r.first_visible_ms.is_some()));

    // The CLI writes the same records as CSV.
    let out = dir.path().join("audit.csv");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["audit", "export", "--format", "csv", "--since", "1d", "--database"])
        .arg(&db)
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let from_csv: Vec<AuditRecord> = csv::Reader::from_path(&out)
        .unwrap()
        .deserialize()
        .map(Result::unwrap)
        .collect();
    assert_eq!(from_csv, from_jsonl);
    let future = std::process::Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args([
            "audit",
            "export",
            "--format",
            "jsonl",
            "--since",
            "99999999999999",
            "--database",
        ])
        .arg(&db)
        .arg("-o")
        .arg(dir.path().join("none.jsonl"))
        .status()
        .unwrap();
    assert!(future.success());
    assert_eq!(std::fs::read_to_string(dir.path().join("none.jsonl")).unwrap(), "");

    // Retention: settled messages and audit records before the cutoff go; the model turn's session,
    // not idle yet, stays.
    let connector = DingTalkConnector::start(fast_config(&dingtalk, &db), shared_models())
        .await
        .unwrap();
    let pruned = connector.prune(gateway::db::now_ms() + 1).await.unwrap();
    assert_eq!((pruned.messages, pruned.audit_records, pruned.sessions), (2, 2, 0));
    assert_eq!(
        gateway::audit::export(&db, ExportFormat::Jsonl, 0, Vec::new()).unwrap(),
        0
    );
    connector.shutdown(Duration::from_secs(5)).await;
    dingtalk.shutdown().await.unwrap();
}

/// A card limit small enough for a short answer to need several cards (the connector's minimum).
const SMALL_CARD: usize = 256;

/// An emulator whose platform refuses streaming content over [`SMALL_CARD`] bytes.
async fn small_card_emulator() -> DingTalkEmulator {
    emulator(|c| {
        c.qps_per_api = 0;
        c.max_stream_content_bytes = SMALL_CARD;
    })
    .await
}

/// About 1.6 KB for a `/long` skill: English lines, a long run of Chinese with no break in it, Chinese
/// clauses, emoji sequences.
fn long_reply() -> String {
    let mut text: String = (1..=2)
        .map(|i| format!("Line {i}: the quick brown fox jumps over the lazy dog, again.\n"))
        .collect();
    // A code block longer than a card's remaining room: it is cut inside.
    text.push_str("```rust\nfn main() {\n");
    text.extend((1..=8).map(|i| format!("    println!(\"step {i}\");\n")));
    text.push_str("}\n```\n");
    text.extend((3..=6).map(|i| format!("Line {i}: the quick brown fox jumps over the lazy dog, again.\n")));
    text.push_str(&"今天天气很好我们去公园散步吧".repeat(14));
    text.push_str("然后回家吃饭。晚上看书，早点睡觉！\n");
    text.push_str(&"\u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}\u{1F44D}\u{1F3FD}".repeat(12));
    text
}

/// Skills with the `/long` command answering [`long_reply`].
fn long_skill() -> Arc<SkillSet> {
    let skills = SkillsConfig {
        custom: vec![skill("long", TriggerKind::Command, &["long"], &long_reply(), 0)],
        ..SkillsConfig::default()
    };
    Arc::new(SkillSet::new(&skills).unwrap())
}

/// Whether byte `at` of `text` lies inside a code block (the answers here use plain ```` ``` ```` fences only).
fn in_code(text: &str, at: usize) -> bool {
    text[..at].split('\n').filter(|line| line.starts_with("```")).count() % 2 == 1
}

/// Check that `cards` are one answer split over at least two finalized cards, `{first}`, `{first}-p2`, …,
/// each within `max` bytes in every update, whose texts concatenate to `whole` once the fence lines the
/// connector adds are taken out: where a card is cut inside a code block, it closes the block and the next
/// card opens it again, so each card's markdown stands alone.
fn assert_split_answer(cards: &[emulator::dingtalk::Card], whole: &str, max: usize) {
    assert!(cards.len() >= 2, "a long answer takes several cards: {cards:#?}");
    let first = &cards[0].out_track_id;
    for (i, card) in cards.iter().enumerate() {
        if i > 0 {
            assert_eq!(card.out_track_id, format!("{first}-p{}", i + 1));
        }
        assert_eq!(
            card.status,
            CardStatus::Finished,
            "{} is not finished",
            card.out_track_id
        );
        assert_eq!(
            card.updates.iter().filter(|u| u.is_finalize == Some(true)).count(),
            1,
            "{} finalized once",
            card.out_track_id
        );
        let largest = card
            .updates
            .iter()
            .filter_map(|u| u.content.as_ref())
            .map(String::len)
            .max()
            .unwrap_or(0);
        assert!(largest <= max, "{} carried {largest} bytes", card.out_track_id);
        assert!(!card.text.trim().is_empty() && card.text.len() <= max);
        let fences = card.text.split('\n').filter(|line| line.starts_with("```")).count();
        assert_eq!(
            fences % 2,
            0,
            "{} closes every code block it opens: {:?}",
            card.out_track_id,
            card.text
        );
    }
    let mut at = 0;
    for (i, card) in cards.iter().enumerate() {
        let mut share = card.text.as_str();
        if in_code(whole, at) {
            share = share
                .strip_prefix("```rust\n")
                .unwrap_or_else(|| panic!("{} reopens the code block: {share:?}", card.out_track_id));
        }
        if i + 1 < cards.len() {
            // A closing fence the connector added: its newline too, unless the answer had one there.
            if let Some(body) = share
                .strip_suffix("```")
                .filter(|body| whole[at..].starts_with(body) && in_code(whole, at + body.len()))
            {
                share = body;
            } else if let Some(body) = share
                .strip_suffix("\n```")
                .filter(|body| whole[at..].starts_with(body) && in_code(whole, at + body.len()))
            {
                share = body;
            }
        }
        assert!(
            whole[at..].starts_with(share),
            "{} holds the answer from byte {at}: {share:?}",
            card.out_track_id
        );
        at += share.len();
    }
    assert_eq!(at, whole.len(), "the cards hold the whole answer, in order");
}

/// The cards answering the one message in `conversation`.
fn only_answer(dingtalk: &DingTalkEmulator, conversation: &str) -> Vec<emulator::dingtalk::Card> {
    let mut answers = dingtalk.inspect(|w| crate::dingtalk::answers(&w.cards_in(conversation)));
    assert_eq!(answers.len(), 1, "one answer in {conversation}");
    answers.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dingtalk_long_answers_continue_in_new_cards_cut_on_character_boundaries() {
    let dingtalk = small_card_emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let config = DingTalkConfig {
        card_max_bytes: SMALL_CARD,
        max_answer_tokens: 160,
        ..fast_config(&dingtalk, &dir.path().join("db.sqlite3"))
    };
    let connector = DingTalkConnector::start_with_skills(config, shared_models(), long_skill())
        .await
        .unwrap();
    dingtalk
        .wait_for(PATIENCE, |w| (w.stats().live_connections == 1).then_some(()))
        .await
        .unwrap();

    // A fixed answer in a chat and in a group; the model's answer streams, so its continuation cards
    // are created and updated while it generates.
    let chat = say(&dingtalk, ConversationKind::Single, None, "lin", "/long", false);
    let group = say(
        &dingtalk,
        ConversationKind::Group,
        Some("cidLong"),
        "mei",
        "/long",
        true,
    );
    let story = say(
        &dingtalk,
        ConversationKind::Single,
        None,
        "kai",
        "Write a long story about a dragon who learns to fly.",
        false,
    );
    let records = audit(&connector, 3).await;

    let reply = long_reply();
    for posted in [&chat, &group] {
        let cards = only_answer(&dingtalk, &posted.conversation_id);
        assert_split_answer(&cards, &reply, SMALL_CARD);
        let cut_in_chinese = cards[..cards.len() - 1]
            .iter()
            .any(|c| c.text.ends_with(|ch: char| ('\u{4E00}'..='\u{9FFF}').contains(&ch)));
        assert!(
            cut_in_chinese,
            "a card ends inside the unbroken Chinese run, on a character boundary"
        );
        assert!(
            cards.iter().all(|c| !c.text.starts_with(['\u{200D}', '\u{1F3FD}'])),
            "emoji sequences stay whole"
        );
    }
    let generated = &records.iter().find(|r| r.sender_id == "kai").unwrap().answer;
    let cards = only_answer(&dingtalk, &story.conversation_id);
    assert_split_answer(&cards, generated, SMALL_CARD);
    let streamed = cards[1..]
        .iter()
        .any(|c| c.updates.iter().any(|u| u.is_finalize == Some(false)));
    assert!(streamed, "continuation cards show the answer as it grows");
    assert!(records.iter().all(|r| r.outcome == Outcome::Answered));
    connector.shutdown(Duration::from_secs(30)).await;
    dingtalk.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dingtalk_a_long_answer_cut_off_mid_way_resumes_into_the_same_cards() {
    let dingtalk = small_card_emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let config = DingTalkConfig {
        card_max_bytes: SMALL_CARD,
        ..fast_config(&dingtalk, &dir.path().join("db.sqlite3"))
    };
    let connector = DingTalkConnector::start_with_skills(config.clone(), shared_models(), long_skill())
        .await
        .unwrap();
    dingtalk
        .wait_for(PATIENCE, |w| (w.stats().live_connections == 1).then_some(()))
        .await
        .unwrap();

    // Slow card calls; the connector stops without draining once the first card is finished, which
    // leaves the answer half-delivered, as a crash would.
    dingtalk.fault(FaultCommand::Slow { millis: 200 }).unwrap();
    let posted = say(&dingtalk, ConversationKind::Single, None, "ren", "/long", false);
    let first_done = |w: &World| {
        w.cards_in(&posted.conversation_id)
            .first()
            .filter(|c| c.status == CardStatus::Finished)
            .map(|c| c.text.clone())
    };
    let first_text = dingtalk.wait_for(PATIENCE, first_done).await.unwrap();
    connector.shutdown(Duration::ZERO).await;
    assert_eq!(
        connector_state(&config, &posted.msg_id).await.as_deref(),
        Some("accepted"),
        "the answer was cut off"
    );

    dingtalk.fault(FaultCommand::Clear).unwrap();
    let connector = DingTalkConnector::start_with_skills(config, shared_models(), long_skill())
        .await
        .unwrap();
    audit(&connector, 1).await;
    let cards = only_answer(&dingtalk, &posted.conversation_id);
    assert_split_answer(&cards, &long_reply(), SMALL_CARD);
    assert_eq!(cards[0].text, first_text, "the finished card was not written again");
    // The outcome is recorded right after the audit record; shutdown waits for it.
    let outbox = connector.outbox().clone();
    connector.shutdown(Duration::from_secs(30)).await;
    assert_eq!(outbox.state(&posted.msg_id).await.unwrap().as_deref(), Some("answered"));
    dingtalk.shutdown().await.unwrap();
}

/// The outbox state of `msg_id` in `config`'s database, read with a fresh handle.
async fn connector_state(config: &DingTalkConfig, msg_id: &str) -> Option<String> {
    let outbox = gateway::dingtalk::Outbox::open(&config.database, config.robot()).unwrap();
    outbox.state(msg_id).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dingtalk_access_rules_refuse_denied_users_and_reserved_skills_with_a_card_and_an_audit_row() {
    use gateway::access_rules::AccessConfig;
    let dingtalk = fast_emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let access: AccessConfig = toml::from_str(
        r#"
        admin_skills = ["status"]
        [dingtalk]
        deny_users = ["mallory"]
        admins = ["root"]
        "#,
    )
    .unwrap();
    let skills = Arc::new(SkillSet::new(&SkillsConfig::default()).unwrap());
    let connector = DingTalkConnector::start_with_access(
        fast_config(&dingtalk, &dir.path().join("db.sqlite3")),
        shared_models(),
        skills,
        Arc::new(access.rules().unwrap()),
    )
    .await
    .unwrap();
    let defaults = AccessConfig::default();

    // A denied user gets the refusal card, whatever they ask; a user asking for an admin-only skill gets
    // the reserved card; an admin gets the skill, and a user any other skill.
    assert_eq!(ask(&dingtalk, &connector, "mallory", "/help").await, defaults.refusal);
    assert_eq!(ask(&dingtalk, &connector, "alice", "/status").await, defaults.reserved);
    let status = ask(&dingtalk, &connector, "root", "/status").await;
    assert!(status != defaults.reserved && status.contains("model"), "{status}");
    let help = ask(&dingtalk, &connector, "alice", "/help").await;
    assert!(help.starts_with(&SkillsConfig::default().help_text), "{help}");

    let records = audit(&connector, 4).await;
    let handler = |sender: &str, question: &str| {
        records
            .iter()
            .find(|r| r.sender_id == sender && r.question == question)
            .map(|r| (r.handler.to_string(), r.answer.clone()))
            .unwrap_or_else(|| panic!("no audit row for {sender}: {records:#?}"))
    };
    assert_eq!(
        handler("mallory", "/help"),
        (
            "refused:denied by deny_users (mallory)".to_owned(),
            defaults.refusal.clone()
        )
    );
    assert_eq!(
        handler("alice", "/status"),
        (
            "refused:the skill \"status\" is reserved to admins".to_owned(),
            defaults.reserved.clone()
        )
    );
    assert_eq!(handler("root", "/status").0, "skill:status");
    assert_eq!(handler("alice", "/help").0, "skill:help");
    connector.shutdown(Duration::from_secs(30)).await;
    dingtalk.shutdown().await.unwrap();
}
