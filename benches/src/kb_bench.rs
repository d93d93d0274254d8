//! `kb-bench`: the knowledge base's indexing and query speed, through a real `hearth kb` child process.
//!
//! It writes `--documents` synthetic handbook pages (Chinese sentences with some English, Markdown, a fixed
//! seed so every run indexes the same text) into a temporary folder, times `hearth kb add` over all of them
//! (one process: jieba's dictionary load included, once), then times `--queries` searches in one
//! `hearth kb search` process (each search timed by `hearth` itself, so process start and dictionary load
//! stay out of the query figures). It measures and never asserts; prints a markdown table.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;

/// Benchmark `hearth kb` indexing and search.
#[derive(Parser, Debug)]
#[command(name = "kb-bench", version)]
struct Args {
    /// The `hearth` binary [default: next to this one]
    #[arg(long, value_name = "FILE")]
    hearth: Option<PathBuf>,
    /// Documents to index.
    #[arg(long, default_value_t = 3000)]
    documents: usize,
    /// Sentences per document.
    #[arg(long, default_value_t = 30)]
    sentences: usize,
    /// Searches to time.
    #[arg(long, default_value_t = 200)]
    queries: usize,
}

/// Words the synthetic pages are made of: company-handbook vocabulary.
const SUBJECTS: [&str; 16] = [
    "员工",
    "经理",
    "新同事",
    "财务部",
    "销售团队",
    "研发中心",
    "人力资源部",
    "客服人员",
    "实习生",
    "项目组",
    "采购部门",
    "行政助理",
    "区域总监",
    "IT 支持",
    "法务团队",
    "培训讲师",
];
const VERBS: [&str; 12] = [
    "需要提交",
    "可以申请",
    "必须审批",
    "负责维护",
    "每月核对",
    "定期更新",
    "应当报告",
    "统一管理",
    "提前确认",
    "按时归档",
    "协助处理",
    "不得泄露",
];
const OBJECTS: [&str; 20] = [
    "年假申请",
    "差旅报销",
    "采购合同",
    "客户资料",
    "VPN 证书",
    "服务器密码",
    "绩效考核",
    "加班记录",
    "办公用品",
    "培训计划",
    "预算报表",
    "发票原件",
    "门禁卡",
    "笔记本电脑",
    "安全漏洞",
    "会议纪要",
    "出差审批",
    "社保缴纳",
    "公积金",
    "离职手续",
];
const DETAILS: [&str; 10] = [
    "在三十天内",
    "通过 OA 系统",
    "经部门负责人同意后",
    "按照公司制度",
    "每季度一次",
    "在月底之前",
    "使用公司邮箱",
    "由 HR 复核",
    "保存五年",
    "以书面形式",
];

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn pick<'a>(&mut self, words: &[&'a str]) -> &'a str {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let n = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        words[(n >> 33) as usize % words.len()]
    }
}

fn sentence(rng: &mut Rng) -> String {
    format!(
        "{}{}{}{}。",
        rng.pick(&SUBJECTS),
        rng.pick(&DETAILS),
        rng.pick(&VERBS),
        rng.pick(&OBJECTS)
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() -> Result<()> {
    let args = Args::parse();
    let hearth = match args.hearth {
        Some(path) => path,
        None => std::env::current_exe()?.with_file_name("hearth"),
    };
    if !hearth.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release -p gateway` or pass --hearth",
            hearth.display()
        );
    }
    let dir = tempfile::tempdir()?;
    let docs = dir.path().join("docs");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&docs)?;
    let mut rng = Rng(0x5eed_1234_abcd_9876);
    let mut bytes = 0usize;
    let mut files = Vec::with_capacity(args.documents);
    for i in 0..args.documents {
        let mut text = format!("# {} {i}\n\n", rng.pick(&OBJECTS));
        for s in 0..args.sentences {
            text.push_str(&sentence(&mut rng));
            if s % 5 == 4 {
                text.push_str("\n\n");
            }
        }
        let path = docs.join(format!("page-{i:05}.md"));
        std::fs::write(&path, &text)?;
        bytes += text.len();
        files.push(path);
    }
    let run = |command: &mut Command| -> Result<String> {
        let output = command
            .env("HEARTH_DATA__DIR", &data)
            .env("HEARTH_LOG__LEVEL", "warn")
            .output()
            .with_context(|| format!("cannot run {}", hearth.display()))?;
        if !output.status.success() {
            bail!("hearth failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };

    let started = Instant::now();
    // In batches, so the command line stays short.
    for batch in files.chunks(500) {
        run(Command::new(&hearth).args(["kb", "add", "--kb", "bench"]).args(batch))?;
    }
    let index_s = started.elapsed().as_secs_f64();
    let passages: usize = run(Command::new(&hearth).args(["kb", "list"]))?
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<usize>().ok())
        .sum();
    let db_bytes = std::fs::metadata(data.join("kb.sqlite3")).map(|m| m.len()).unwrap_or(0);

    let queries: Vec<String> = (0..args.queries)
        .map(|_| {
            format!(
                "{}怎么{}{}？",
                rng.pick(&SUBJECTS),
                rng.pick(&VERBS),
                rng.pick(&OBJECTS)
            )
        })
        .collect();
    let started = Instant::now();
    let out = run(Command::new(&hearth)
        .args(["kb", "search", "--limit", "3"])
        .args(&queries))?;
    let search_process_s = started.elapsed().as_secs_f64();
    let mut times: Vec<f64> = out
        .lines()
        .filter_map(|l| {
            let rest = l.rsplit_once(" passages in ")?.1;
            rest.strip_suffix(" ms")?.parse().ok()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    if times.len() != queries.len() {
        bail!("expected {} timed searches, read {}", queries.len(), times.len());
    }

    println!("| figure | value |");
    println!("| --- | --- |");
    println!(
        "| documents | {} ({:.1} MB of Markdown) |",
        args.documents,
        bytes as f64 / 1e6
    );
    println!("| passages | {passages} |");
    println!(
        "| index (hearth kb add, {} processes) | {:.1} s = {:.0} documents/s, {:.2} MB/s |",
        files.len().div_ceil(500),
        index_s,
        args.documents as f64 / index_s,
        bytes as f64 / 1e6 / index_s
    );
    println!("| index file | {:.1} MB |", db_bytes as f64 / 1e6);
    println!(
        "| search, {} queries | p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms |",
        times.len(),
        percentile(&times, 50.0),
        percentile(&times, 99.0),
        times.last().copied().unwrap_or(0.0)
    );
    println!("| search process (dictionary load included) | {search_process_s:.2} s |");
    Ok(())
}
