use super::*;

fn base() -> (tempfile::TempDir, KnowledgeBase) {
    let dir = tempfile::tempdir().unwrap();
    let kb = KnowledgeBase::open(&dir.path().join(DATABASE_FILE)).unwrap();
    (dir, kb)
}

const EVERYONE: Reader<'static> = Reader {
    group: None,
    departments: &[],
    admin: false,
};

#[test]
fn chinese_questions_find_the_right_document_and_replacing_and_removing_work() {
    let (_dir, kb) = base();
    kb.add_text(
        "hr",
        "leave.md",
        "# 年假\n\n员工每年享有十五天带薪年假，需提前一周申请。",
    )
    .unwrap();
    kb.add_text("hr", "expenses.md", "# 报销\n\n差旅费用报销需在三十天内提交发票。")
        .unwrap();
    kb.add_text("it", "vpn.txt", "Connect to the VPN with the company certificate.")
        .unwrap();
    let found = kb.search("我有几天带薪年假？", &EVERYONE, 3).unwrap();
    assert_eq!(found[0].document, "leave.md", "{found:#?}");
    assert_eq!(
        kb.search("how do I connect to the vpn", &EVERYONE, 1).unwrap()[0].document,
        "vpn.txt"
    );
    assert!(kb.search("？？", &EVERYONE, 3).unwrap().is_empty());
    // FTS5 syntax in a question is searched as words, not run.
    assert!(kb.search("\"年假\" OR NEAR(", &EVERYONE, 3).is_ok());

    // Adding a document again replaces it; removing drops its passages.
    kb.add_text("hr", "leave.md", "员工每年享有二十天年假。").unwrap();
    assert_eq!(kb.list().unwrap().len(), 3);
    assert!(kb.search("年假", &EVERYONE, 3).unwrap()[0].text.contains("二十天"));
    assert!(kb.remove("hr", "leave.md").unwrap());
    assert!(!kb.remove("hr", "leave.md").unwrap());
    assert!(kb.search("年假", &EVERYONE, 3).unwrap().is_empty());
}

#[test]
fn owned_bases_are_read_only_by_their_groups_departments_and_admins() {
    let (_dir, kb) = base();
    kb.add_text("finance", "budget.md", "2027 年预算：市场部八百万。")
        .unwrap();
    kb.set_owners(
        "finance",
        &Owners {
            groups: vec!["cidFinance".to_owned()],
            departments: vec!["Finance".to_owned()],
        },
    )
    .unwrap();
    let departments = ["Finance".to_owned()];
    let readers = [
        (EVERYONE, false),
        (
            Reader {
                group: Some("cidOther"),
                ..EVERYONE
            },
            false,
        ),
        (
            Reader {
                group: Some("cidFinance"),
                ..EVERYONE
            },
            true,
        ),
        (
            Reader {
                departments: &departments,
                ..EVERYONE
            },
            true,
        ),
        (
            Reader {
                admin: true,
                ..EVERYONE
            },
            true,
        ),
    ];
    for (reader, reads) in readers {
        let found = kb.search("市场部预算", &reader, 3).unwrap();
        assert_eq!(!found.is_empty(), reads, "{reader:?}");
    }
}

#[test]
fn long_text_is_cut_into_bounded_passages() {
    let text = format!("{}\n\n{}\n\nshort", "长".repeat(1500), "b ".repeat(100));
    let cut = passages(&text);
    assert!(cut.iter().all(|p| p.chars().count() <= PASSAGE_CHARS), "{cut:?}");
    assert_eq!(cut.len(), 4);
    assert!(cut[3].ends_with("short"));
}
