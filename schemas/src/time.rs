//! Event time, durations and billing periods.
//!
//! Event time is a typed count of milliseconds since the Unix epoch (UTC). RFC 3339 text is
//! converted at the edges only: [`EventTime::parse_rfc3339`] on the way in, [`EventTime`]'s
//! `Display` on the way out. Sub-millisecond digits are truncated (floored), never rounded up.

use std::fmt;

use serde::{Deserialize, Serialize};

const MS_PER_SECOND: i64 = 1_000;
const MS_PER_MINUTE: i64 = 60 * MS_PER_SECOND;
const MS_PER_HOUR: i64 = 60 * MS_PER_MINUTE;
const MS_PER_DAY: i64 = 24 * MS_PER_HOUR;

/// A point in event time: milliseconds since 1970-01-01T00:00:00Z.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct EventTime(pub i64);

impl EventTime {
    /// The earliest representable time; used as "no watermark yet".
    pub const MIN: EventTime = EventTime(i64::MIN);

    pub fn millis(self) -> i64 {
        self.0
    }

    pub fn plus(self, d: Span) -> EventTime {
        EventTime(self.0.saturating_add(d.0))
    }

    pub fn minus(self, d: Span) -> EventTime {
        EventTime(self.0.saturating_sub(d.0))
    }

    /// Whole minutes since the epoch, clamped into `u32` (covers 1970..10136).
    pub fn minutes_u32(self) -> u32 {
        (self.0.div_euclid(MS_PER_MINUTE)).clamp(0, u32::MAX as i64) as u32
    }

    /// Parses RFC 3339 (`2026-11-01T12:00:00Z`, `2026-11-01T12:00:00.123+02:00`; `t`/`z` and a
    /// space separator are accepted). Returns a short reason on failure.
    pub fn parse_rfc3339(text: &str) -> Result<EventTime, &'static str> {
        let b = text.as_bytes();
        if b.len() < 20 {
            return Err("too short for RFC 3339 (expected e.g. 2026-11-01T12:00:00Z)");
        }
        let year = digits(b, 0, 4)? as i64;
        let month = digits(b, 5, 2)?;
        let day = digits(b, 8, 2)?;
        let hour = digits(b, 11, 2)? as i64;
        let minute = digits(b, 14, 2)? as i64;
        let second = digits(b, 17, 2)? as i64;
        if b[4] != b'-'
            || b[7] != b'-'
            || !matches!(b[10], b'T' | b't' | b' ')
            || b[13] != b':'
            || b[16] != b':'
        {
            return Err("bad separators (expected YYYY-MM-DDTHH:MM:SS)");
        }
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
            return Err("date does not exist");
        }
        if hour > 23 || minute > 59 || second > 59 {
            return Err("time of day out of range");
        }
        let mut i = 19;
        let mut millis = 0i64;
        if b[i] == b'.' {
            i += 1;
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                if i - start < 3 {
                    millis = millis * 10 + (b[i] - b'0') as i64;
                }
                i += 1;
            }
            let n = i - start;
            if n == 0 {
                return Err("empty fractional seconds");
            }
            for _ in n..3 {
                millis *= 10;
            }
        }
        let offset_ms = match b.get(i) {
            Some(b'Z' | b'z') if i + 1 == b.len() => 0,
            Some(&sign @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
                let oh = digits(b, i + 1, 2)? as i64;
                let om = digits(b, i + 4, 2)? as i64;
                if oh > 23 || om > 59 {
                    return Err("offset out of range");
                }
                let off = oh * MS_PER_HOUR + om * MS_PER_MINUTE;
                if sign == b'+' {
                    off
                } else {
                    -off
                }
            }
            _ => return Err("missing or malformed UTC offset (expected Z or +HH:MM)"),
        };
        let days = days_from_civil(year, month, day);
        let local = days * MS_PER_DAY
            + hour * MS_PER_HOUR
            + minute * MS_PER_MINUTE
            + second * MS_PER_SECOND
            + millis;
        Ok(EventTime(local - offset_ms))
    }

    /// Calendar fields (UTC) of this time.
    pub fn civil(self) -> Civil {
        let days = self.0.div_euclid(MS_PER_DAY);
        let ms_of_day = self.0.rem_euclid(MS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        Civil {
            year,
            month,
            day,
            hour: (ms_of_day / MS_PER_HOUR) as u32,
            minute: (ms_of_day / MS_PER_MINUTE % 60) as u32,
            second: (ms_of_day / MS_PER_SECOND % 60) as u32,
            millis: (ms_of_day % MS_PER_SECOND) as u32,
        }
    }

    pub fn from_civil(year: i64, month: u32, day: u32) -> EventTime {
        EventTime(days_from_civil(year, month, day) * MS_PER_DAY)
    }

    /// This time `months` calendar months later, at the same time of day; a day past the end
    /// of the target month is its last day (31 January + 1 month is 28 or 29 February).
    pub fn plus_months(self, months: u32) -> EventTime {
        let c = self.civil();
        let index = c.year * 12 + i64::from(c.month - 1) + i64::from(months);
        let (year, month) = (index.div_euclid(12), index.rem_euclid(12) as u32 + 1);
        let day = c.day.min(days_in_month(year, month));
        EventTime(EventTime::from_civil(year, month, day).0 + self.0.rem_euclid(MS_PER_DAY))
    }

    /// The wall clock, for the clock-skew check only.
    pub fn now() -> EventTime {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        EventTime(d.as_millis() as i64)
    }
}

impl fmt::Display for EventTime {
    /// RFC 3339 in UTC with milliseconds: `2026-11-01T12:00:00.000Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == EventTime::MIN {
            return f.write_str("-infinity");
        }
        let c = self.civil();
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            c.year, c.month, c.day, c.hour, c.minute, c.second, c.millis
        )
    }
}

/// Calendar fields of an [`EventTime`] in UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub millis: u32,
}

fn digits(b: &[u8], at: usize, n: usize) -> Result<u32, &'static str> {
    let mut v = 0u32;
    for &c in b.get(at..at + n).ok_or("truncated")? {
        if !c.is_ascii_digit() {
            return Err("expected a digit");
        }
        v = v * 10 + (c - b'0') as u32;
    }
    Ok(v)
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(year) => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    (year, month, day)
}

/// A length of time in milliseconds, written in config as `250ms`, `30s`, `5m`, `1h`, `7d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span(pub i64);

impl Span {
    pub const fn hours(h: i64) -> Span {
        Span(h * MS_PER_HOUR)
    }
    pub const fn minutes(m: i64) -> Span {
        Span(m * MS_PER_MINUTE)
    }
    pub const fn days(d: i64) -> Span {
        Span(d * MS_PER_DAY)
    }
    pub const fn millis(self) -> i64 {
        self.0
    }

    pub fn parse(text: &str) -> Result<Span, String> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: i64 = num
            .parse()
            .map_err(|_| format!("`{text}` is not a duration; write a whole number and a unit: 250ms, 30s, 5m, 1h or 7d"))?;
        let per = match unit {
            "ms" => 1,
            "s" => MS_PER_SECOND,
            "m" => MS_PER_MINUTE,
            "h" => MS_PER_HOUR,
            "d" => MS_PER_DAY,
            _ => {
                return Err(format!(
                    "`{text}` has unknown unit `{unit}`; use ms, s, m, h or d"
                ))
            }
        };
        n.checked_mul(per)
            .map(Span)
            .ok_or_else(|| format!("`{text}` is too long"))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        for (per, unit) in [
            (MS_PER_DAY, "d"),
            (MS_PER_HOUR, "h"),
            (MS_PER_MINUTE, "m"),
            (MS_PER_SECOND, "s"),
        ] {
            if ms != 0 && ms % per == 0 {
                return write!(f, "{}{}", ms / per, unit);
            }
        }
        write!(f, "{ms}ms")
    }
}

impl Serialize for Span {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Span::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// How long a billing period is. Periods are aligned to UTC calendar boundaries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PeriodUnit {
    Hour,
    Day,
    #[default]
    Month,
}

/// A billing period, identified by its start time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Period(pub EventTime);

impl PeriodUnit {
    /// The period containing `t`.
    pub fn period_of(self, t: EventTime) -> Period {
        let start = match self {
            PeriodUnit::Hour => t.0.div_euclid(MS_PER_HOUR) * MS_PER_HOUR,
            PeriodUnit::Day => t.0.div_euclid(MS_PER_DAY) * MS_PER_DAY,
            PeriodUnit::Month => {
                let c = t.civil();
                EventTime::from_civil(c.year, c.month, 1).0
            }
        };
        Period(EventTime(start))
    }

    /// The first instant after `p`.
    pub fn end_of(self, p: Period) -> EventTime {
        match self {
            PeriodUnit::Hour => EventTime(p.0 .0 + MS_PER_HOUR),
            PeriodUnit::Day => EventTime(p.0 .0 + MS_PER_DAY),
            PeriodUnit::Month => {
                let c = p.0.civil();
                let (y, m) = if c.month == 12 {
                    (c.year + 1, 1)
                } else {
                    (c.year, c.month + 1)
                };
                EventTime::from_civil(y, m, 1)
            }
        }
    }

    /// The periods from `first` on, each starting before `until`.
    pub fn periods(self, first: Period, until: EventTime) -> impl Iterator<Item = Period> {
        std::iter::successors(Some(first), move |&p| Some(self.period_of(self.end_of(p))))
            .take_while(move |p| p.0 < until)
    }

    /// The period a [`PeriodUnit::label`] names.
    pub fn parse_label(self, label: &str) -> Option<Period> {
        let b = label.as_bytes();
        let num = |at: usize, n: usize| -> Option<i64> {
            std::str::from_utf8(b.get(at..at + n)?).ok()?.parse().ok()
        };
        let (year, month) = (num(0, 4)?, num(5, 2)? as u32);
        if !(1..=12).contains(&month) {
            return None;
        }
        let (day, hour) = match self {
            PeriodUnit::Month if b.len() == 7 => (1, 0),
            PeriodUnit::Day if b.len() == 10 => (num(8, 2)? as u32, 0),
            PeriodUnit::Hour if b.len() == 13 => (num(8, 2)? as u32, num(11, 2)?),
            _ => return None,
        };
        let p = Period(EventTime::from_civil(year, month, day).plus(Span::hours(hour)));
        (self.label(p) == label).then_some(p)
    }

    /// A label for `p`: `2026-11` (month), `2026-11-22` (day), `2026-11-22T13` (hour).
    pub fn label(self, p: Period) -> String {
        let c = p.0.civil();
        match self {
            PeriodUnit::Month => format!("{:04}-{:02}", c.year, c.month),
            PeriodUnit::Day => format!("{:04}-{:02}-{:02}", c.year, c.month, c.day),
            PeriodUnit::Hour => format!("{:04}-{:02}-{:02}T{:02}", c.year, c.month, c.day, c.hour),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> EventTime {
        EventTime::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn months_are_added_on_the_calendar() {
        let t = |s: &str| EventTime::parse_rfc3339(s).unwrap();
        for (from, months, to) in [
            ("2026-01-31T10:30:00Z", 1, "2026-02-28T10:30:00Z"),
            ("2028-01-31T00:00:00Z", 1, "2028-02-29T00:00:00Z"),
            ("2026-11-16T00:00:00Z", 14, "2028-01-16T00:00:00Z"),
            ("2026-12-01T00:00:00Z", 0, "2026-12-01T00:00:00Z"),
        ] {
            assert_eq!(
                t(from).plus_months(months),
                t(to),
                "{from} + {months} months"
            );
        }
    }

    #[test]
    fn parses_utc_and_offsets() {
        assert_eq!(t("1970-01-01T00:00:00Z"), EventTime(0));
        assert_eq!(t("1970-01-01T00:00:01.5Z"), EventTime(1500));
        assert_eq!(t("1970-01-01T00:00:01.123456Z"), EventTime(1123));
        assert_eq!(t("1970-01-01T02:00:00+02:00"), EventTime(0));
        assert_eq!(t("1969-12-31T23:00:00-01:00"), EventTime(0));
        assert_eq!(
            t("2026-11-22T10:20:30.040Z").to_string(),
            "2026-11-22T10:20:30.040Z"
        );
    }

    #[test]
    fn rejects_impossible_dates_and_garbage() {
        for bad in [
            "2026-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-01T24:00:00Z",
            "2026-11-01T12:00:00",
            "2026-11-01T12:00:00.Z",
            "2026/11/01T12:00:00Z",
            "yesterday",
            "2026-11-01T12:00:00Zjunk",
        ] {
            assert!(
                EventTime::parse_rfc3339(bad).is_err(),
                "{bad} should be rejected"
            );
        }
        assert!(EventTime::parse_rfc3339("2024-02-29T00:00:00Z").is_ok());
    }

    #[test]
    fn civil_round_trips_over_four_centuries() {
        for days in (-150_000..150_000).step_by(17) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn monthly_periods_follow_the_calendar() {
        let u = PeriodUnit::Month;
        let p = u.period_of(t("2024-02-29T23:59:59.999Z"));
        assert_eq!(p.0, t("2024-02-01T00:00:00Z"));
        assert_eq!(u.end_of(p), t("2024-03-01T00:00:00Z"));
        assert_eq!(
            u.end_of(u.period_of(t("2026-12-05T00:00:00Z"))),
            t("2027-01-01T00:00:00Z")
        );
        assert_eq!(u.label(p), "2024-02");
        assert_eq!(u.parse_label("2024-02"), Some(p));
        assert_eq!(
            PeriodUnit::Hour.parse_label("2026-11-22T13"),
            Some(PeriodUnit::Hour.period_of(t("2026-11-22T13:59:00Z")))
        );
        assert_eq!(PeriodUnit::Day.parse_label("2026-02-30"), None);
        assert_eq!(u.parse_label("2024-2"), None);
        assert_eq!(
            PeriodUnit::Hour.label(PeriodUnit::Hour.period_of(t("2026-11-22T13:59:00Z"))),
            "2026-11-22T13"
        );
    }

    #[test]
    fn spans_parse_and_print() {
        assert_eq!(Span::parse("7d").unwrap(), Span::days(7));
        assert_eq!(Span::parse("250ms").unwrap(), Span(250));
        assert_eq!(Span::days(7).to_string(), "7d");
        assert!(Span::parse("7 days").is_err());
        assert!(Span::parse("h").is_err());
    }
}
