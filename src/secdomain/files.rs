//! The two JSON documents of the protocol, as text: the security-domain file a download returns
//! (security-domain.md §3.1, written compact with the real service's member order) and the
//! restore blob an upload carries (§6, written as az's `json.dumps` does, with `", "` and
//! `": "`). Reading either is lenient about member order and unknown members, strict about
//! everything the algorithms use.

use std::io;

use serde::{Deserialize, Serialize};

use super::{Error, Result};

pub(super) const KDF: &str = "sp108_kdf";
pub(super) const KEY_ALGORITHM: &str = "shamir_share";
pub(super) const SD_VERSION: u8 = 2;

/// One encrypted item: a `dir` JWE and its tag.
#[derive(Serialize, Deserialize)]
pub(super) struct DataItem {
    pub compact_jwe: String,
    pub tag: String,
}

#[derive(Serialize, Deserialize)]
pub(super) struct EncData {
    pub data: Vec<DataItem>,
    pub kdf: String,
}

/// A key wrapped to one certificate: a share in an SD file, the master key in a restore blob.
#[derive(Serialize, Deserialize)]
pub(super) struct Wrapped {
    pub enc_key: String,
    pub x5t_256: String,
}

#[derive(Serialize, Deserialize)]
pub(super) struct SharedKeys {
    pub enc_shares: Vec<Wrapped>,
    pub key_algorithm: String,
    pub required: u64,
}

/// The security-domain file.
#[derive(Serialize, Deserialize)]
pub(super) struct SdFile {
    #[serde(rename = "EncData")]
    pub enc_data: EncData,
    #[serde(rename = "SharedKeys")]
    pub shared_keys: SharedKeys,
    pub version: u8,
}

/// The restore blob.
#[derive(Serialize, Deserialize)]
pub(super) struct Blob {
    #[serde(rename = "EncData")]
    pub enc_data: EncData,
    #[serde(rename = "WrappedKey")]
    pub wrapped_key: Wrapped,
}

impl SdFile {
    /// The document text as the real service writes it: compact, members in order.
    pub fn to_text(&self) -> Result<String> {
        serde_json::to_string(self)
            .map_err(|e| Error::Internal(format!("cannot write the security domain: {e}")))
    }

    /// Reads an SD file and checks what §5 step 1 checks: `EncData`, `SharedKeys`,
    /// `key_algorithm = shamir_share`, 2 ≤ `required` ≤ 10. `version` may be absent (az does
    /// not read it).
    pub fn parse(text: &str) -> Result<SdFile> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| Error::Invalid(format!("The security-domain file is not JSON: {e}")))?;
        if value.get("EncData").is_none()
            && value.get("SharedKeys").is_none()
            && value.get("value").is_some_and(serde_json::Value::is_string)
        {
            return Err(Error::Invalid(
                "This is a download answer's body; the security-domain file is the text of its 'value' member.".into(),
            ));
        }
        if value.get("WrappedKey").is_some() {
            return Err(Error::Invalid(
                "This is a restore blob, not a security-domain file.".into(),
            ));
        }
        #[derive(Deserialize)]
        struct Lenient {
            #[serde(rename = "EncData")]
            enc_data: EncData,
            #[serde(rename = "SharedKeys")]
            shared_keys: SharedKeys,
            #[serde(default)]
            version: Option<u8>,
        }
        let file: Lenient = serde_json::from_value(value)
            .map_err(|e| Error::Invalid(format!("Not a security-domain file: {e}")))?;
        let keys = &file.shared_keys;
        if keys.key_algorithm != KEY_ALGORITHM {
            return Err(Error::Invalid(format!(
                "The security domain's key_algorithm is '{}'; only {KEY_ALGORITHM} is known.",
                super::jose::truncate(&keys.key_algorithm)
            )));
        }
        if !(2..=10).contains(&keys.required) {
            return Err(Error::Invalid(format!(
                "The security domain's quorum ('required') is {}; it must be 2 to 10.",
                keys.required
            )));
        }
        Ok(SdFile {
            enc_data: file.enc_data,
            shared_keys: file.shared_keys,
            version: file.version.unwrap_or(SD_VERSION),
        })
    }
}

impl Blob {
    /// The text az writes (`json.dumps` with its default separators and `ensure_ascii`).
    pub fn to_text(&self) -> Result<String> {
        python_dumps(self)
            .map_err(|e| Error::Internal(format!("cannot write the restore blob: {e}")))
    }

    /// Reads a restore blob: `EncData.data` (a list), `EncData.kdf = sp108_kdf`,
    /// `WrappedKey.enc_key` and `WrappedKey.x5t_256` (§6 step 2).
    pub fn parse(text: &str) -> Result<Blob> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| Error::Invalid(format!("The restore blob is not JSON: {e}")))?;
        if value.get("SharedKeys").is_some() {
            return Err(Error::Invalid(
                "This is a security-domain file, not a restore blob; make the blob from it with restore-blob and the wrapping keys.".into(),
            ));
        }
        let blob: Blob = serde_json::from_value(value)
            .map_err(|e| Error::Invalid(format!("Not a restore blob: {e}")))?;
        if blob.enc_data.kdf != KDF {
            return Err(Error::Invalid(format!(
                "The restore blob's kdf is '{}'; only {KDF} is known.",
                super::jose::truncate(&blob.enc_data.kdf)
            )));
        }
        Ok(blob)
    }
}

/// JSON text as Python's `json.dumps(obj)` writes it: `", "` between members and elements,
/// `": "` after keys, and every non-ASCII character as a `\uXXXX` escape.
pub(super) fn python_dumps<T: Serialize>(value: &T) -> serde_json::Result<String> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    value.serialize(&mut ser)?;
    // The formatter writes ASCII only.
    Ok(String::from_utf8_lossy(&out).into_owned())
}

struct PythonFormatter;

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        for c in fragment.chars() {
            if c.is_ascii() {
                writer.write_all(&[c as u8])?;
            } else {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(writer, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_blob_text_is_what_python_writes() {
        let blob = Blob {
            enc_data: EncData {
                data: vec![
                    DataItem {
                        compact_jwe: "a..b.c.d".into(),
                        tag: "t1".into(),
                    },
                    DataItem {
                        compact_jwe: "e".into(),
                        tag: "é€😀\n\"".into(),
                    },
                ],
                kdf: KDF.into(),
            },
            wrapped_key: Wrapped {
                enc_key: "k".into(),
                x5t_256: "x".into(),
            },
        };
        // json.dumps({"EncData": {"data": [...], "kdf": "sp108_kdf"}, "WrappedKey": {...}})
        assert_eq!(
            blob.to_text().expect("text"),
            r#"{"EncData": {"data": [{"compact_jwe": "a..b.c.d", "tag": "t1"}, {"compact_jwe": "e", "tag": "\u00e9\u20ac\ud83d\ude00\n\""}], "kdf": "sp108_kdf"}, "WrappedKey": {"enc_key": "k", "x5t_256": "x"}}"#
        );
        let back = Blob::parse(&blob.to_text().expect("text")).expect("parse");
        assert_eq!(back.enc_data.data[1].tag, "é€😀\n\"");
    }

    #[test]
    fn the_sd_file_text_is_compact_in_the_services_order() {
        let file = SdFile {
            enc_data: EncData {
                data: vec![DataItem {
                    compact_jwe: "j".into(),
                    tag: "t".into(),
                }],
                kdf: KDF.into(),
            },
            shared_keys: SharedKeys {
                enc_shares: vec![Wrapped {
                    enc_key: "k".into(),
                    x5t_256: "x".into(),
                }],
                key_algorithm: KEY_ALGORITHM.into(),
                required: 2,
            },
            version: SD_VERSION,
        };
        assert_eq!(
            file.to_text().expect("text"),
            r#"{"EncData":{"data":[{"compact_jwe":"j","tag":"t"}],"kdf":"sp108_kdf"},"SharedKeys":{"enc_shares":[{"enc_key":"k","x5t_256":"x"}],"key_algorithm":"shamir_share","required":2},"version":2}"#
        );
    }

    #[test]
    fn documents_of_the_wrong_kind_or_shape_are_refused_by_name() {
        let refused = |r: Result<()>, reason: &str| match r {
            Err(Error::Invalid(m)) => assert!(m.contains(reason), "{m} lacks {reason}"),
            _ => panic!("not refused: {reason}"),
        };
        let sd = |t: &str| SdFile::parse(t).map(|_| ());
        let blob = |t: &str| Blob::parse(t).map(|_| ());
        refused(sd("{"), "not JSON");
        refused(sd(r#"{"value": "{}"}"#), "download answer's body");
        refused(sd(r#"{"EncData": {}, "WrappedKey": {}}"#), "restore blob");
        refused(sd(r#"{"EncData": {"data": [], "kdf": "x"}}"#), "SharedKeys");
        let shared = |alg: &str, m: i64| {
            format!(
                r#"{{"EncData":{{"data":[],"kdf":"sp108_kdf"}},"SharedKeys":{{"enc_shares":[],"key_algorithm":"{alg}","required":{m}}}}}"#
            )
        };
        refused(sd(&shared("other", 2)), "key_algorithm is 'other'");
        refused(sd(&shared(KEY_ALGORITHM, 1)), "must be 2 to 10");
        refused(sd(&shared(KEY_ALGORITHM, 11)), "must be 2 to 10");
        refused(sd(&shared(KEY_ALGORITHM, -1)), "Not a security-domain file");
        assert!(SdFile::parse(&shared(KEY_ALGORITHM, 10)).is_ok());
        refused(blob("[]"), "Not a restore blob");
        refused(blob(&shared(KEY_ALGORITHM, 2)), "security-domain file, not");
        refused(
            blob(
                r#"{"EncData":{"data":[],"kdf":"other"},"WrappedKey":{"enc_key":"k","x5t_256":"x"}}"#,
            ),
            "kdf is 'other'",
        );
        refused(
            blob(
                r#"{"EncData":{"data":{},"kdf":"sp108_kdf"},"WrappedKey":{"enc_key":"k","x5t_256":"x"}}"#,
            ),
            "Not a restore blob",
        );
        refused(
            blob(r#"{"EncData":{"data":[],"kdf":"sp108_kdf"},"WrappedKey":{"x5t_256":"x"}}"#),
            "enc_key",
        );
    }
}
