//! [`ThrowawayPostgres`]: a real PostgreSQL server in a temporary directory, for the tests and the
//! benchmark that run the store on PostgreSQL. It uses the server binaries of Debian's `postgresql`
//! package (`/usr/lib/postgresql/<version>/bin`, the newest version found).
//!
//! `initdb` and `postgres` refuse to run as root, so when the process is root (as in CI containers) they
//! run as the unprivileged `postgres` system user (else `nobody`) through `setpriv`, in a temporary
//! directory handed to that user. The server listens on a free port on 127.0.0.1 and puts its unix socket
//! in the same directory; authentication is `trust` (it is reachable from this machine only, for as long as
//! the test lives). It is stopped when dropped; a server never dropped (one a whole test binary shares, or
//! a killed test run) is stopped and its directory removed by the shell that runs it, which waits on a pipe
//! from this process that the kernel closes however the process ends.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// How long a starting server may take before it is reported as failed.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a throwaway server could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ThrowawayError {
    #[error("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin (apt-get install postgresql)")]
    NotInstalled,
    #[error("cannot run {what}: {source}")]
    Spawn { what: String, source: std::io::Error },
    #[error("{what} failed: {output}")]
    Failed { what: String, output: String },
    #[error("the server did not start: {0}")]
    NotStarted(String),
}

/// A running throwaway PostgreSQL server.
pub struct ThrowawayPostgres {
    bin: PathBuf,
    /// `cluster` (the data directory) and the unix socket live here; removed on drop.
    dir: tempfile::TempDir,
    port: u16,
    /// The user the server runs as when this process is root.
    user: Option<String>,
    server: Option<Server>,
    next_database: AtomicU32,
}

/// The shell that runs the server and stops it.
struct Server {
    shell: Child,
    /// A `stop` line stops the server; its end (this process died) stops it and removes the directory.
    pipe: Option<ChildStdin>,
}

impl ThrowawayPostgres {
    /// Create a cluster in a new temporary directory and start its server.
    pub fn start() -> Result<Self, ThrowawayError> {
        let bin = server_binaries().ok_or(ThrowawayError::NotInstalled)?;
        let dir = tempfile::Builder::new()
            .prefix("hearth-pg-")
            .tempdir()
            .map_err(|source| spawn_error("mkdtemp", source))?;
        let user = is_root().then(unprivileged_user);
        if let Some(user) = &user {
            run(Command::new("chown").arg(user).arg(dir.path()), "chown")?;
        }
        let data = dir.path().join("cluster");
        run(
            as_user(&user, bin.join("initdb"))
                .args([
                    "--auth=trust",
                    "--username=postgres",
                    "--encoding=UTF8",
                    "--no-sync",
                    "-D",
                ])
                .arg(&data),
            "initdb",
        )?;
        let port = free_port().map_err(|source| spawn_error("bind", source))?;
        let mut postgres = Self {
            bin,
            dir,
            port,
            user,
            server: None,
            next_database: AtomicU32::new(1),
        };
        postgres.start_server()?;
        Ok(postgres)
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of `database` on this server.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Create a new, empty database and return its URL (each test gets its own).
    pub fn create_database(&self) -> Result<String, ThrowawayError> {
        let name = format!("hearth_{}", self.next_database.fetch_add(1, Ordering::Relaxed));
        run(
            Command::new(self.bin.join("createdb"))
                .args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
                .arg(self.port.to_string())
                .arg(&name),
            "createdb",
        )?;
        Ok(self.url(&name))
    }

    /// Stop the server (fast shutdown: open connections are cut), as an outage would.
    pub fn stop(&mut self) {
        // Dropping the server stops it (and waits until it has).
        self.server = None;
    }

    /// Start the server again on the same port and data (after [`ThrowawayPostgres::stop`]).
    pub fn restart(&mut self) -> Result<(), ThrowawayError> {
        self.stop();
        self.start_server()
    }

    fn start_server(&mut self) -> Result<(), ThrowawayError> {
        let data = self.dir.path().join("cluster");
        let server = as_user(&self.user, self.bin.join("postgres"));
        let mut words: Vec<String> = std::iter::once(server.get_program())
            .chain(server.get_args())
            .map(|word| word.to_string_lossy().into_owned())
            .collect();
        words.push("-D".to_owned());
        words.push(data.to_string_lossy().into_owned());
        words.push("-p".to_owned());
        words.push(self.port.to_string());
        words.push("-k".to_owned());
        words.push(self.dir.path().to_string_lossy().into_owned());
        for setting in ["listen_addresses=127.0.0.1", "fsync=off", "max_connections=200"] {
            words.push("-c".to_owned());
            words.push(setting.to_owned());
        }
        let command: Vec<String> = words.iter().map(|word| quote(word)).collect();
        // The shell is the watchdog: it runs the server, then waits for a line on its stdin. `stop` (from
        // `stop`) stops the server and keeps the directory for a restart; end of input (this process died)
        // stops it and removes the directory.
        let script = format!(
            "{} </dev/null >/dev/null & pid=$!; read -r cmd; kill -INT $pid; wait $pid; [ \"$cmd\" = stop ] || rm -rf {}",
            command.join(" "),
            quote(&self.dir.path().to_string_lossy())
        );
        let mut shell = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| spawn_error("postgres", source))?;
        let pipe = shell.stdin.take();
        // The server logs to stderr; it is read to its end on a thread (so it never blocks on a full pipe),
        // and the line saying it is ready is awaited.
        let stderr = shell.stderr.take().expect("stderr is piped");
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut log = String::new();
            let mut ready = Some(ready_tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("ready to accept connections") {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(Ok(()));
                    }
                } else if ready.is_some() {
                    log.push_str(&line);
                    log.push('\n');
                }
            }
            if let Some(ready) = ready.take() {
                let _ = ready.send(Err(log));
            }
        });
        self.server = Some(Server { shell, pipe });
        match ready_rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(log)) => {
                self.stop();
                Err(ThrowawayError::NotStarted(log))
            }
            Err(_) => {
                self.stop();
                Err(ThrowawayError::NotStarted(format!(
                    "not ready within {}s",
                    START_TIMEOUT.as_secs()
                )))
            }
        }
    }
}

impl Drop for ThrowawayPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut pipe) = self.pipe.take() {
            let _ = pipe.write_all(b"stop\n");
        }
        let _ = self.shell.wait();
    }
}

/// `word` quoted for `sh`.
fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// The newest `/usr/lib/postgresql/<version>/bin` holding `postgres`.
fn server_binaries() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `postgres` when that user exists, else `nobody`.
fn unprivileged_user() -> String {
    let exists = Command::new("id")
        .arg("postgres")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if exists { "postgres" } else { "nobody" }.to_owned()
}

/// `program`, run as `user` when given.
fn as_user(user: &Option<String>, program: impl AsRef<Path>) -> Command {
    match user {
        Some(user) => {
            let mut command = Command::new("setpriv");
            command
                .arg(format!("--reuid={user}"))
                .arg(format!("--regid={user}"))
                .arg("--clear-groups")
                .arg(program.as_ref());
            command
        }
        None => Command::new(program.as_ref()),
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn spawn_error(what: &str, source: std::io::Error) -> ThrowawayError {
    ThrowawayError::Spawn {
        what: what.to_owned(),
        source,
    }
}

fn run(command: &mut Command, what: &str) -> Result<(), ThrowawayError> {
    let output = command.output().map_err(|source| spawn_error(what, source))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(ThrowawayError::Failed {
            what: what.to_owned(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        })
    }
}
