//! The one clock all retention logic reads (DESIGN §9). Operators see real time; tests move a
//! file-backed offset instead of sleeping.

use std::time::{SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync {
    /// Unix seconds.
    fn now(&self) -> i64;
}

/// Wall-clock time.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    }
}

/// TEST-ONLY: wall-clock time plus an offset in seconds read from a file on every call, so a
/// test can move a running service's clock days ahead without sleeping. Armed only by the
/// explicit `P11VAULT_TEST_CLOCK_FILE` switch.
#[derive(Debug)]
pub struct FileOffsetClock {
    path: std::path::PathBuf,
}

impl FileOffsetClock {
    pub fn new(path: std::path::PathBuf) -> Self {
        tracing::warn!(file = %path.display(), "TEST-ONLY clock: time is shifted by the offset in this file");
        Self { path }
    }
}

impl Clock for FileOffsetClock {
    fn now(&self) -> i64 {
        let offset = std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .unwrap_or(0);
        SystemClock.now() + offset
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for Unix milliseconds (UTC, proleptic Gregorian).
pub fn rfc3339_millis(ms: i64) -> String {
    let (secs, millis) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (y, mo, d, h, mi, s) = civil(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{millis:03}Z")
}

/// `YYYYMMDDHHmmSS` in UTC, as backup folder names use it.
pub fn compact_utc(secs: i64) -> String {
    let (y, mo, d, h, mi, s) = civil(secs);
    format!("{y:04}{mo:02}{d:02}{h:02}{mi:02}{s:02}")
}

/// Parses `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM:SSZ` (fraction allowed) or plain Unix seconds into
/// Unix seconds.
pub fn parse_time(raw: &str) -> Option<i64> {
    if let Ok(secs) = raw.parse::<i64>() {
        // Years 1970 to 9999: every later use (milliseconds, formatting) stays in range.
        return (0..=253_402_300_799).contains(&secs).then_some(secs);
    }
    let num = |s: &str| s.parse::<i64>().ok();
    let (date, time) = match raw.split_once('T') {
        Some((d, t)) => (d, Some(t.strip_suffix('Z')?)),
        None => (raw, None),
    };
    let mut date_parts = date.split('-');
    let (y, m, d) = (
        num(date_parts.next()?)?,
        num(date_parts.next()?)?,
        num(date_parts.next()?)?,
    );
    if date_parts.next().is_some()
        || !(1..=9999).contains(&y)
        || !(1..=12).contains(&m)
        || !(1..=31).contains(&d)
    {
        return None;
    }
    let (h, mi, s) = match time {
        None => (0, 0, 0),
        Some(t) => {
            let t = t.split('.').next()?;
            let mut parts = t.split(':');
            let v = (
                num(parts.next()?)?,
                num(parts.next()?)?,
                num(parts.next()?)?,
            );
            if parts.next().is_some() || v.0 > 23 || v.1 > 59 || v.2 > 60 {
                return None;
            }
            v
        }
    };
    Some(days_from_civil(y, m, d) * 86_400 + h * 3600 + mi * 60 + s)
}

fn civil(secs: i64) -> (i64, i64, i64, i64, i64, i64) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formatting_round_trips() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(1_795_000_000_123),
            "2026-11-18T11:06:40.123Z"
        );
        assert_eq!(compact_utc(951_782_400), "20000229000000");
        for secs in [0, 951_782_400, 1_795_000_000, 4_102_444_800] {
            let text = rfc3339_millis(secs * 1000);
            assert_eq!(parse_time(&text), Some(secs), "{text}");
        }
        assert_eq!(parse_time("2026-11-21"), Some(1_795_219_200));
        assert_eq!(parse_time("1700000000"), Some(1_700_000_000));
        assert_eq!(parse_time("2026-13-01"), None);
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(parse_time("9223372036854775807"), None);
        assert_eq!(parse_time("999999999999999-01-01"), None);
    }
}
