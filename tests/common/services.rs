//! Services a test owns and stops at will.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A Redis of the test's own, with an append-only file, so it can stop and come back
/// with its data (as a production Redis with persistence does).
pub struct OwnRedis {
    port: u16,
    dir: PathBuf,
}

impl OwnRedis {
    pub fn start(port: u16, dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let r = OwnRedis {
            port,
            dir: dir.to_path_buf(),
        };
        r.up();
        r
    }
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
    pub fn up(&self) {
        let ok = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--dir", self.dir.to_str().unwrap(), "--appendonly", "yes"])
            .args([
                "--appendfsync",
                "always",
                "--save",
                "",
                "--daemonize",
                "yes",
            ])
            .status()
            .unwrap()
            .success();
        assert!(ok, "redis-server starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        while redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .is_err()
        {
            assert!(Instant::now() < deadline, "redis answers");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    pub fn down(&self) {
        let _ = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "shutdown"])
            .status();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.down();
    }
}

/// Polls `done` every 200 ms for up to `secs` seconds.
pub fn wait_until(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A child process killed when the test ends, also when it panics, so that a failed test
/// does not leave an engine writing into the next test's stores.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
