//! Shared setup of the Rust SDK suite (`tests/sdk.rs`): the service that
//! `tests/with_p11vault.py` started, a static-token credential, a `KeyClient` that trusts the
//! service's CA, and small helpers.
//!
//! The client is the released `azure_security_keyvault_keys` crate, unmodified. What is ours is
//! what the SDK asks its user for: a `TokenCredential` and, through `ClientOptions::transport`,
//! the HTTP client (a `reqwest::Client` that trusts only the generated CA).

use std::sync::{Arc, Mutex, Once, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use azure_core::credentials::{AccessToken, Secret, TokenCredential, TokenRequestOptions};
use azure_core::error::ErrorKind;
use azure_core::http::{ClientOptions, RetryOptions, Transport};
use azure_core::time::OffsetDateTime;
use azure_security_keyvault_keys::{KeyClient, KeyClientOptions};

/// The service under test, from the launcher's environment.
#[derive(Debug)]
pub struct Service {
    pub url: String,
    pub token: String,
    pub ca_pem: Vec<u8>,
    /// `softhsm` or `kryoptic`.
    pub test_token: String,
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run this suite through tests/with_p11vault.py")
    })
}

pub fn service() -> &'static Service {
    static SERVICE: OnceLock<Service> = OnceLock::new();
    SERVICE.get_or_init(|| {
        let token_file = env("P11VAULT_TOKEN_FILE");
        let ca = env("P11VAULT_CA");
        Service {
            url: env("P11VAULT_URL"),
            token: std::fs::read_to_string(&token_file)
                .unwrap_or_else(|e| panic!("{token_file}: {e}"))
                .trim()
                .to_owned(),
            ca_pem: std::fs::read(&ca).unwrap_or_else(|e| panic!("{ca}: {e}")),
            test_token: std::env::var("P11VAULT_TEST_TOKEN").unwrap_or_else(|_| "softhsm".into()),
        }
    })
}

/// A `TokenCredential` that returns one opaque bearer token, and records the scopes it was
/// asked for (the scope comes from the service's challenge).
#[derive(Debug)]
pub struct StaticToken {
    token: String,
    pub scopes: Mutex<Vec<String>>,
}

impl StaticToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self {
            token: token.into(),
            scopes: Mutex::new(Vec::new()),
        }
    }
}

#[async_trait]
impl TokenCredential for StaticToken {
    async fn get_token(
        &self,
        scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        self.scopes
            .lock()
            .expect("scopes lock")
            .extend(scopes.iter().map(|s| s.to_string()));
        Ok(AccessToken::new(
            Secret::new(self.token.clone()),
            OffsetDateTime::now_utc() + azure_core::time::Duration::hours(1),
        ))
    }
}

/// A reqwest client as the SDK's own default one (timeouts, no redirects), but trusting only
/// the service's CA.
pub fn http_client() -> reqwest::Client {
    static PROVIDER: Once = Once::new();
    PROVIDER.call_once(|| {
        // reqwest is built without a default provider (see Cargo.toml).
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    let ca = reqwest::Certificate::from_pem(&service().ca_pem).expect("the service's CA is PEM");
    reqwest::Client::builder()
        .tls_certs_only([ca])
        .connect_timeout(Duration::from_secs(20))
        .read_timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("reqwest client")
}

/// A `KeyClient` for the service with its own credential. Every client makes its own
/// challenge round trip first, as a new process would.
pub fn client_with(credential: Arc<StaticToken>) -> KeyClient {
    let options = KeyClientOptions {
        client_options: ClientOptions {
            transport: Some(Transport::new(Arc::new(http_client()))),
            // A failure must show as the service answered it, not after retries.
            retry: RetryOptions::none(),
            ..Default::default()
        },
        // 127.0.0.1 is not under the challenge's resource (managedhsm.azure.net).
        verify_challenge_resource: Some(false),
        // The SDK's default api_version is kept: the one it sends is part of what is tested.
        ..Default::default()
    };
    KeyClient::new(&service().url, credential, Some(options)).expect("KeyClient::new")
}

pub fn credential() -> Arc<StaticToken> {
    Arc::new(StaticToken::new(service().token.clone()))
}

pub fn client() -> KeyClient {
    client_with(credential())
}

/// `prefix-<16 hex>`, unique across the run.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::random::<u64>())
}

/// What the service answered a request it refused.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    /// `error.code` of the Azure error body, as the SDK read it.
    pub code: Option<String>,
    /// `error.innererror.code`, when there is one.
    pub inner_code: Option<String>,
    pub message: String,
}

/// The refusal in a result; panics if the call succeeded or failed without an HTTP answer.
pub fn refusal<T>(result: azure_core::Result<T>) -> Refusal {
    let err = match result {
        Ok(_) => panic!("expected the service to refuse the request, but it succeeded"),
        Err(err) => err,
    };
    let message = err.to_string();
    match err.kind() {
        ErrorKind::HttpResponse {
            status,
            error_code,
            raw_response,
        } => {
            let body: Option<serde_json::Value> =
                raw_response.as_ref().and_then(|r| r.body().json().ok());
            let inner_code = body
                .as_ref()
                .and_then(|b| b.pointer("/error/innererror/code"))
                .and_then(|c| c.as_str())
                .map(str::to_owned);
            Refusal {
                status: u16::from(*status),
                code: error_code.clone(),
                inner_code,
                message,
            }
        }
        other => panic!("expected an HTTP error answer, got {other:?}: {message}"),
    }
}

/// The version segment of a key id (`…/keys/NAME/VERSION`).
pub fn version_of(kid: &str) -> String {
    let v = kid.rsplit('/').next().unwrap_or_default().to_owned();
    assert!(
        v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()),
        "no version in {kid}"
    );
    v
}

/// A test's error: its message only. (The SDK's errors carry a backtrace in their `Debug`,
/// which is what a test returning `Err` prints; this prints the error kind, the service's
/// error code and its message instead.)
pub struct Failure(String);

impl std::fmt::Debug for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

// Failure itself is not Display, so this does not overlap `From<T> for T` (as in anyhow).
impl<E: std::fmt::Display + 'static> From<E> for Failure {
    fn from(e: E) -> Self {
        let any: &dyn std::any::Any = &e;
        match any.downcast_ref::<azure_core::Error>() {
            Some(az) => Failure(format!("{}: {az}", az.kind())),
            None => Failure(e.to_string()),
        }
    }
}

/// What every test returns.
pub type TestResult = Result<(), Failure>;
