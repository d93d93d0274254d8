//! `hearth kb add|list|remove`: the knowledge base in the data directory (see `gateway::kb`).

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use gateway::config::Config;
use gateway::kb::{KnowledgeBase, Owners, Reader, DATABASE_FILE};

#[derive(Debug, Subcommand)]
pub enum KbCommand {
    /// Add Markdown, text or HTML files to a knowledge base (a file added again replaces its earlier version).
    Add(KbAddArgs),
    /// List the documents of every knowledge base, with who may read each base.
    List,
    /// Remove a document from a knowledge base by its name (as `list` shows it).
    Remove(KbRemoveArgs),
    /// Show what IM answers would draw on for each query, and how long each search took.
    Search(KbSearchArgs),
}

#[derive(Debug, Args)]
pub struct KbSearchArgs {
    /// Search as a sender in this group (IM conversation id); without it, only bases without owners are read.
    #[arg(long, value_name = "ID")]
    pub group: Option<String>,
    /// Search as a sender of this department; repeatable.
    #[arg(long = "department", value_name = "NAME")]
    pub departments: Vec<String>,
    /// Search every base, as an admin.
    #[arg(long)]
    pub admin: bool,
    /// Passages per query.
    #[arg(long, default_value_t = 3)]
    pub limit: usize,
    /// The queries.
    #[arg(required = true, value_name = "QUERY")]
    pub queries: Vec<String>,
}

#[derive(Debug, Args)]
pub struct KbAddArgs {
    /// The knowledge base to add to.
    #[arg(long, default_value = "company")]
    pub kb: String,
    /// A group (IM conversation id) that owns the base; repeatable. With owners, only senders in an owning
    /// group or department (and admins) get answers from it; these options replace the base's owners.
    #[arg(long = "group", value_name = "ID")]
    pub groups: Vec<String>,
    /// A department (as `[access] directory` names it) that owns the base; repeatable.
    #[arg(long = "department", value_name = "NAME")]
    pub departments: Vec<String>,
    /// The files (.md, .markdown, .txt, .text, .html, .htm).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct KbRemoveArgs {
    /// The knowledge base the document is in.
    #[arg(long, default_value = "company")]
    pub kb: String,
    /// The document's name.
    pub name: String,
}

/// Run a `hearth kb` command against the data directory's knowledge base.
pub fn run(command: KbCommand, config: &Config) -> anyhow::Result<ExitCode> {
    let dir = &config.data.dir;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the data directory {} ([data] dir)", dir.display()))?;
    let path = dir.join(DATABASE_FILE);
    let kb = KnowledgeBase::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    match command {
        KbCommand::Add(args) => {
            let started = std::time::Instant::now();
            let mut added = 0;
            for file in &args.files {
                let document = kb.add_file(&args.kb, file)?;
                println!(
                    "added {} to {} ({} passages)",
                    document.name, document.base, document.passages
                );
                added += 1;
            }
            if !args.groups.is_empty() || !args.departments.is_empty() {
                kb.set_owners(
                    &args.kb,
                    &Owners {
                        groups: args.groups,
                        departments: args.departments,
                    },
                )?;
            }
            println!("{added} documents in {:.1} s", started.elapsed().as_secs_f64());
        }
        KbCommand::List => {
            for (base, owners) in kb.bases()? {
                let readers = if owners.groups.is_empty() && owners.departments.is_empty() {
                    "everyone".to_owned()
                } else {
                    format!("groups {:?}, departments {:?}", owners.groups, owners.departments)
                };
                println!("[{base}] readable by {readers}");
                for document in kb.list()?.into_iter().filter(|d| d.base == base) {
                    println!(
                        "  {}  {} passages, {} characters",
                        document.name, document.passages, document.chars
                    );
                }
            }
        }
        KbCommand::Search(args) => {
            let reader = Reader {
                group: args.group.as_deref(),
                departments: &args.departments,
                admin: args.admin,
            };
            // Load jieba's dictionary first, so the first query's time is the search's alone.
            let _ = gateway::kb::words("预热");
            for query in &args.queries {
                let started = std::time::Instant::now();
                let passages = kb.search(query, &reader, args.limit)?;
                let took = started.elapsed();
                println!(
                    "{query}: {} passages in {:.3} ms",
                    passages.len(),
                    took.as_secs_f64() * 1e3
                );
                for passage in passages {
                    let preview: String = passage.text.chars().take(80).collect();
                    println!(
                        "  [{}] {}: {}",
                        passage.base,
                        passage.document,
                        preview.replace('\n', " ")
                    );
                }
            }
        }
        KbCommand::Remove(args) => {
            if !kb.remove(&args.kb, &args.name)? {
                anyhow::bail!(
                    "{} has no document named {:?} (see `hearth kb list`)",
                    args.kb,
                    args.name
                );
            }
            println!("removed {} from {}", args.name, args.kb);
        }
    }
    Ok(ExitCode::SUCCESS)
}
