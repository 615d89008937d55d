//! Key rotation policies as Managed HSM accepts them: an ISO 8601 duration type, the policy (at
//! most one Rotate trigger, and the expiry the policy gives new versions) with Managed HSM's
//! limits checked in its one constructor, and when a policy makes a key due. The wire format is
//! `http::rotation`'s; this is what every layer stores, backs up and decides on.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{ParseError, truncate_for_message};

const DAY: i64 = 86_400;

/// The shortest interval between automatic rotations Managed HSM allows, and the shortest
/// `expiryTime`: 28 days (Managed HSM key-rotation docs, "Key rotation policy").
pub const MIN_INTERVAL: i64 = 28 * DAY;

/// The longest duration accepted (p11vault's own bound: every date computed from one stays in
/// range; Terraform's Managed HSM resource uses the same upper limit).
pub const MAX_DURATION: i64 = 100 * 365 * DAY;

/// An ISO 8601 duration (`P90D`, `P3M`, `P1Y10D`, `PT48H`), kept as the client spelled it and as
/// seconds. Years count 365 days and months 30 (the fixed lengths .NET's `XmlConvert` gives
/// them), so every due date is exact and independent of the calendar.
#[derive(Clone, PartialEq, Eq)]
pub struct IsoDuration {
    text: String,
    seconds: i64,
}

impl IsoDuration {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let bad = || {
            ParseError(format!(
                "'{}' is not an ISO 8601 duration such as P90D, P3M, P1Y10D or PT48H.",
                truncate_for_message(raw)
            ))
        };
        let rest = raw.strip_prefix('P').ok_or_else(bad)?;
        let (date, time) = match rest.split_once('T') {
            Some((date, time)) => (date, Some(time)),
            None => (rest, None),
        };
        const DATE: &[(u8, i64)] = &[
            (b'Y', 365 * DAY),
            (b'M', 30 * DAY),
            (b'W', 7 * DAY),
            (b'D', DAY),
        ];
        const TIME: &[(u8, i64)] = &[(b'H', 3600), (b'M', 60), (b'S', 1)];
        let mut seconds: i64 = 0;
        let mut parts = 0;
        for (text, units, is_time) in [(Some(date), DATE, false), (time, TIME, true)] {
            let Some(text) = text else { continue };
            let found = components(text, units).ok_or_else(bad)?;
            if found.is_empty() && is_time {
                // A `T` with nothing after it.
                return Err(bad());
            }
            for (count, unit) in found {
                parts += 1;
                seconds = count
                    .checked_mul(unit)
                    .and_then(|s| s.checked_add(seconds))
                    .filter(|s| *s <= MAX_DURATION)
                    .ok_or_else(|| {
                        ParseError(format!(
                            "The duration '{}' is longer than 100 years.",
                            truncate_for_message(raw)
                        ))
                    })?;
            }
        }
        if parts == 0 {
            return Err(bad());
        }
        Ok(Self {
            text: raw.to_owned(),
            seconds,
        })
    }

    /// The duration as the client wrote it.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn seconds(&self) -> i64 {
        self.seconds
    }
}

/// `count` and unit length of each `{digits}{designator}` of `text`, designators in the order
/// of `units`, each at most once. `None` if `text` is anything else.
fn components(text: &str, units: &[(u8, i64)]) -> Option<Vec<(i64, i64)>> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let (mut at, mut next_unit) = (0, 0);
    while at < bytes.len() {
        let digits = bytes[at..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits == 0 || digits > 12 {
            return None;
        }
        let count: i64 = text[at..at + digits].parse().ok()?;
        let designator = *bytes.get(at + digits)?;
        let offset = units[next_unit..]
            .iter()
            .position(|(d, _)| *d == designator)?;
        out.push((count, units[next_unit + offset].1));
        next_unit += offset + 1;
        at += digits + 1;
    }
    Some(out)
}

impl fmt::Debug for IsoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} s)", self.text, self.seconds)
    }
}

impl Serialize for IsoDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for IsoDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        IsoDuration::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// When the one Rotate action of a policy fires.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RotationTrigger {
    /// This long after the newest version was created.
    AfterCreate(IsoDuration),
    /// This long before the newest version expires (never, if it has no expiry).
    BeforeExpiry(IsoDuration),
}

/// A key's rotation policy. Managed HSM has only the Rotate action, at most one of it; a policy
/// without one rotates nothing automatically, and only gives on-demand rotations their expiry.
/// Built only through [`RotationPolicy::new`], which checks Managed HSM's limits (stored and
/// backed-up policies are checked again on the way back).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PolicyFields", into = "PolicyFields")]
pub struct RotationPolicy {
    trigger: Option<RotationTrigger>,
    expiry: Option<IsoDuration>,
}

/// The stored form of a policy, before its checks.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFields {
    trigger: Option<RotationTrigger>,
    expiry: Option<IsoDuration>,
}

impl TryFrom<PolicyFields> for RotationPolicy {
    type Error = ParseError;

    fn try_from(f: PolicyFields) -> Result<Self, ParseError> {
        RotationPolicy::new(f.trigger, f.expiry)
    }
}

impl From<RotationPolicy> for PolicyFields {
    fn from(p: RotationPolicy) -> Self {
        PolicyFields {
            trigger: p.trigger,
            expiry: p.expiry,
        }
    }
}

impl RotationPolicy {
    /// A policy, if Managed HSM would accept it (key-rotation docs of Managed HSM):
    /// `expiryTime` is at least 28 days; an automatic rotation may not come more often than
    /// every 28 days, so `timeAfterCreate` is at least 28 days and `timeBeforeExpiry` at most
    /// `expiryTime` minus 28 days — which needs an `expiryTime`.
    pub fn new(
        trigger: Option<RotationTrigger>,
        expiry: Option<IsoDuration>,
    ) -> Result<Self, ParseError> {
        if let Some(e) = &expiry
            && e.seconds < MIN_INTERVAL
        {
            return Err(ParseError(format!(
                "The expiryTime '{}' is shorter than 28 days; Managed HSM sets new key versions to expire at least 28 days (P28D) after they are made.",
                truncate_for_message(e.as_str())
            )));
        }
        match &trigger {
            Some(RotationTrigger::AfterCreate(d)) if d.seconds < MIN_INTERVAL => {
                return Err(ParseError(format!(
                    "The timeAfterCreate '{}' is shorter than 28 days; Managed HSM rotates a key automatically at most once every 28 days (P28D).",
                    truncate_for_message(d.as_str())
                )));
            }
            Some(RotationTrigger::BeforeExpiry(d)) => match &expiry {
                None => {
                    return Err(ParseError(
                        "A timeBeforeExpiry trigger needs the policy's expiryTime: it bounds how early before expiry a rotation may come (expiryTime minus 28 days), and gives every rotated version the expiry the next rotation counts from.".into(),
                    ));
                }
                Some(e) if d.seconds > e.seconds - MIN_INTERVAL => {
                    return Err(ParseError(format!(
                        "The timeBeforeExpiry '{}' is longer than the expiryTime '{}' minus 28 days; Managed HSM rotates a key automatically at most once every 28 days.",
                        truncate_for_message(d.as_str()),
                        truncate_for_message(e.as_str())
                    )));
                }
                Some(_) => {}
            },
            _ => {}
        }
        Ok(Self { trigger, expiry })
    }

    pub fn trigger(&self) -> Option<&RotationTrigger> {
        self.trigger.as_ref()
    }

    /// How long new versions live (`expiryTime`).
    pub fn expiry(&self) -> Option<&IsoDuration> {
        self.expiry.as_ref()
    }

    /// When the policy makes a key due for rotation, given its newest version's creation and
    /// expiry; `None` if it never does.
    pub fn due_at(&self, created: i64, expires: Option<i64>) -> Option<i64> {
        match self.trigger.as_ref()? {
            RotationTrigger::AfterCreate(d) => Some(created.saturating_add(d.seconds)),
            RotationTrigger::BeforeExpiry(d) => expires.map(|e| e.saturating_sub(d.seconds)),
        }
    }

    /// The expiry of a version rotated at `now`, if the policy gives one.
    pub fn expiry_from(&self, now: i64) -> Option<i64> {
        self.expiry.as_ref().map(|e| now.saturating_add(e.seconds))
    }
}

/// A stored policy and when it was first set and last changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRecord {
    pub policy: RotationPolicy,
    pub created: i64,
    pub updated: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(raw: &str) -> IsoDuration {
        IsoDuration::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"))
    }

    #[test]
    fn durations_parse_with_fixed_unit_lengths() {
        for (raw, seconds) in [
            ("P90D", 90 * DAY),
            ("P3M", 90 * DAY),
            ("P1Y10D", 375 * DAY),
            ("PT48H", 2 * DAY),
            ("P2W", 14 * DAY),
            (
                "P1Y2M3W4DT5H6M7S",
                (365 + 60 + 21 + 4) * DAY + 5 * 3600 + 6 * 60 + 7,
            ),
            ("PT1M", 60),
            ("P0D", 0),
            ("P100Y", MAX_DURATION),
        ] {
            let parsed = d(raw);
            assert_eq!(parsed.seconds(), seconds, "{raw}");
            assert_eq!(parsed.as_str(), raw);
        }
    }

    #[test]
    fn malformed_durations_are_refused_with_the_input_named() {
        for raw in [
            "",
            "P",
            "PT",
            "90D",
            "P90",
            "PD",
            "P-1D",
            "P1.5D",
            "p90d",
            "P1D1Y",
            "P1D2D",
            "P1H",
            "PT1D",
            "P1DT",
            "P 1D",
            "P1DX",
            "P1Y1Y",
            "P1000000000000D",
            "PT1HT1M",
        ] {
            let err = IsoDuration::parse(raw).expect_err(raw);
            assert!(err.0.contains("ISO 8601"), "{raw}: {err}");
        }
        let long = IsoDuration::parse("P100Y1D").expect_err("over 100 years");
        assert!(long.0.contains("100 years"), "{long}");
        let huge = IsoDuration::parse("P999999999999Y").expect_err("overflow");
        assert!(huge.0.contains("100 years"), "{huge}");
    }

    #[test]
    fn managed_hsm_limits_are_checked_by_the_one_constructor() {
        use RotationTrigger::{AfterCreate, BeforeExpiry};
        let ok = [
            (None, None),
            (None, Some("P28D")),
            (Some(AfterCreate(d("P28D"))), None),
            (Some(AfterCreate(d("P18M"))), Some("P2Y")),
            (Some(BeforeExpiry(d("P28D"))), Some("P56D")),
            (Some(BeforeExpiry(d("P0D"))), Some("P28D")),
            (Some(BeforeExpiry(d("P28D"))), Some("P1Y")),
        ];
        for (trigger, expiry) in ok {
            let what = format!("{trigger:?} {expiry:?}");
            RotationPolicy::new(trigger, expiry.map(d)).unwrap_or_else(|e| panic!("{what}: {e}"));
        }
        let refused = [
            (None, Some("P27D"), "expiryTime"),
            (None, Some("PT671H"), "expiryTime"),
            (Some(AfterCreate(d("P27D"))), None, "timeAfterCreate"),
            (Some(AfterCreate(d("PT1H"))), Some("P1Y"), "timeAfterCreate"),
            (
                Some(BeforeExpiry(d("P30D"))),
                None,
                "needs the policy's expiryTime",
            ),
            (Some(BeforeExpiry(d("P29D"))), Some("P56D"), "minus 28 days"),
            (
                Some(BeforeExpiry(d("P1D"))),
                Some("P28DT1H"),
                "minus 28 days",
            ),
        ];
        for (trigger, expiry, says) in refused {
            let what = format!("{trigger:?} {expiry:?}");
            let err = RotationPolicy::new(trigger, expiry.map(d)).expect_err(&what);
            assert!(err.0.contains(says), "{what}: {err}");
        }
    }

    #[test]
    fn due_dates_count_from_the_newest_version() {
        let after = RotationPolicy::new(Some(RotationTrigger::AfterCreate(d("P30D"))), None)
            .expect("valid");
        assert_eq!(after.due_at(1000, None), Some(1000 + 30 * DAY));
        assert_eq!(after.due_at(1000, Some(5)), Some(1000 + 30 * DAY));
        assert_eq!(after.expiry_from(7), None);
        let before = RotationPolicy::new(
            Some(RotationTrigger::BeforeExpiry(d("P10D"))),
            Some(d("P90D")),
        )
        .expect("valid");
        assert_eq!(before.due_at(0, None), None, "a version without expiry");
        assert_eq!(before.due_at(0, Some(50 * DAY)), Some(40 * DAY));
        assert_eq!(before.expiry_from(7), Some(7 + 90 * DAY));
        assert_eq!(RotationPolicy::default().due_at(0, Some(0)), None);
        assert_eq!(after.due_at(i64::MAX, None), Some(i64::MAX));
    }

    #[test]
    fn the_stored_form_round_trips_and_is_checked_on_the_way_back() {
        let policy = RotationPolicy::new(
            Some(RotationTrigger::BeforeExpiry(d("P1M"))),
            Some(d("P1Y")),
        )
        .expect("valid");
        let stored = serde_json::to_string(&policy).expect("serialises");
        assert_eq!(
            stored,
            r#"{"trigger":{"before_expiry":"P1M"},"expiry":"P1Y"}"#
        );
        let back: RotationPolicy = serde_json::from_str(&stored).expect("parses");
        assert_eq!(back, policy);
        for bad in [
            r#"{"trigger":{"after_create":"P1D"},"expiry":null}"#,
            r#"{"trigger":{"before_expiry":"P1M"},"expiry":null}"#,
            r#"{"trigger":null,"expiry":"P9X"}"#,
            r#"{"trigger":null,"expiry":null,"extra":1}"#,
        ] {
            assert!(
                serde_json::from_str::<RotationPolicy>(bad).is_err(),
                "{bad}"
            );
        }
    }
}
