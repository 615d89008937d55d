//! The admin CLI's HTTPS client of the service (`audit show`, `key import`, `backup`,
//! `restore`): the one place that reads the bearer token file, trusts the service's CA, and
//! turns an Azure error body into a message.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use zeroize::Zeroizing;

pub type CliError = Box<dyn std::error::Error>;

pub struct Client {
    agent: ureq::Agent,
    url: String,
    token: Zeroizing<String>,
}

impl Client {
    pub fn new(url: &str, ca: &Path, token_file: &Path) -> Result<Client, CliError> {
        let token = Zeroizing::new(
            std::fs::read_to_string(token_file)
                .map_err(|e| format!("cannot read {}: {e}", token_file.display()))?
                .trim()
                .to_owned(),
        );
        Ok(Client {
            agent: crate::tls::client_agent(ca, Duration::from_secs(60))?,
            url: url.trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// The service's base URL, without a trailing slash.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A request with the bearer token; `target` is a path on the service or an absolute URL
    /// the service handed out.
    pub fn request(&self, method: &str, target: &str) -> ureq::Request {
        let url = if target.starts_with("https://") || target.starts_with("http://") {
            target.to_owned()
        } else {
            format!("{}{target}", self.url)
        };
        self.agent
            .request(method, &url)
            .set("Authorization", &format!("Bearer {}", self.token.as_str()))
    }

    /// The response, or an error naming the service's error code and message.
    pub fn answer(
        &self,
        result: Result<ureq::Response, ureq::Error>,
    ) -> Result<ureq::Response, CliError> {
        match result {
            Ok(r) => Ok(r),
            Err(ureq::Error::Status(code, r)) => {
                let text = r.into_string().unwrap_or_default();
                let error = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| {
                        let e = &v["error"];
                        Some(format!(
                            "{}: {}",
                            e["code"].as_str()?,
                            e["message"].as_str()?
                        ))
                    })
                    .unwrap_or(text);
                Err(format!("the service answered {code}: {error}").into())
            }
            Err(e) => Err(format!("cannot reach {}: {e}", self.url).into()),
        }
    }
}
