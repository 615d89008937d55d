//! The api-version policy (README "API versions", ARCHITECTURE "Decisions").
//!
//! - Every version Azure Key Vault has published for the keys and Managed HSM administration
//!   data plane is accepted: the dated versions before 7.0, every `7.x` and its previews, and
//!   the dated versions that followed 7.6 (see [`KNOWN`]).
//! - A well-formed dated version newer than the newest known one (`YYYY-MM-DD`, optionally
//!   `-preview`) is accepted too, and answered in the newest shape: the next SDK release must
//!   not stop working because this service was built before it. Azure keeps old fields in new
//!   versions and the SDKs ignore fields they do not know, so the newest shape is the safe
//!   answer to a version the service cannot know.
//! - Anything else is refused with Azure's 400 `BadParameter`: a malformed string, and a
//!   well-formed version at or below the newest known one that Azure never published (a typo
//!   such as `2025-07-10`, or `7.7`: after 7.6 the versions are dated). The newest version
//!   cannot grow new old versions, so refusing those is what Azure does and costs no client.
//!
//! The service answers every accepted version in one shape, that of the newest spec it
//! implements: versions only ever added fields and operations.

/// Every version published for the keys, backup/restore, RBAC and settings data plane, oldest
/// first (Azure/azure-rest-api-specs `specification/keyvault/data-plane`), plus the versions
/// current SDKs send.
pub const KNOWN: &[&str] = &[
    "2015-06-01",
    "2016-10-01",
    "7.0-preview",
    "7.0",
    "7.1-preview",
    "7.1",
    "7.2-preview",
    "7.2",
    "7.3-preview",
    "7.3",
    "7.4-preview.1",
    "7.4",
    "7.5-preview.1",
    "7.5",
    "7.6-preview.1",
    "7.6-preview.2",
    "7.6",
    "2025-06-01-preview",
    "2025-07-01",
    "2025-07-01-preview",
    "2026-01-01-preview",
    "2026-03-01-preview",
];

/// The newest version known: the line past which a well-formed version is a future one.
pub const NEWEST_KNOWN: &str = "2026-03-01-preview";

/// How an accepted version is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepted {
    /// A published version.
    Known,
    /// A well-formed version newer than every known one, answered as [`NEWEST_KNOWN`].
    Newer,
}

/// Why a version is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Not of the form of any api-version.
    Malformed,
    /// Of the right form, but no version Azure published (and not newer than all of them).
    Unknown,
}

/// The policy: accepted (and how), or refused (and why).
pub fn classify(raw: &str) -> Result<Accepted, Refused> {
    let lower = raw.to_ascii_lowercase();
    if KNOWN.contains(&lower.as_str()) {
        return Ok(Accepted::Known);
    }
    match parse(&lower).ok_or(Refused::Malformed)? {
        Form::Dated(date) if date > newest() => Ok(Accepted::Newer),
        _ => Err(Refused::Unknown),
    }
}

/// The shapes an api-version takes: `YYYY-MM-DD[-preview]` or `7.N[-preview[.M]]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    Dated(Dated),
    Numbered,
}

/// A dated version in its order: by date, and a preview before the stable version of the same
/// date (Azure publishes the preview first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Dated {
    year: u16,
    month: u8,
    day: u8,
    stable: bool,
}

fn newest() -> Dated {
    match parse(NEWEST_KNOWN) {
        Some(Form::Dated(d)) => d,
        // NEWEST_KNOWN is a dated version (a unit test says so); the fallback only keeps this
        // total.
        _ => Dated {
            year: u16::MAX,
            month: 12,
            day: 31,
            stable: true,
        },
    }
}

fn parse(lower: &str) -> Option<Form> {
    let digits = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit());
    let short_number =
        |s: &str| (1..=2).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = lower.strip_prefix("7.") {
        let minor = match rest.split_once("-preview") {
            None | Some((_, "")) => rest.trim_end_matches("-preview"),
            Some((minor, n)) => short_number(n.strip_prefix('.')?).then_some(minor)?,
        };
        return short_number(minor).then_some(Form::Numbered);
    }
    let (date, stable) = match lower.strip_suffix("-preview") {
        Some(date) => (date, false),
        None => (lower, true),
    };
    let mut parts = date.split('-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !digits(y, 4) || !digits(m, 2) || !digits(d, 2) {
        return None;
    }
    let (year, month, day): (u16, u8, u8) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    (1..=days).contains(&day).then_some(Form::Dated(Dated {
        year,
        month,
        day,
        stable,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_version_is_accepted_and_well_formed() {
        for v in KNOWN {
            assert_eq!(classify(v), Ok(Accepted::Known), "{v}");
            assert!(parse(v).is_some(), "{v} is not of a known form");
        }
        assert!(matches!(parse(NEWEST_KNOWN), Some(Form::Dated(_))));
        // The newest known is the newest of the dated ones.
        let newest = newest();
        for v in KNOWN {
            if let Some(Form::Dated(d)) = parse(v) {
                assert!(d <= newest, "{v} is newer than NEWEST_KNOWN");
            }
        }
    }

    #[test]
    fn what_the_sdks_send_is_accepted() {
        for v in [
            "2025-07-01",         // Python, JS, .NET, Java, Go stable SDKs
            "7.6-preview.2",      // az keyvault key
            "7.5-preview.1",      // az backup/restore
            "7.4",                // az RBAC and settings
            "2026-01-01-preview", // az's beta SDKs
            "2026-03-01-preview", // azure_security_keyvault_keys 1.1.0-beta.1
            "2016-10-01",         // the Kubernetes KMS plugin
            "2025-06-01-preview",
            "7.0",
            "7.6",
            "2025-07-01-PREVIEW", // case does not matter
        ] {
            assert_eq!(classify(v), Ok(Accepted::Known), "{v}");
        }
    }

    #[test]
    fn a_future_version_is_answered_as_the_newest() {
        for v in [
            "2026-03-01",
            "2026-03-02-preview",
            "2026-06-01",
            "2027-01-01-preview",
            "2099-12-31",
            "2028-02-29",
        ] {
            assert_eq!(classify(v), Ok(Accepted::Newer), "{v}");
        }
    }

    #[test]
    fn unknown_versions_inside_the_known_range_are_refused() {
        for v in [
            "1999-01-01",
            "2025-07-10",
            "2026-02-01-preview",
            "2026-01-01",
            "7.7",
            "7.4-preview.9",
            "7.99",
        ] {
            assert_eq!(classify(v), Err(Refused::Unknown), "{v}");
        }
    }

    #[test]
    fn malformed_versions_are_refused() {
        for v in [
            "",
            "latest",
            "7",
            "7.",
            "7.x",
            "7.123",
            "8.0",
            "7.6-preview.",
            "7.6-preview.123",
            "7.6-beta",
            "2026-13-01",
            "2026-02-30",
            "2027-02-29",
            "2026-1-01",
            "20260301",
            "2026-03-01-beta",
            "2026-03-01-preview.1",
            "2026-03-01-preview-preview",
            " 2025-07-01",
            "2025-07-01 ",
        ] {
            assert_eq!(classify(v), Err(Refused::Malformed), "{v:?}");
        }
    }
}
