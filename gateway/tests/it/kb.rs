//! The knowledge base end to end: documents ingested from files into a real index, a DingTalk group asking
//! through the emulator, SmolLM2 answering with the sources cited in the card, and a base owned by one
//! group never reaching another.

use std::sync::Arc;
use std::time::Duration;

use emulator::dingtalk::{CardStatus, ConversationKind, DingTalkEmulator};
use gateway::access_rules::AccessRules;
use gateway::dingtalk::{DingTalkConfig, DingTalkConnector};
use gateway::kb::{KnowledgeBase, Owners, Reader, DATABASE_FILE};
use gateway::skills::{SkillSet, SkillsConfig};

use crate::dingtalk::{connector_config, emulator, say, shared_models, PATIENCE};

/// Ask `text` in the group `group` (at the robot); the answer's cards once its audit record is in.
async fn ask_group(
    dingtalk: &DingTalkEmulator,
    connector: &DingTalkConnector,
    group: &str,
    user: &str,
    text: &str,
) -> String {
    let before = dingtalk.inspect(|w| w.cards_in(group).len());
    let records = connector.audit().records(0).await.unwrap().len() as u64;
    let posted = say(dingtalk, ConversationKind::Group, Some(group), user, text, true);
    let answer = dingtalk
        .wait_for(PATIENCE, |w| {
            let cards = w.cards_in(&posted.conversation_id);
            (cards.len() > before && cards.iter().all(|c| c.status == CardStatus::Finished))
                .then(|| cards[before..].iter().map(|c| c.text.clone()).collect::<String>())
        })
        .await
        .unwrap_or_else(|e| panic!("no answer to {text:?}: {e}"));
    tokio::time::timeout(PATIENCE, connector.audit().wait_for_records(records + 1))
        .await
        .expect("the audit record was written")
        .unwrap();
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dingtalk_answers_cite_the_right_document_and_a_group_owned_base_stays_in_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let docs = dir.path().join("docs");
    std::fs::create_dir(&docs).unwrap();
    std::fs::write(
        docs.join("leave-policy.md"),
        "# 年假制度\n\n员工每年享有十五天带薪年假，口令是 ZEBRA-42。\n\n年假需提前一周在系统中申请。",
    )
    .unwrap();
    std::fs::write(
        docs.join("expenses.html"),
        "<html><body><h1>报销流程</h1><p>差旅费用报销需在三十天内提交发票。</p></body></html>",
    )
    .unwrap();
    std::fs::write(
        docs.join("vpn.txt"),
        "Connect to the office VPN with the company certificate.",
    )
    .unwrap();
    let kb = KnowledgeBase::open(&dir.path().join(DATABASE_FILE)).unwrap();
    kb.add_file("hr", &docs.join("leave-policy.md")).unwrap();
    kb.add_file("hr", &docs.join("expenses.html")).unwrap();
    kb.set_owners(
        "hr",
        &Owners {
            groups: vec!["cidHR".to_owned()],
            departments: Vec::new(),
        },
    )
    .unwrap();
    kb.add_file("it", &docs.join("vpn.txt")).unwrap();
    assert_eq!(kb.list().unwrap().len(), 3);

    let dingtalk = emulator(|c| c.qps_per_api = 0).await;
    let skills = Arc::new(SkillSet::new(&SkillsConfig::default()).unwrap());
    skills.attach_knowledge(Arc::new(kb));
    let config = DingTalkConfig {
        card_updates_per_second: 200,
        max_answer_tokens: 16,
        ..connector_config(&dingtalk, &dir.path().join("db.sqlite3"))
    };
    let connector = DingTalkConnector::start_with_access(
        config,
        shared_models(),
        skills.clone(),
        Arc::new(AccessRules::default()),
    )
    .await
    .unwrap();

    // In the owning group, the answer cites the leave policy.
    let question = "员工每年有几天年假？";
    let inside = ask_group(&dingtalk, &connector, "cidHR", "alice", question).await;
    assert!(inside.trim_end().ends_with("Sources: leave-policy.md"), "{inside}");
    // A public base is for everyone.
    let vpn = ask_group(&dingtalk, &connector, "cidSales", "bob", "How do I connect to the VPN?").await;
    assert!(vpn.trim_end().ends_with("Sources: vpn.txt"), "{vpn}");
    // Another group asking the same gets no source, and its search never reads the owned base.
    let outside = ask_group(&dingtalk, &connector, "cidSales", "bob", question).await;
    assert!(!outside.contains("Sources:") && !outside.contains("ZEBRA"), "{outside}");
    let outsider = Reader {
        group: Some("cidSales"),
        departments: &[],
        admin: false,
    };
    assert!(skills
        .knowledge()
        .unwrap()
        .search(question, &outsider, 3)
        .unwrap()
        .is_empty());

    let records = connector.audit().records(0).await.unwrap();
    let answer_of = |group: &str, q: &str| {
        records
            .iter()
            .find(|r| r.conversation_id == group && r.question == q)
            .map(|r| r.answer.clone())
            .unwrap_or_else(|| panic!("no audit row in {group}: {records:#?}"))
    };
    // The audit keeps the question as asked and the answer with its citation.
    assert!(answer_of("cidHR", question).ends_with("Sources: leave-policy.md"));
    assert!(!answer_of("cidSales", question).contains("Sources:"));
    connector.shutdown(Duration::from_secs(30)).await;
    dingtalk.shutdown().await.unwrap();
}
