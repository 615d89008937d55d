//! p11vault: an on-premises key service in the style of Azure Managed HSM.
//!
//! Key material lives only as objects in a PKCS#11 token ([`hsm`]); key metadata and deletion
//! state live in SQLite ([`store`]); the key service ([`keys`]) is the only code that touches
//! both; [`access`] keeps principals and role assignments and decides who may do what;
//! [`audit`] records every request in a hash chain; [`backup`] runs full backups and restores
//! as jobs over a pluggable backup location; [`http`] speaks the Azure Key Vault / Managed HSM
//! data-plane API over HTTPS; [`pem`] turns a PEM private key into the JWK that
//! `p11vault key import` sends; [`secdomain`] holds the Managed HSM security domain's formats
//! and cryptography (the SD file, the restore blob, the transfer key), pure and token-free.
//! Dependencies point one way:
//! `http → {backup, keys, access, audit} → {store, hsm, auth} → model`, and `backup → keys`.

pub mod access;
pub mod admin;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod error;
pub mod failpoint;
pub mod fsutil;
pub mod hsm;
pub mod http;
pub mod keys;
pub mod model;
pub mod pem;
pub mod provision;
pub mod secdomain;
pub mod serve;
pub mod store;
pub mod tls;

pub use http::{AppState, router as app};
