//! Key attestation (`GET /keys/{name}/{version}/attestation`, 7.6): what the token can prove
//! about how a key version was made. Managed HSM returns its HSM vendor's signed statements
//! (Marvell's, for a key generated inside it). PKCS#11 has no standard way to ask for one,
//! and neither SoftHSM2 nor kryoptic can make one, so the service attests nothing: it answers
//! a clear refusal, never a statement it invented. A vendor token with an attestation of its
//! own would be served here.

use std::convert::Infallible;

use super::KeyService;
use crate::error::{Error, Reason};
use crate::model::{KeyName, VersionId};

impl KeyService {
    /// The attestation of a version. The version is looked up first (a missing key is a 404,
    /// as for `get`), then refused: no token this service drives can attest keys, so there is
    /// no success to return.
    pub async fn attestation(
        &self,
        name: &KeyName,
        version: Option<VersionId>,
    ) -> Result<Infallible, Error> {
        let record = self.get(name, version).await?;
        Err(Error::NotSupported {
            message: format!(
                "Key attestation is not available for {name}/{}: this HSM's token '{}' cannot attest its keys (PKCS#11 offers no attestation, and the token has none of its own). Nothing was changed.",
                record.version,
                self.hsm.token_label()
            ),
            inner: Reason::KeyAttestationNotSupported,
        })
    }
}
