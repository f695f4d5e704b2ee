//! A throw-away PostgreSQL cluster for a test: `initdb` in a temp dir,
//! `postgres` on a free loopback port with its socket in that dir, both run
//! as the unprivileged `nobody` (tests run as root in CI, and PostgreSQL
//! refuses root). Stopped by PID and removed when dropped.
//!
//! The binaries come from `$PG_BIN`, `/usr/lib/postgresql/<newest>/bin`, or
//! `$PATH`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ports::free_port;

/// A running cluster (or a stopped one that can be started again).
pub struct Postgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    user: (u32, u32),
    pub port: u16,
    child: Option<Child>,
}

/// The directory holding `initdb` and `postgres`.
pub fn pg_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return dir.into();
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions.pop().unwrap_or_default() // empty: found through $PATH
}

/// `(uid, gid)` of `nobody` from /etc/passwd.
fn nobody() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"nobody") && f.len() > 3)
        .map(|f| (f[2].parse().expect("uid"), f[3].parse().expect("gid")))
        .expect("a `nobody` user")
}

impl Postgres {
    /// Creates a cluster and starts it; returns once it accepts connections.
    pub async fn start() -> Postgres {
        let dir = tempfile::Builder::new()
            .prefix("edge-pg-")
            .tempdir()
            .expect("tempdir");
        let user = nobody();
        std::os::unix::fs::chown(dir.path(), Some(user.0), Some(user.1)).expect("chown tempdir");
        let bin = pg_bin();
        let mut pg = Postgres {
            bin,
            dir,
            user,
            port: free_port(),
            child: None,
        };
        let status = pg
            .command("initdb")
            .args([
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--no-sync",
            ])
            .arg("-D")
            .arg(pg.data())
            .stdout(Stdio::null())
            .stderr(pg.log_file())
            .status()
            .expect("run initdb (is PostgreSQL installed?)");
        assert!(status.success(), "initdb failed:\n{}", pg.log());
        pg.launch().await;
        pg
    }

    fn command(&self, name: &str) -> Command {
        let mut c = Command::new(self.bin.join(name));
        c.uid(self.user.0)
            .gid(self.user.1)
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        c
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn log_file(&self) -> std::fs::File {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("postgres log");
        std::os::unix::fs::chown(self.log_path(), Some(self.user.0), Some(self.user.1))
            .expect("chown log");
        f
    }

    /// What the server has logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The server's PID (the postmaster).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    async fn launch(&mut self) {
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "max_connections=400"])
            .args(["-c", "fsync=off"])
            .args(["-c", "shared_buffers=64MB"])
            .stdout(Stdio::null())
            .stderr(self.log_file())
            .spawn()
            .expect("spawn postgres");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
                .await
                .is_ok()
            {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("postgres exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "postgres not ready:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn signal(&mut self, name: &str) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-s", name, &child.id().to_string()])
            .status();
        let _ = child.wait();
    }

    /// Stops the server (fast shutdown: sessions are disconnected).
    pub fn stop(&mut self) {
        self.signal("INT");
    }

    /// Stops the server as a crash would (immediate shutdown: recovery on
    /// the next start, sequences may jump by their pre-logged values).
    pub fn crash(&mut self) {
        self.signal("QUIT");
    }

    /// Starts the stopped server again on the same port and data.
    pub async fn restart(&mut self) {
        self.launch().await;
    }

    /// A connected client; its connection is driven on a spawned task.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .expect("connect to postgres");
        tokio::spawn(conn);
        client
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- postgres log (tail) ---");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}
