//! Shared integration-test support: a SecantusDB (MongoDB-wire) server.
//!
//! Use with `mod support;` from a file in `tests/`.
//!
//! * [`uri`] gives the URI of one server shared by the whole test binary,
//!   or `$TALLY_TEST_MONGODB_URI` when that is set.
//! * [`start_server`] starts a private server (own flags, optional persistent
//!   storage) that can be stopped, restarted on the same port, or hard-killed;
//!   `process::Env::own` gives a test one of its own (tests/faults.rs).
//! * [`unique_db`] names a database no other test (or run) uses.
//!
//! Beside the server: [`process`] (tally as a child process, its clock and
//! log), [`workload`] (coin's API write pattern with a model of the
//! balances), [`http`] (a free port and one GET), [`poll`] (the one "until X, or fail after T" loop) and
//! [`writes`] (tally's own writes built by hand, for the fence).
//!
//! Every server runs under a small Python watchdog whose stdin is a pipe from
//! this test process. When the write end closes — `Server` dropped, or the
//! test process exits, panics, or is SIGKILLed (the kernel closes the fd) —
//! the watchdog sends SIGTERM to secantusd, waits up to 20 s, then SIGKILLs it.
//! That is how the shared server, a never-dropped static, dies with the binary.
#![allow(dead_code)]

pub mod http;
pub mod poll;
pub mod process;
pub mod workload;
pub mod writes;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Set this to use an already-running server instead of starting one.
pub const URI_ENV: &str = "TALLY_TEST_MONGODB_URI";

const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The watchdog: `python3 -c WATCHDOG secantusd-py ARGS...`.
/// stdin EOF (or SIGTERM/SIGINT/SIGHUP) -> graceful stop of the server
/// (SIGTERM, then a connection to wake its accept loop; SIGKILL after 20 s);
/// a line `kill` -> SIGKILL the server. Exits as soon as the server exits,
/// with the server's status.
const WATCHDOG: &str = r#"
import os, signal, socket, subprocess, sys, threading, time
port = int(sys.argv[sys.argv.index("--port") + 1])
srv = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL)
def reap():
    rc = srv.wait()
    os._exit(rc if rc >= 0 else 128 - rc)
threading.Thread(target=reap, daemon=True).start()
def bye(*_):
    raise SystemExit
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, bye)
try:
    for line in sys.stdin.buffer:
        if line.strip() == b"kill":
            srv.kill()
except BaseException:
    pass
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, signal.SIG_IGN)
srv.terminate()
for _ in range(40):  # secantusd's accept() sees the stop only on a new connection
    time.sleep(0.05)
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
    except OSError:
        break
try:
    srv.wait(20)
except BaseException:
    srv.kill()
srv.wait()
"#;

/// `$TALLY_TEST_MONGODB_URI`, when it is set.
pub fn external_uri() -> Option<String> {
    std::env::var(URI_ENV)
        .ok()
        .filter(|uri| !uri.trim().is_empty())
}

/// URI of the server shared by this test binary (started on first use).
pub fn uri() -> String {
    static SHARED: OnceLock<Result<Server, String>> = OnceLock::new();
    if let Some(uri) = external_uri() {
        return uri;
    }
    match SHARED.get_or_init(|| Server::launch(&[], None, true)) {
        Ok(server) => server.uri(),
        Err(e) => panic!("shared SecantusDB test server failed to start: {e}"),
    }
}

/// A database name unique to this call: `prefix` + pid + counter + time,
/// at most 38 characters (the prefix is shortened, never the unique part).
pub fn unique_db(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    let suffix = format!(
        "_{}_{}_{}",
        base36(u64::from(std::process::id())),
        base36(n),
        base36(nanos)
    );
    let prefix: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(38usize.saturating_sub(suffix.len()))
        .collect();
    format!("{prefix}{suffix}")
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii")
}

/// Start a private server. `extra_args` are appended to the secantusd-py
/// command line (e.g. `["--oplog-max-entries", "50"]`); `storage` is a
/// WiredTiger directory that survives [`Server::restart`] (created if
/// missing), `None` for a throwaway `:memory:` store. Panics on failure.
pub fn start_server(extra_args: &[&str], storage: Option<&Path>) -> Server {
    Server::launch(extra_args, storage, false).unwrap_or_else(|e| panic!("{e}"))
}

/// A SecantusDB child process (behind its watchdog). Dropping it stops it.
pub struct Server {
    port: u16,
    args: Vec<String>,
    storage: Option<PathBuf>,
    log: PathBuf,
    child: Option<Child>,
}

impl Server {
    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The persistent storage directory, if any.
    pub fn storage(&self) -> Option<&Path> {
        self.storage.as_deref()
    }

    /// The server's stdout/stderr log (removed when a non-panicking test drops it).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Graceful stop (SIGTERM, so WiredTiger checkpoints), waiting for exit.
    /// Idempotent.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        drop(child.stdin.take()); // EOF: the watchdog terminates the server
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Crash the server with SIGKILL (no checkpoint, no cleanup) and wait.
    /// A `:memory:` store leaks its temp dir when killed this way.
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(stdin) = child.stdin.as_mut() {
            let _ = stdin.write_all(b"kill\n").and_then(|()| stdin.flush());
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stop (if running) and start again on the same port and storage.
    /// With `:memory:` storage the data is gone afterwards.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.spawn(true) {
            panic!("restarting SecantusDB on port {}: {e}", self.port);
        }
    }

    fn launch(extra_args: &[&str], storage: Option<&Path>, shared: bool) -> Result<Self, String> {
        if let Some(dir) = storage {
            fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        let mut last_err = String::new();
        // A free port can be taken between probing and binding: retry that.
        for _ in 0..3 {
            let port = free_port()?;
            let mut server = Server {
                port,
                args: extra_args.iter().map(|s| s.to_string()).collect(),
                storage: storage.map(Path::to_path_buf),
                log: state_dir()?.join(if shared {
                    // One log per test binary, overwritten by its next run.
                    let exe = std::env::current_exe().unwrap_or_default();
                    let name = exe.file_stem().unwrap_or_default().to_string_lossy();
                    format!("shared-{name}.log")
                } else {
                    format!("secantusdb-{port}.log")
                }),
                child: None,
            };
            match server.spawn(false) {
                Ok(()) => return Ok(server),
                Err(e) if e.contains("Address already in use") => last_err = e,
                Err(e) => return Err(e),
            }
        }
        Err(last_err)
    }

    fn spawn(&mut self, append_log: bool) -> Result<(), String> {
        let log = OpenOptions::new()
            .create(true)
            .append(append_log)
            .write(true)
            .truncate(!append_log)
            .open(&self.log)
            .map_err(|e| format!("opening {}: {e}", self.log.display()))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let bin = secantusd()?;
        let storage = match &self.storage {
            Some(dir) => dir.display().to_string(),
            None => ":memory:".to_string(),
        };
        let config = state_dir()?.join("empty.toml"); // disables config auto-discovery
        if !config.exists() {
            File::create(&config).map_err(|e| format!("creating {}: {e}", config.display()))?;
        }
        let port = self.port.to_string();
        let mut child = Command::new(python_for(bin))
            .arg("-c")
            .arg(WATCHDOG)
            .arg(bin)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port,
                "--storage-path",
                &storage,
            ])
            .arg("--config")
            .arg(&config)
            .args(["--log-level", "WARNING"])
            .args(&self.args)
            .stdin(Stdio::piped())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", bin.display()))?;

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "secantusd on port {port} exited during startup ({status}); log {}:\n{}",
                    self.log.display(),
                    log_tail(&self.log)
                ));
            }
            if ping(self.port) {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                self.child = Some(child);
                self.stop();
                return Err(format!(
                    "secantusd on port {port} did not answer a ping within {STARTUP_TIMEOUT:?}; log {}:\n{}",
                    self.log.display(),
                    log_tail(&self.log)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        if !std::thread::panicking() {
            let _ = fs::remove_file(&self.log);
        }
    }
}

/// Per-target scratch dir for logs and the empty config file.
fn state_dir() -> Result<PathBuf, String> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("secantusdb");
    fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    Ok(dir)
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| e.to_string())?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

/// The real secantusd-py script (`scripts/secantusdb install` installs it if
/// needed and resolves pyenv shims, which would put an extra process between
/// the watchdog and the server).
fn secantusd() -> Result<&'static Path, String> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/secantusdb");
        let out = Command::new("bash")
            .arg(&script)
            .arg("install")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running {}: {e}", script.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        match stdout.lines().rev().find(|l| !l.trim().is_empty()) {
            Some(path) if out.status.success() => Ok(PathBuf::from(path.trim())),
            _ => Err(format!(
                "{} install failed ({}):\n{stdout}{}",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )),
        }
    })
    .as_deref()
    .map_err(Clone::clone)
}

/// The interpreter of the script: the venv's `python` beside it
/// (`scripts/secantusdb` installs into `.tally-data/venv`; in a path with a
/// space or a long one pip writes a `#!/bin/sh` trampoline instead of the
/// python), else the one on its `#!` line (a real python, not a shim), else
/// `python3`.
fn python_for(script: &Path) -> PathBuf {
    let beside = script.with_file_name("python");
    if beside.is_file() {
        return beside;
    }
    let first = fs::read_to_string(script).unwrap_or_default();
    let first = first.lines().next().unwrap_or_default();
    match first.strip_prefix("#!").map(str::trim) {
        Some(p) if !p.contains(' ') && Path::new(p).is_file() => PathBuf::from(p),
        _ => PathBuf::from("python3"),
    }
}

/// True when the server answers `{ping: 1}` over OP_MSG.
fn ping(port: u16) -> bool {
    fn go(port: u16) -> std::io::Result<bool> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        let mut body = Vec::new();
        bson::doc! { "ping": 1, "$db": "admin" }
            .to_writer(&mut body)
            .map_err(std::io::Error::other)?;
        let len = (16 + 4 + 1 + body.len()) as i32;
        let mut msg = Vec::with_capacity(len as usize);
        for v in [len, 1, 0, 2013] {
            msg.extend_from_slice(&v.to_le_bytes()); // length, requestID, responseTo, OP_MSG
        }
        msg.extend_from_slice(&0u32.to_le_bytes()); // flagBits
        msg.push(0); // section kind 0: body
        msg.extend_from_slice(&body);
        s.write_all(&msg)?;
        let mut header = [0u8; 16];
        s.read_exact(&mut header)?;
        let len = i32::from_le_bytes(header[0..4].try_into().unwrap());
        let opcode = i32::from_le_bytes(header[12..16].try_into().unwrap());
        if opcode != 2013 || !(21..=48_000_000).contains(&len) {
            return Ok(false);
        }
        let mut rest = vec![0u8; len as usize - 16];
        s.read_exact(&mut rest)?;
        if rest[4] != 0 {
            return Ok(false);
        }
        let reply = bson::Document::from_reader(&rest[5..]).map_err(std::io::Error::other)?;
        Ok(reply
            .get("ok")
            .and_then(|ok| ok.as_f64().or(ok.as_i32().map(f64::from)))
            == Some(1.0))
    }
    go(port).unwrap_or(false)
}

fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
