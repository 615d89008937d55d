//! The one clock all retention logic reads (DESIGN §9). Operators see real time; tests move a
//! file-backed offset instead of sleeping.

use std::time::{SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync {
    /// Unix seconds.
    fn now(&self) -> i64;
}

/// Wall-clock time.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    }
}

/// TEST-ONLY: wall-clock time plus an offset in seconds read from a file on every call, so a
/// test can move a running service's clock days ahead without sleeping. Armed only by the
/// explicit `P11VAULT_TEST_CLOCK_FILE` switch.
#[derive(Debug)]
pub struct FileOffsetClock {
    path: std::path::PathBuf,
}

impl FileOffsetClock {
    pub fn new(path: std::path::PathBuf) -> Self {
        tracing::warn!(file = %path.display(), "TEST-ONLY clock: time is shifted by the offset in this file");
        Self { path }
    }
}

impl Clock for FileOffsetClock {
    fn now(&self) -> i64 {
        let offset = std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .unwrap_or(0);
        SystemClock.now() + offset
    }
}
