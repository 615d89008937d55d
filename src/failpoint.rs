//! Test-only crash points. When the operator-invisible switch `P11VAULT_TEST_FAILPOINTS`
//! names a point, reaching it kills the process with SIGKILL at once — no destructors, no
//! flushing — the way `kill -9` or a power cut would. Fault-injection tests use it to stop the service at
//! every step boundary of every multi-step operation. `NAME:sleep=MS` instead holds the thread
//! that reaches the point for MS milliseconds, so a test can act while an operation is half
//! done. Unarmed, a point costs one atomic load.

use std::sync::OnceLock;

static ARMED: OnceLock<Vec<String>> = OnceLock::new();

/// Arms the named points for the life of the process. Called once, from `main`.
pub fn arm(points: Vec<String>) {
    if !points.is_empty() {
        tracing::warn!(
            ?points,
            "TEST-ONLY failpoints are armed: the process will abort when it reaches them"
        );
    }
    let _ = ARMED.set(points);
}

/// Aborts the process if `name` is armed (or pauses, if armed with `:sleep=MS`).
pub fn hit(name: &str) {
    let Some(points) = ARMED.get() else { return };
    let pause = points.iter().find_map(|p| {
        p.strip_prefix(name)?
            .strip_prefix(":sleep=")?
            .parse::<u64>()
            .ok()
    });
    if let Some(ms) = pause {
        eprintln!("p11vault: failpoint {name} reached: sleeping {ms} ms");
        std::thread::sleep(std::time::Duration::from_millis(ms));
        return;
    }
    if points.iter().any(|p| p == name) {
        eprintln!("p11vault: failpoint {name} reached: SIGKILL");
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &std::process::id().to_string()])
            .status();
        // Only reached if `kill` could not run.
        std::process::abort();
    }
}
