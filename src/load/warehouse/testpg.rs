//! A throw-away PostgreSQL server for the driver tests (trust auth, fsync off, 127.0.0.1 only),
//! as the integration suite starts one (`tests/loadlib.py`): the server binaries of
//! `RIN_SHIP_PG_BIN` (default `/usr/lib/postgresql/15/bin`), run as `postgres` when the tests
//! run as root. A machine without them fails the test with the command that installs them.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct TestPg {
    dir: PathBuf,
    bin: PathBuf,
    pub port: u16,
    _keep: tempfile::TempDir,
}

fn as_root() -> bool {
    // /proc/self belongs to the effective user.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

fn run(bin: &Path, tool: &str, args: &[&str]) {
    let mut cmd = if as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        c
    } else {
        Command::new(bin.join(tool))
    };
    let out = cmd
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestPg {
    pub fn start() -> TestPg {
        let bin = PathBuf::from(
            std::env::var("RIN_SHIP_PG_BIN").unwrap_or("/usr/lib/postgresql/15/bin".into()),
        );
        assert!(
            bin.join("initdb").exists(),
            "PostgreSQL server binaries missing in {}: install them with \
             `apt-get install -y postgresql-15`",
            bin.display()
        );
        // Not under a private temp dir of root's: the server runs as `postgres`.
        let keep = tempfile::Builder::new()
            .prefix("rin-ship-pg-")
            .tempdir_in("/tmp")
            .unwrap();
        let dir = keep.path().join("pg");
        std::fs::create_dir_all(&dir).unwrap();
        if as_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(keep.path())
                .status()
                .unwrap();
            assert!(ok.success());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let data = dir.join("data");
        run(
            &bin,
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ],
        );
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            dir.display()
        );
        run(
            &bin,
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                dir.join("log").to_str().unwrap(),
                "-w",
                "start",
                "-o",
                &opts,
            ],
        );
        TestPg {
            dir,
            bin,
            port,
            _keep: keep,
        }
    }
}

impl Drop for TestPg {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = std::panic::catch_unwind(|| {
            run(
                &self.bin,
                "pg_ctl",
                &["-D", data.to_str().unwrap(), "-m", "immediate", "stop"],
            )
        });
    }
}
