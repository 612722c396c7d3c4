//! A private PostgreSQL server for one test, on a free port with its own
//! data directory, that the test can crash (`pg_ctl stop -m immediate`: no
//! shutdown checkpoint, like a killed server) and start again. The binaries
//! are Debian's (`/usr/lib/postgresql/<version>/bin`, or `$PG_BIN`).
//! PostgreSQL refuses to run as root: as root, it runs as the `postgres`
//! user through `runuser`.

use std::{net::SocketAddr, path::PathBuf, process::Stdio, time::Duration};

use tokio::process::Command;

use crate::{eventually, free_port};

/// A PostgreSQL server owned by a test; stopped when dropped.
pub struct PostgresServer {
    dir: tempfile::TempDir,
    port: u16,
    running: bool,
}

impl PostgresServer {
    /// Creates a cluster (trust authentication, user `postgres`) and starts it.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir for the PostgreSQL cluster");
        // The `postgres` user must be able to create the data directory here.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let mut server = Self { dir, port: free_port(), running: false };
        let data = server.data();
        server.run("initdb", &["-D", &data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"]).await;
        server.start_again().await;
        server
    }

    /// The URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server the way a crash does: every process killed at once,
    /// no shutdown checkpoint (recovery replays the WAL on the next start).
    pub async fn crash(&mut self) {
        let data = self.data();
        self.run("pg_ctl", &["stop", "-D", &data, "-m", "immediate"]).await;
        self.running = false;
    }

    /// Starts the server (again) on the same port and data, and waits until
    /// it accepts connections.
    pub async fn start_again(&mut self) {
        let data = self.data();
        let options =
            format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", self.port, self.dir.path().display());
        let log = self.dir.path().join("postgres.log").display().to_string();
        self.run("pg_ctl", &["start", "-w", "-D", &data, "-o", &options, "-l", &log]).await;
        self.running = true;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        eventually(Duration::from_secs(20), "PostgreSQL to accept connections", || async move {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await;
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    async fn run(&self, program: &str, args: &[&str]) {
        let mut command = Command::from(postgres_command(program));
        let output = command
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run {program}: {e} (install postgresql)"));
        assert!(
            output.status.success(),
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if self.running {
            let data = self.data();
            let _ = postgres_command("pg_ctl").args(["stop", "-D", &data, "-m", "immediate"]).output();
        }
    }
}

/// `program` of PostgreSQL's binaries, as the `postgres` user when this
/// process is root (PostgreSQL refuses to run as root).
fn postgres_command(program: &str) -> std::process::Command {
    let path = bin_dir().join(program);
    if is_root() {
        let mut command = std::process::Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(path);
        command
    } else {
        std::process::Command::new(path)
    }
}

fn bin_dir() -> PathBuf {
    if let Some(path) = std::env::var_os("PG_BIN") {
        return path.into();
    }
    // The newest installed major version.
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    versions.sort_by_key(|p| {
        p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok())
    });
    versions.pop().unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|l| l.strip_prefix("Uid:")).map(|ids| ids.split_whitespace().next() == Some("0"))
        })
        .unwrap_or(false)
}
