//! The subcommands: `serve` (HTTP API until SIGINT/SIGTERM), `generate` (one answer to stdout), `chat`
//! (an interactive terminal conversation), `config` (check or print the configuration) and `doctor`.

use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use engine::{ChatMessage, Engine, EngineConfig, EngineError, EngineHandle, Event, GenerateRequest, StopParams};
use gateway::config::{self, Config};
use gateway::dingtalk::DingTalkConnector;
use gateway::doctor;
use gateway::feishu::FeishuConnector;
use gateway::routing::{CatalogEntry, Fallback, Loaded, ModelRouter};
use gateway::skills::SkillSet;
use gateway::wecom::WeComConnector;
use gateway::{server, AppState};
use tokio::sync::mpsc;

use crate::cli::{
    AuditExportArgs, ChatArgs, ConfigCommand, DingTalkEmulatorArgs, DoctorArgs, FeishuEmulatorArgs, GenerateArgs,
    SamplingArgs, ServeArgs,
};

/// `hearth serve`.
pub fn serve(args: ServeArgs, config: &Config, config_file: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let gateway_config = args.gateway_config(config)?;
    let mut dingtalk_config = args.dingtalk.dingtalk_config(config)?;
    let mut feishu_config = args.feishu.feishu_config(config)?;
    let mut wecom_config = args.wecom.wecom_config(config)?;
    // A shared store ([data] url) takes the place of each platform's own SQLite file. Feishu's card book
    // stays a file of this node's, in the data directory.
    if let Some(url) = &config.data.url {
        let store = PathBuf::from(url);
        if let Some(dingtalk) = &mut dingtalk_config {
            dingtalk.database = store.clone();
        }
        if let Some(feishu) = &mut feishu_config {
            feishu.database = store.clone();
            let book = config.data.dir.join("feishu.cards.sqlite3");
            feishu.card_book.get_or_insert(book);
        }
        if let Some(wecom) = &mut wecom_config {
            wecom.database = store;
        }
    }
    let skills_config = config.skills.clone();
    let access = Arc::new(config.access.rules().context("invalid [access]")?);
    let kb_path = config.data.dir.join(gateway::kb::DATABASE_FILE);
    let engine_config = args.engine.engine_config(config)?;
    let engine = load_engine(engine_config.clone())?;
    let name = gateway_config
        .server
        .served_model_name
        .clone()
        .unwrap_or_else(|| engine.info().name.clone());
    let fallback = match &config.routing.fallback {
        Some(fallback) => {
            let entry = config
                .models
                .iter()
                .find(|m| &m.name == fallback)
                .expect("config validation checks the fallback names an entry");
            let mut fallback_config = engine_config.clone();
            fallback_config.model_path = entry.path.clone();
            let model = Arc::new(Loaded {
                name: fallback.as_str().into(),
                engine: load_engine(fallback_config)?,
            });
            Some(Fallback {
                model,
                after: Duration::from_secs_f64(config.routing.fallback_after_secs),
            })
        }
        None => None,
    };
    let catalog = config
        .models
        .iter()
        .map(|m| CatalogEntry {
            name: m.name.clone(),
            path: m.path.clone(),
        })
        .collect();
    let router = Arc::new(ModelRouter::new(
        Arc::new(Loaded {
            name: name.into(),
            engine,
        }),
        fallback,
        catalog,
        Some(engine_config),
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listener = server::bind(&gateway_config).await.with_context(|| {
            format!(
                "cannot listen on {}:{}",
                gateway_config.server.host, gateway_config.server.port
            )
        })?;
        let skills = if dingtalk_config.is_some() || feishu_config.is_some() || wecom_config.is_some() {
            let skills = match &config_file {
                Some(file) => SkillSet::with_file(&skills_config, file.clone()),
                None => SkillSet::new(&skills_config),
            };
            let skills = Arc::new(skills.context("invalid [skills]")?);
            // Model answers draw on the knowledge base once `hearth kb add` has made one.
            if kb_path.is_file() {
                let kb = gateway::kb::KnowledgeBase::open(&kb_path).context("cannot open the knowledge base")?;
                skills.attach_knowledge(Arc::new(kb));
            }
            // Reload [skills] when the config file changes; the task ends with the process.
            let _watcher = skills.watch(Duration::from_secs(2));
            Some(skills)
        } else {
            None
        };
        let connector = match (dingtalk_config, &skills) {
            (Some(config), Some(skills)) => {
                let base = config.api_base_url.clone();
                let connector =
                    DingTalkConnector::start_with_access(config, router.clone(), skills.clone(), access.clone())
                        .await
                        .context("cannot start the DingTalk connector")?;
                tracing::info!(api = %base, "DingTalk connector started");
                Some(connector)
            }
            _ => None,
        };
        let feishu = match (feishu_config, &skills) {
            (Some(config), Some(skills)) => {
                let base = config.base().to_owned();
                let connector =
                    FeishuConnector::start_with_access(config, router.clone(), skills.clone(), access.clone())
                        .await
                        .context("cannot start the Feishu connector")?;
                tracing::info!(api = %base, "Feishu connector started");
                Some(connector)
            }
            _ => None,
        };
        let wecom = match (wecom_config, &skills) {
            (Some(wecom), Some(skills)) => {
                let mode = wecom.mode;
                let connector =
                    WeComConnector::start_with_access(wecom, router.clone(), skills.clone(), access.clone())
                        .await
                        .context("cannot start the WeCom connector")?;
                tracing::info!(?mode, "WeCom connector started");
                Some(connector)
            }
            _ => None,
        };
        let platforms = connector
            .iter()
            .map(DingTalkConnector::link)
            .chain(feishu.iter().map(FeishuConnector::link))
            .chain(wecom.iter().map(WeComConnector::link))
            .collect();
        let mut state = AppState::with_shared_router(router.clone(), &gateway_config).with_platforms(platforms);
        state.wecom_callback = wecom.as_ref().and_then(|w| w.adapter().callback());
        if state.credentials.guards(gateway::access::Scope::Admin) {
            state = state.with_admin_log(open_admin_log(&config.data.dir)?);
        }
        let addr = listener.local_addr().context("cannot read the listening address")?;
        if gateway_config.server.admin_token.is_none()
            && gateway_config.server.api_keys.is_empty()
            && gateway_config.server.keys.is_empty()
            && !gateway::access::is_loopback_host(&gateway_config.server.host)
        {
            tracing::warn!(
                host = %gateway_config.server.host,
                "no server.admin_token or server.api_keys: the API is open to the network, and the web \
                 console's data (/console/api/*) is refused until one is configured"
            );
        }
        tracing::info!(
            %addr,
            model = %state.models.active().name,
            api_keys = gateway_config.server.api_keys.len(),
            named_keys = gateway_config.server.keys.len(),
            tls = gateway_config.tls.is_some(),
            "listening: OpenAI-compatible API at {}://{addr}/v1",
            if gateway_config.tls.is_some() { "https" } else { "http" }
        );
        let drain = gateway_config.drain_timeout();
        // On SIGINT/SIGTERM the connector stops taking messages and drains its answers first, then HTTP drains.
        let shutdown = async move {
            server::shutdown_signal().await;
            if let Some(connector) = connector {
                connector.shutdown(drain).await;
            }
            if let Some(connector) = feishu {
                connector.shutdown(drain).await;
            }
            if let Some(wecom) = wecom {
                wecom.shutdown(drain).await;
            }
        };
        server::serve(listener, state, shutdown, gateway_config.drain_timeout())
            .await
            .context("the HTTP server failed")
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The admin audit log in the data directory (created if missing): with the admin API on, admin actions that
/// change state are refused without it, so failing to open it stops `serve` here, naming the file.
fn open_admin_log(dir: &std::path::Path) -> anyhow::Result<gateway::admin_log::AdminLog> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the data directory {} ([data] dir)", dir.display()))?;
    let path = dir.join(gateway::admin_log::DATABASE_FILE);
    let log = gateway::admin_log::AdminLog::open(&path)
        .context("the admin API is on (server.admin_token, or a key with the admin scope), and records every change")?;
    tracing::info!(path = %path.display(), "admin actions are recorded in the admin audit log");
    Ok(log)
}

/// `hearth emulate dingtalk`: a local DingTalk until SIGINT/SIGTERM.
pub fn emulate_dingtalk(args: DingTalkEmulatorArgs) -> anyhow::Result<ExitCode> {
    let config = args.emulator_config();
    emulate(&args.host, args.port, |addr| async move {
        let dingtalk = emulator::dingtalk::DingTalkEmulator::start(config, addr).await?;
        let base = dingtalk.base_url();
        tracing::info!(
            client_id = %dingtalk.config().client_id,
            "DingTalk emulator: OpenAPI and Stream at {base} (point DINGTALK_OPENAPI_ENDPOINT there), page at {base}/_emulator"
        );
        println!("{base}");
        Ok(dingtalk.run_until(server::shutdown_signal()).await?)
    })
}

/// `hearth emulate feishu`: a local Feishu until SIGINT/SIGTERM.
pub fn emulate_feishu(args: FeishuEmulatorArgs) -> anyhow::Result<ExitCode> {
    let config = args.emulator_config();
    emulate(&args.host, args.port, |addr| async move {
        let feishu = emulator::feishu::FeishuEmulator::start(config, addr).await?;
        let base = feishu.base_url();
        tracing::info!(
            app_id = %feishu.config().app_id,
            "Feishu emulator: discovery, long connection and OpenAPI at {base} (an SDK's domain), page at {base}/_emulator"
        );
        println!("{base}");
        Ok(feishu.run_until(server::shutdown_signal()).await?)
    })
}

/// Run an emulator on HOST:PORT in a fresh runtime: `serve` starts it, prints its base URL as the one line on
/// stdout (for scripts that start it on port 0) and serves until SIGINT/SIGTERM.
pub(crate) fn emulate<F, Fut>(host: &str, port: u16, serve: F) -> anyhow::Result<ExitCode>
where
    F: FnOnce(std::net::SocketAddr) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let addr: std::net::SocketAddr = format!("{host}:{port}")
        .parse()
        .with_context(|| format!("--host {host} --port {port} is not a socket address"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(addr))?;
    Ok(ExitCode::SUCCESS)
}

/// `hearth generate`: runs without an async runtime, reading events with `blocking_next`.
pub fn generate(args: GenerateArgs, config: &Config) -> anyhow::Result<ExitCode> {
    let engine = load_engine(args.engine.engine_config(config)?)?;
    let tokenizer = engine.tokenizer();
    let prompt = if args.raw {
        tokenizer.encode(&args.prompt, true)?
    } else {
        let messages = [ChatMessage {
            role: "user".to_owned(),
            content: args.prompt.clone(),
        }];
        tokenizer.encode_chat(&messages, true)?
    };
    let mut events = engine.submit(request(&engine, prompt, &args.sampling))?;
    let mut stdout = io::stdout().lock();
    loop {
        match events.blocking_next() {
            Some(Event::Token(chunk)) => {
                stdout.write_all(chunk.text.as_bytes())?;
                stdout.flush()?;
            }
            Some(Event::Finished(done)) => {
                writeln!(stdout)?;
                let usage = done.usage;
                eprintln!(
                    "prompt tokens: {}, completion tokens: {}, finish: {}, time to first token: {:.1} ms, decode: {:.1} tokens/s",
                    usage.prompt_tokens,
                    usage.completion_tokens,
                    gateway::openai::finish_reason(done.reason),
                    done.timings.time_to_first_token.as_secs_f64() * 1e3,
                    done.timings.decode_tokens_per_second(usage.completion_tokens),
                );
                return Ok(ExitCode::SUCCESS);
            }
            Some(Event::Error(err)) => return Err(err.into()),
            None => return Err(EngineError::ShutDown.into()),
        }
    }
}

/// `hearth chat`: a current-thread runtime, so Ctrl-C can be raced against the token stream.
pub fn chat(args: ChatArgs, config: &Config) -> anyhow::Result<ExitCode> {
    let engine = load_engine(args.engine.engine_config(config)?)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(chat_loop(&engine, &args));
    engine.shutdown();
    result.map(|()| ExitCode::SUCCESS)
}

/// `hearth config check|example`.
pub fn config(command: &ConfigCommand, file: Option<&Path>) -> anyhow::Result<ExitCode> {
    match command {
        ConfigCommand::Example => print!("{}", config::EXAMPLE),
        ConfigCommand::Check => {
            let loaded = Config::load(file)?;
            // The certificate and key must parse and belong together, as `serve` will need them.
            gateway::tls::Tls::from_config(&loaded.server)?;
            for warning in config::permission_warnings(file, &loaded) {
                eprintln!("warning: {warning}");
            }
            match file {
                Some(file) => eprintln!("{}: ok", file.display()),
                None => {
                    eprintln!("no config file (pass --config FILE or set HEARTH_CONFIG): defaults and environment: ok")
                }
            }
            print!("{}", loaded.to_redacted_toml());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `hearth doctor`: the report goes to stdout; exit status 1 when a check failed.
pub fn doctor(args: DoctorArgs, config: Config, config_path: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let inputs = doctor::Inputs {
        kv_cache_tokens: config
            .engine
            .kv_cache_tokens
            .unwrap_or_else(|| EngineConfig::new("").kv_cache_tokens),
        host: config.server.host.clone(),
        port: args.port.unwrap_or(config.server.port),
        model: args.model,
        cpuinfo: args.cpuinfo,
        config_path,
        config,
    };
    let report = doctor::run(&inputs);
    print!("{report}");
    Ok(if report.failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// How one chat turn ended.
enum Turn {
    Answered(String),
    Cancelled,
}

async fn chat_loop(engine: &EngineHandle, args: &ChatArgs) -> anyhow::Result<()> {
    let mut history: Vec<ChatMessage> = Vec::new();
    if let Some(system) = &args.system {
        history.push(ChatMessage {
            role: "system".to_owned(),
            content: system.clone(),
        });
    }
    let kept_on_reset = history.len();
    let mut lines = stdin_lines();
    eprintln!(
        "Chatting with {}. /reset clears the history, /quit or Ctrl-D exits, Ctrl-C stops an answer.",
        engine.info().name
    );
    loop {
        print!("> ");
        io::stdout().flush()?;
        let line = tokio::select! {
            line = lines.recv() => line,
            _ = tokio::signal::ctrl_c() => None,
        };
        let Some(line) = line else {
            println!();
            return Ok(());
        };
        let line = line.context("cannot read standard input")?;
        match line.trim() {
            "" => continue,
            "/quit" | "/exit" => return Ok(()),
            "/reset" => {
                history.truncate(kept_on_reset);
                eprintln!("(history cleared)");
                continue;
            }
            _ => {}
        }
        history.push(ChatMessage {
            role: "user".to_owned(),
            content: line,
        });
        match chat_turn(engine, &history, &args.sampling).await {
            Ok(Turn::Answered(answer)) => history.push(ChatMessage {
                role: "assistant".to_owned(),
                content: answer,
            }),
            Ok(Turn::Cancelled) => {
                history.pop();
                eprintln!("(answer cancelled)");
            }
            Err(EngineError::ShutDown) => return Err(EngineError::ShutDown.into()),
            Err(err) => {
                history.pop();
                eprintln!("error: {err}");
                if matches!(err, EngineError::ContextTooLong { .. }) {
                    eprintln!("(the conversation no longer fits the context window: /reset starts over)");
                }
            }
        }
    }
}

/// Generate one answer to `history`, printing it as it streams. Ctrl-C drops the stream, which cancels the
/// request in the engine.
async fn chat_turn(
    engine: &EngineHandle,
    history: &[ChatMessage],
    sampling: &SamplingArgs,
) -> Result<Turn, EngineError> {
    let (handle, messages) = (engine.clone(), history.to_vec());
    // Templating and tokenizing are CPU work: keep them off the async executor.
    let prompt = tokio::task::spawn_blocking(move || {
        let tokenizer = handle.tokenizer();
        tokenizer.encode_chat(&messages, true)
    })
    .await
    .map_err(|join_err| EngineError::Tokenizer(join_err.to_string()))??;
    let mut events = engine.submit(request(engine, prompt, sampling))?;
    let mut cancel = pin!(tokio::signal::ctrl_c());
    let mut answer = String::new();
    let mut stdout = io::stdout();
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Event::Token(chunk)) => {
                    answer.push_str(&chunk.text);
                    // A closed terminal is not worth failing the turn over; the next prompt will notice.
                    let _ = stdout.write_all(chunk.text.as_bytes()).and_then(|()| stdout.flush());
                }
                Some(Event::Finished(done)) => {
                    println!();
                    eprintln!(
                        "[{} tokens, {:.1} tokens/s]",
                        done.usage.completion_tokens,
                        done.timings.decode_tokens_per_second(done.usage.completion_tokens)
                    );
                    return Ok(Turn::Answered(answer));
                }
                Some(Event::Error(err)) => {
                    println!();
                    return Err(err);
                }
                None => return Err(EngineError::ShutDown),
            },
            _ = &mut cancel => {
                drop(events);
                println!();
                return Ok(Turn::Cancelled);
            }
        }
    }
}

/// Lines of standard input, read on a dedicated thread: a blocking read must not hold up the runtime, and
/// the thread simply ends with the process when the chat is over.
fn stdin_lines() -> mpsc::Receiver<io::Result<String>> {
    // One line of look-ahead is enough: the user types one line per turn.
    let (tx, rx) = mpsc::channel(1);
    std::thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A request for `prompt` with the terminal's sampling settings, its length capped by the context window.
fn request(engine: &EngineHandle, prompt: Vec<u32>, sampling: &SamplingArgs) -> GenerateRequest {
    let room = engine.info().context_length.saturating_sub(prompt.len()).max(1);
    GenerateRequest {
        prompt,
        sampling: sampling.sampling_params(),
        stop: StopParams {
            max_tokens: sampling.max_tokens.min(room),
            ..StopParams::default()
        },
        logprobs: None,
        grammar: None,
    }
}

fn load_engine(config: EngineConfig) -> anyhow::Result<EngineHandle> {
    let path = config.model_path.clone();
    check_kv_cache_tokens(&config)?;
    tracing::info!(model = %path.display(), "loading the model");
    let started = Instant::now();
    let engine = Engine::load(config).map_err(|err| match err {
        EngineError::KvCacheTooLarge { .. } => {
            anyhow::anyhow!(
                "engine.kv_cache_tokens (--kv-cache-tokens): {err}; lower it (the default is {})",
                EngineConfig::new("").kv_cache_tokens
            )
        }
        err => anyhow::Error::new(err).context(format!("cannot load the model {}", path.display())),
    })?;
    let info = engine.info();
    tracing::info!(
        name = %info.name,
        architecture = %info.architecture,
        quantization = %info.quantization,
        context_length = info.context_length,
        seconds = started.elapsed().as_secs_f64(),
        "model loaded"
    );
    Ok(engine)
}

/// Refuse an absurd `engine.kv_cache_tokens` at once (the engine refuses one past this machine's memory
/// before allocating it).
fn check_kv_cache_tokens(config: &EngineConfig) -> anyhow::Result<()> {
    let tokens = config.kv_cache_tokens;
    anyhow::ensure!(
        tokens <= config::MAX_KV_CACHE_TOKENS,
        "engine.kv_cache_tokens (--kv-cache-tokens) is {tokens}, more than {}: no machine has the memory for it",
        config::MAX_KV_CACHE_TOKENS
    );
    Ok(())
}

/// `hearth audit export`: the audit log of the DingTalk database as JSON lines or CSV.
pub fn audit_export(args: AuditExportArgs, config: &Config) -> anyhow::Result<ExitCode> {
    let database = args
        .database
        .clone()
        .or_else(|| config.dingtalk.as_ref().map(|d| d.database.clone()))
        .context("no database: pass --database or configure [dingtalk] database")?;
    if !database.is_file() {
        anyhow::bail!("the audit database {} does not exist", database.display());
    }
    let since = match &args.since {
        Some(since) => {
            gateway::audit::parse_since(since, gateway::db::now_ms()).map_err(|e| anyhow::anyhow!("--since: {e}"))?
        }
        None => 0,
    };
    let file =
        std::fs::File::create(&args.output).with_context(|| format!("cannot create {}", args.output.display()))?;
    let count = gateway::audit::export(&database, args.format, since, io::BufWriter::new(file))?;
    tracing::info!(records = count, output = %args.output.display(), "audit log exported");
    Ok(ExitCode::SUCCESS)
}
