//! A real PostgreSQL server for the tests: Debian's binaries (scripts/test installs
//! `postgresql`), a temporary data directory, a free loopback port, password (SCRAM) login over
//! TCP. Stopped when dropped. PostgreSQL refuses to run as root, so under uid 0 it runs as the
//! `postgres` user (the temporary directory is handed to it).
//!
//! [`rerun_on_postgres`] runs a test binary's tests again in a child process whose `DevEnv`
//! (and [`ledger_under_test`]) put the ledger in a fresh database of one server.
#![allow(dead_code)] // reason: not every test file uses every helper

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The superuser the tests log in as, and its password.
pub const USER: &str = "matter_est";
pub const PASSWORD: &str = "pg-test-secret";

/// Set in the child of [`rerun_on_postgres`]: the server's socket directory and port.
const CHILD_SOCKET: &str = "MATTER_EST_TEST_PG_SOCKET";
const CHILD_PORT: &str = "MATTER_EST_TEST_PG_PORT";

/// PostgreSQL's binaries (`/usr/lib/postgresql/VERSION/bin`, the newest). Panics (never skips)
/// when missing: scripts/test installs them.
pub fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b).unwrap_or_else(|| {
        panic!(
            "PostgreSQL is not installed: run scripts/test (it installs postgresql) or \
             `apt-get install postgresql`"
        )
    })
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // The owner of a file this process just made.
    let probe = tempfile::NamedTempFile::new().unwrap();
    probe.as_file().metadata().unwrap().uid() == 0
}

/// A command run as the user PostgreSQL accepts (`postgres` when we are root).
fn as_db_user(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn check(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The server settings an operator of a matter-est ledger would also set (docs/operations.md
/// "Several nodes on PostgreSQL"): shared_buffers large enough for the DACs written between
/// checkpoints (PostgreSQL's default is 128MB; these tests had 16MB, where a 10,000-DAC run
/// evicts dirty pages from the backends), WAL buffers of one group commit's worth and more,
/// and fewer forced checkpoints under a burst of enrollments. Durability is unchanged.
pub const SERVER_SETTINGS: &str = "-c shared_buffers=128MB -c wal_buffers=16MB -c max_wal_size=2GB";

/// One running server.
pub struct PgServer {
    pub dir: tempfile::TempDir,
    pub port: u16,
    bin: PathBuf,
    /// More `-c` settings (TLS).
    extra: String,
}

impl PgServer {
    /// initdb, then start on a free loopback port.
    pub fn start() -> Self {
        Self::start_with(|_| String::new())
    }

    /// As [`PgServer::start`], with more server options: `options` is given the data
    /// directory's parent (owned by the server's user) to put files in, and returns options
    /// such as `-c ssl=on`.
    pub fn start_with(options: impl FnOnce(&Path) -> String) -> Self {
        let bin = bin_dir();
        let dir = tempfile::tempdir().unwrap();
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        let extra = options(dir.path());
        if is_root() {
            check(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(dir.path())
                    .output()
                    .unwrap(),
                "chown",
            );
        }
        check(
            as_db_user(&bin.join("initdb"))
                .arg("-D")
                .arg(dir.path().join("data"))
                .args([
                    "-U",
                    USER,
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                ])
                .arg(format!("--pwfile={}", pwfile.display()))
                .args(["--no-sync", "-E", "UTF8", "--locale=C"])
                .output()
                .unwrap(),
            "initdb",
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = Self {
            dir,
            port,
            bin,
            extra,
        };
        server.start_again();
        server
    }

    /// (Re)starts the server on the same data directory and port; returns when it accepts.
    /// The settings are [`SERVER_SETTINGS`] (then the caller's `extra`, which may override
    /// them); `fsync` and `synchronous_commit` stay on (PostgreSQL's defaults).
    pub fn start_again(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200 {SERVER_SETTINGS} {}",
            self.port,
            self.dir.path().display(),
            self.extra
        );
        check(
            as_db_user(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.path().join("data"))
                .args(["-o", &options, "-w", "-t", "60", "-l"])
                .arg(self.dir.path().join("log"))
                .arg("start")
                .output()
                .unwrap(),
            "pg_ctl start",
        );
    }

    /// Stops the server at once (`immediate`: as a crash would, connections cut).
    pub fn stop_now(&self) {
        check(
            as_db_user(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.path().join("data"))
                .args(["-m", "immediate", "-w", "stop"])
                .output()
                .unwrap(),
            "pg_ctl stop",
        );
    }

    /// Runs `sql` as the superuser on database `db` (over the Unix socket).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = check(
            Command::new(self.bin.join("psql"))
                .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"])
                .arg("-h")
                .arg(self.dir.path())
                .args([
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    USER,
                    "-d",
                    db,
                    "-c",
                    sql,
                ])
                .output()
                .unwrap(),
            "psql",
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A fresh, empty database.
    pub fn create_database(&self) -> String {
        let name = format!("t_{}", super::hsm::hex(&super::hsm::random::<6>()));
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        name
    }

    /// The `[store]` table for database `db`, the password in a 0600 file written under `dir`.
    pub fn store_toml(&self, db: &str, dir: &Path) -> String {
        store_toml(self.port, db, dir)
    }

    fn handle(&self) -> Handle {
        Handle {
            socket: self.dir.path().to_path_buf(),
            port: self.port,
            bin: self.bin.clone(),
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = as_db_user(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// The `[store]` table for database `db` on the server at `port`.
pub fn store_toml(port: u16, db: &str, dir: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    let pw = dir.join("db.password");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    format!(
        "[store]\nkind = \"postgres\"\nurl = \"postgresql://{USER}@127.0.0.1:{port}/{db}\"\n\
         password_file = \"{}\"\npool_size = 8\nstatement_timeout_ms = 10000\ntls = \"disable\"\n",
        pw.display()
    )
}

/// In the child of [`rerun_on_postgres`]: the server it runs against.
pub struct Handle {
    pub socket: PathBuf,
    pub port: u16,
    bin: PathBuf,
}

impl Handle {
    pub fn create_database(&self) -> String {
        let name = format!("t_{}", super::hsm::hex(&super::hsm::random::<6>()));
        check(
            Command::new(self.bin.join("psql"))
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
                .arg("-h")
                .arg(&self.socket)
                .args(["-p", &self.port.to_string(), "-U", USER, "-d", "postgres"])
                .args(["-c", &format!("CREATE DATABASE {name}")])
                .output()
                .unwrap(),
            "psql CREATE DATABASE",
        );
        name
    }
}

/// In the child of [`rerun_on_postgres`]: the server; `None` in the parent.
pub fn suite() -> Option<Handle> {
    let socket = std::env::var(CHILD_SOCKET).ok()?;
    let port = std::env::var(CHILD_PORT).ok()?.parse().ok()?;
    Some(Handle {
        socket: PathBuf::from(socket),
        port,
        bin: bin_dir(),
    })
}

/// Runs this binary's tests again (all but `this_test` and `skip`) in a child process whose
/// ledgers are on one PostgreSQL server started here, a fresh database each. In the child:
/// returns at once.
pub fn rerun_on_postgres(this_test: &str, skip: &[&str]) {
    if suite().is_some() {
        return;
    }
    let server = PgServer::start();
    let handle = server.handle();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--skip", this_test]);
    for s in skip {
        cmd.args(["--skip", s]);
    }
    cmd.env(CHILD_SOCKET, &handle.socket)
        .env(CHILD_PORT, handle.port.to_string());
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("---- child on PostgreSQL ----\n{stdout}\n{stderr}");
    assert!(
        out.status.success(),
        "the PostgreSQL child failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("test result: ok") && !stdout.contains(" 0 passed"),
        "the child ran no test: {stdout}"
    );
    drop(server);
}

/// Rewrites an `init-dev` config to keep its ledger in a fresh database of the suite's server
/// (in the child of [`rerun_on_postgres`]); unchanged in the parent.
pub fn adopt(config: String, dir: &Path) -> String {
    let Some(handle) = suite() else {
        return config;
    };
    let db = handle.create_database();
    adopt_to(config, dir, handle.port, &db)
}

/// Rewrites an `init-dev` config to keep its ledger in database `db` on the server at `port`,
/// its admin socket in `dir`.
pub fn adopt_to(config: String, dir: &Path, port: u16, db: &str) -> String {
    let line = config
        .lines()
        .find(|l| l.starts_with("ledger = "))
        .expect("the config names a ledger")
        .to_string();
    // The admin socket stays beside where the ledger was (it would default to /run).
    let socket = format!("socket = \"{}\"\n", dir.join("admin.sock").display());
    let mut text = config.replace(&format!("{line}\n"), "");
    if text.contains("\n[admin]\n") {
        text = text.replace("\n[admin]\n", &format!("\n[admin]\n{socket}"));
    } else {
        text.push_str(&format!("\n[admin]\n{socket}"));
    }
    // A table of its own at the end: the top-level keys stay above every table.
    text.push('\n');
    text.push_str(&store_toml(port, db, dir));
    text
}
