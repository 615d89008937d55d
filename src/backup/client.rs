//! The admin CLI's side of backups: starts full backups and restores through the service's
//! HTTPS API and follows their jobs, with a progress bar on a terminal and plain lines
//! otherwise.

use std::io::Write;
use std::time::Duration;

use serde_json::Value;

/// The api-version the CLI sends to the backup endpoints (the one az CLI uses).
const API_VERSION: &str = "7.5";
const WIDTH: usize = 30;

use crate::client::{CliError, Client};

/// Job commands of the CLI, on the service client.
impl Client {
    /// Starts a job; returns its status URL.
    pub fn start(&self, method: &str, path: &str, body: &Value) -> Result<String, CliError> {
        let response = self.answer(
            self.request(method, path)
                .query("api-version", API_VERSION)
                .send_json(body.clone()),
        )?;
        response
            .header("azure-asyncoperation")
            .map(str::to_owned)
            .ok_or_else(|| "the service accepted the job but named no status URL".into())
    }

    /// The status URL of a job, by id.
    pub fn status_url(&self, kind: &str, job: &str) -> String {
        format!("{}/{kind}/{job}/pending", self.url())
    }

    pub fn status(&self, status_url: &str) -> Result<Value, CliError> {
        Ok(self
            .answer(self.request("GET", status_url).call())?
            .into_json()?)
    }

    /// Polls a job until it ends, drawing its progress. Returns the last status.
    pub fn follow(
        &self,
        status_url: &str,
        tty: bool,
        out: &mut dyn Write,
    ) -> Result<Value, CliError> {
        let mut last_line = String::new();
        loop {
            let status = self.status(status_url)?;
            let line = progress_line(&status, tty);
            if tty {
                write!(out, "\r{line}\x1b[K")?;
                out.flush()?;
            } else if line != last_line {
                writeln!(out, "{line}")?;
            }
            last_line = line;
            if status["status"] != "InProgress" {
                if tty {
                    writeln!(out)?;
                }
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// One line of progress: a bar on a terminal, plain text otherwise.
pub fn progress_line(status: &Value, tty: bool) -> String {
    let done = status["progress"]["done"].as_u64().unwrap_or(0);
    let total = status["progress"]["total"].as_u64().unwrap_or(0);
    let state = status["status"].as_str().unwrap_or("?");
    let details = status["statusDetails"].as_str().unwrap_or("");
    if !tty {
        return format!("{state}: {done}/{total} keys: {details}");
    }
    let filled = if total == 0 {
        usize::from(state == "Succeeded") * WIDTH
    } else {
        (done.min(total) as usize * WIDTH) / total as usize
    };
    format!(
        "[{}{}] {done}/{total} keys  {details}",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled)
    )
}

/// What a finished job means for the command: its result line, or an error.
pub fn outcome(status: &Value) -> Result<String, CliError> {
    match status["status"].as_str() {
        Some("Succeeded") => Ok(match status["azureStorageBlobContainerUri"].as_str() {
            Some(folder) => format!("folder_url={folder}"),
            None => "restored".to_owned(),
        }),
        _ => Err(format!(
            "the job failed: {}: {}",
            status["error"]["code"].as_str().unwrap_or("?"),
            status["error"]["message"].as_str().unwrap_or("no detail")
        )
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn progress_is_a_bar_on_a_terminal_and_a_line_otherwise() {
        let s = json!({"status":"InProgress","statusDetails":"Full backup is in progress","progress":{"done":5,"total":10}});
        assert_eq!(
            progress_line(&s, false),
            "InProgress: 5/10 keys: Full backup is in progress"
        );
        let bar = progress_line(&s, true);
        assert!(
            bar.starts_with(&format!("[{}{}]", "#".repeat(15), "-".repeat(15))),
            "{bar}"
        );
        let empty =
            json!({"status":"Succeeded","statusDetails":"done","progress":{"done":0,"total":0}});
        assert!(progress_line(&empty, true).starts_with(&format!("[{}]", "#".repeat(WIDTH))));
    }

    #[test]
    fn a_failed_job_is_an_error_naming_its_code() {
        let failed =
            json!({"status":"Failed","error":{"code":"BadParameter","message":"no such key"}});
        let err = outcome(&failed).expect_err("failed");
        assert!(
            err.to_string().contains("BadParameter: no such key"),
            "{err}"
        );
        let ok = json!({"status":"Succeeded","azureStorageBlobContainerUri":"https://h/c/f"});
        assert_eq!(outcome(&ok).expect("ok"), "folder_url=https://h/c/f");
    }
}
