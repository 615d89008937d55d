//! The token's part of p11vault's managed-identity sign-in (`auth::identity`): the HMAC that
//! authenticates identity headers and issued tokens, made and checked in the token with the
//! sign-in's own private HMAC key (`hsm::identity`), which exists whether or not the HSM holds
//! a security domain. The inputs carry a context string of their own (`auth::identity`).

use std::sync::Arc;

use super::KeyService;
use crate::error::Error;
use crate::hsm;

impl KeyService {
    /// HMAC-SHA-256 of `input` in the token.
    pub async fn identity_mac(self: &Arc<Self>, input: Vec<u8>) -> Result<Vec<u8>, Error> {
        self.hsm
            .call(move |hsm, s| hsm.identity_mac(s, &input))
            .await
            .map_err(Error::from)
    }

    /// Whether `tag` is the token's HMAC of `input` (compared in the token). A token that
    /// cannot be asked is an error, not a `false`.
    pub async fn identity_mac_valid(
        self: &Arc<Self>,
        input: Vec<u8>,
        tag: Vec<u8>,
    ) -> Result<bool, Error> {
        match self
            .hsm
            .call(move |hsm, s| hsm.check_identity_mac(s, &input, &tag))
            .await
        {
            Ok(()) => Ok(true),
            Err(hsm::Error::Rejected(_)) => Ok(false),
            Err(e) => Err(Error::from(e)),
        }
    }
}
