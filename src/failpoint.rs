//! Test-only crash points. When the operator-invisible switch `P11VAULT_TEST_FAILPOINTS`
//! names a point, reaching it kills the process with SIGKILL at once — no destructors, no
//! flushing — the way `kill -9` or a power cut would. Fault-injection tests use it to stop the service at
//! every step boundary of every multi-step operation. Unarmed, a point costs one atomic load.

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

/// Aborts the process if `name` is armed.
pub fn hit(name: &str) {
    if let Some(points) = ARMED.get()
        && points.iter().any(|p| p == name)
    {
        eprintln!("p11vault: failpoint {name} reached: SIGKILL");
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &std::process::id().to_string()])
            .status();
        // Only reached if `kill` could not run.
        std::process::abort();
    }
}
