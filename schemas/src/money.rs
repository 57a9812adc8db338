//! Exact fixed-point numbers for quantities, prices and money.
//!
//! No floats touch money. Quantities and unit prices carry 9 fractional digits; amounts carry 18,
//! so `quantity × unit price` is exact. Rounding to a currency's minor unit happens once, on the
//! invoice line, with a [`Rounding`] rule (default half-even).

use std::fmt;
use std::ops::{Add, AddAssign, Neg, Sub};

use serde::{Deserialize, Serialize};

pub const QUANTITY_SCALE: u32 = 9;
pub const AMOUNT_SCALE: u32 = 18;
const Q_ONE: i128 = 1_000_000_000;

/// Why a decimal text was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecimalError {
    /// Not a decimal number at all (includes `NaN`, `Infinity`).
    NotANumber,
    /// More fractional digits than the type holds; rounding would lose money.
    TooPrecise { max_digits: u32 },
    /// Does not fit.
    Overflow,
}

impl fmt::Display for DecimalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecimalError::NotANumber => f.write_str("not a finite decimal number"),
            DecimalError::TooPrecise { max_digits } => {
                write!(f, "more than {max_digits} fractional digits")
            }
            DecimalError::Overflow => f.write_str("too large"),
        }
    }
}

/// Parses `[-+]digits[.digits][e[-+]digits]` into an integer scaled by `10^scale`, exactly.
pub fn parse_scaled(text: &str, scale: u32) -> Result<i128, DecimalError> {
    let b = text.as_bytes();
    let mut i = 0;
    let negative = match b.first() {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let mut mantissa: i128 = 0;
    let mut frac_digits: i64 = 0;
    let mut any_digit = false;
    let mut seen_dot = false;
    while i < b.len() {
        match b[i] {
            c @ b'0'..=b'9' => {
                any_digit = true;
                mantissa = mantissa
                    .checked_mul(10)
                    .and_then(|m| m.checked_add((c - b'0') as i128))
                    .ok_or(DecimalError::Overflow)?;
                if seen_dot {
                    frac_digits += 1;
                }
            }
            b'.' if !seen_dot => seen_dot = true,
            b'e' | b'E' => break,
            _ => return Err(DecimalError::NotANumber),
        }
        i += 1;
    }
    if !any_digit {
        return Err(DecimalError::NotANumber);
    }
    let mut exponent: i64 = 0;
    if i < b.len() {
        let exp_text = &text[i + 1..];
        exponent = exp_text
            .parse::<i64>()
            .map_err(|_| DecimalError::NotANumber)?;
        if exponent.abs() > 60 {
            return Err(if mantissa == 0 {
                DecimalError::NotANumber
            } else {
                DecimalError::Overflow
            });
        }
    }
    // value = mantissa * 10^(exponent - frac_digits); we want value * 10^scale.
    let shift = exponent - frac_digits + scale as i64;
    let mut v = mantissa;
    if shift >= 0 {
        for _ in 0..shift {
            v = v.checked_mul(10).ok_or(DecimalError::Overflow)?;
        }
    } else {
        for _ in 0..(-shift) {
            if v % 10 != 0 {
                return Err(DecimalError::TooPrecise { max_digits: scale });
            }
            v /= 10;
        }
    }
    Ok(if negative { -v } else { v })
}

/// Formats an integer scaled by `10^scale` with no trailing zeros (`1.5`, `2`, `-0.000001`).
pub fn format_scaled(v: i128, scale: u32, f: &mut impl fmt::Write) -> fmt::Result {
    let one = 10i128.pow(scale);
    let sign = if v < 0 { "-" } else { "" };
    let abs = v.unsigned_abs();
    let int = abs / one as u128;
    let mut frac = abs % one as u128;
    if frac == 0 {
        return write!(f, "{sign}{int}");
    }
    let mut digits = scale as usize;
    while frac.is_multiple_of(10) {
        frac /= 10;
        digits -= 1;
    }
    write!(f, "{sign}{int}.{frac:0digits$}")
}

/// Appends `v / 10^scale` as text with no trailing zeros, without going through `fmt` (hot path
/// of the canonical form and the CSV writers). Same text as [`format_scaled`].
pub fn push_scaled(buf: &mut Vec<u8>, v: i128, scale: u32) {
    if v < 0 {
        buf.push(b'-');
    }
    let abs = v.unsigned_abs();
    let one = 10u128.pow(scale);
    // Nearly every value fits 64 bits: 128-bit division and formatting cost several times more.
    if abs <= u64::MAX as u128 && one <= u64::MAX as u128 {
        let (abs, one) = (abs as u64, one as u64);
        push_parts(buf, abs / one, abs % one, scale);
    } else {
        push_parts(buf, abs / one, abs % one, scale);
    }
}

/// `whole`, then `.` and the `scale` digits of `frac` without trailing zeros (none if zero).
fn push_parts<T>(buf: &mut Vec<u8>, whole: T, mut frac: T, scale: u32)
where
    T: itoa::Integer + Copy + Eq + From<u8> + std::ops::Rem<Output = T> + std::ops::Div<Output = T>,
{
    let (zero, ten) = (T::from(0), T::from(10));
    buf.extend_from_slice(itoa::Buffer::new().format(whole).as_bytes());
    if frac != zero {
        let mut digits = scale as usize;
        while frac % ten == zero {
            frac = frac / ten;
            digits -= 1;
        }
        buf.push(b'.');
        let mut text = itoa::Buffer::new();
        let text = text.format(frac);
        buf.extend(std::iter::repeat_n(b'0', digits - text.len()));
        buf.extend_from_slice(text.as_bytes());
    }
}

macro_rules! fixed_point {
    ($name:ident, $scale:expr, $doc:literal) => {
        #[doc = $doc]
        #[derive(
            Clone,
            Copy,
            Debug,
            Default,
            PartialEq,
            Eq,
            PartialOrd,
            Ord,
            Hash,
            Serialize,
            Deserialize,
        )]
        pub struct $name(pub i128);

        impl $name {
            pub const ZERO: $name = $name(0);
            pub const SCALE: u32 = $scale;

            pub fn parse(text: &str) -> Result<$name, DecimalError> {
                parse_scaled(text, $scale).map($name)
            }
            pub fn is_negative(self) -> bool {
                self.0 < 0
            }
            pub fn checked_add(self, o: $name) -> Option<$name> {
                self.0.checked_add(o.0).map($name)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                format_scaled(self.0, $scale, f)
            }
        }

        impl Add for $name {
            type Output = $name;
            fn add(self, o: $name) -> $name {
                $name(self.0 + o.0)
            }
        }
        impl Sub for $name {
            type Output = $name;
            fn sub(self, o: $name) -> $name {
                $name(self.0 - o.0)
            }
        }
        impl AddAssign for $name {
            fn add_assign(&mut self, o: $name) {
                self.0 += o.0;
            }
        }
        impl std::ops::SubAssign for $name {
            fn sub_assign(&mut self, o: $name) {
                self.0 -= o.0;
            }
        }
        impl Neg for $name {
            type Output = $name;
            fn neg(self) -> $name {
                $name(-self.0)
            }
        }
        impl std::iter::Sum for $name {
            fn sum<I: Iterator<Item = $name>>(iter: I) -> $name {
                iter.fold($name::ZERO, |a, b| a + b)
            }
        }
    };
}

fixed_point!(
    Quantity,
    QUANTITY_SCALE,
    "A usage quantity with 9 fractional digits."
);
fixed_point!(
    UnitPrice,
    QUANTITY_SCALE,
    "A price per unit with 9 fractional digits."
);
fixed_point!(
    Amount,
    AMOUNT_SCALE,
    "Money with 18 fractional digits (exact for quantity × unit price)."
);

impl Quantity {
    /// The raw value of one unit.
    pub const SCALE_ONE: i128 = Q_ONE;
    pub fn from_units(units: i64) -> Quantity {
        Quantity(units as i128 * Q_ONE)
    }
    pub fn min(self, o: Quantity) -> Quantity {
        if self <= o {
            self
        } else {
            o
        }
    }
    pub fn max(self, o: Quantity) -> Quantity {
        if self >= o {
            self
        } else {
            o
        }
    }
}

impl UnitPrice {
    /// One: a whole (a fraction's upper bound).
    pub const ONE: UnitPrice = UnitPrice(Q_ONE);

    /// `quantity × price`, exactly.
    pub fn times(self, q: Quantity) -> Amount {
        Amount(
            self.0
                .checked_mul(q.0)
                .expect("quantity × unit price exceeds 1.7e20 currency units"),
        )
    }
}

impl Amount {
    /// A whole-price amount given with up to 9 fractional digits (flat fees in the catalog).
    pub fn parse_price(text: &str) -> Result<Amount, DecimalError> {
        parse_scaled(text, QUANTITY_SCALE).map(|v| Amount(v * Q_ONE))
    }

    /// `self × fraction` (a rate or a percentage as a fraction), exact to 18 fractional digits
    /// (and exact outright for amounts of at most 9 fractional digits, such as rounded money).
    pub fn times_fraction(self, fraction: UnitPrice) -> Amount {
        let nanos = self.0 / Q_ONE;
        let rest = self.0 % Q_ONE;
        Amount(
            nanos
                .checked_mul(fraction.0)
                .and_then(|w| w.checked_add(rest * fraction.0 / Q_ONE))
                .expect("amount × fraction exceeds 1.7e20 currency units"),
        )
    }

    /// The amount as a quantity (9 fractional digits, the rest cut off): where a signal or an
    /// anomaly row reports money in a quantity column.
    pub fn to_quantity(self) -> Quantity {
        Quantity(self.0 / Q_ONE)
    }

    /// Rounds to `digits` fractional digits with `rule`, returning the rounded value still at
    /// amount scale (so it can be compared and summed with unrounded amounts).
    pub fn round_to(self, digits: u32, rule: Rounding) -> Amount {
        let unit = 10i128.pow(AMOUNT_SCALE - digits.min(AMOUNT_SCALE));
        Amount(round_div(self.0, unit, rule) * unit)
    }

    /// Formats with exactly `digits` fractional digits (after [`Amount::round_to`]).
    pub fn format_fixed(self, digits: u32) -> String {
        let unit = 10i128.pow(AMOUNT_SCALE - digits);
        let minor = self.0 / unit;
        let one = 10i128.pow(digits);
        let sign = if minor < 0 { "-" } else { "" };
        let abs = minor.unsigned_abs();
        if digits == 0 {
            format!("{sign}{abs}")
        } else {
            format!(
                "{sign}{}.{:0w$}",
                abs / one as u128,
                abs % one as u128,
                w = digits as usize
            )
        }
    }
}

/// How an exact amount is rounded to the currency's minor unit on an invoice line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rounding {
    /// Banker's rounding: ties go to the even neighbour (0.125 → 0.12, 0.135 → 0.14).
    #[default]
    HalfEven,
    /// Ties go away from zero (0.125 → 0.13).
    HalfUp,
    /// Toward zero (truncate).
    Down,
    /// Away from zero.
    Up,
}

/// `n / d` rounded with `rule`; `d > 0`.
fn round_div(n: i128, d: i128, rule: Rounding) -> i128 {
    let q = n / d;
    let r = n % d;
    if r == 0 {
        return q;
    }
    let away = if n < 0 { q - 1 } else { q + 1 };
    let twice = r.unsigned_abs() * 2;
    let d = d as u128;
    match rule {
        Rounding::Down => q,
        Rounding::Up => away,
        Rounding::HalfUp => {
            if twice >= d {
                away
            } else {
                q
            }
        }
        Rounding::HalfEven => {
            if twice > d || (twice == d && q % 2 != 0) {
                away
            } else {
                q
            }
        }
    }
}

/// Number of fractional digits of a currency's minor unit (ISO 4217), default 2.
pub fn minor_unit_digits(currency: &str) -> u32 {
    match currency {
        "JPY" | "KRW" | "VND" | "CLP" | "ISK" | "UGX" | "XAF" | "XOF" | "PYG" | "RWF" => 0,
        "BHD" | "KWD" | "OMR" | "JOD" | "TND" | "LYD" | "IQD" => 3,
        _ => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_exactly_or_refuses() {
        assert_eq!(Quantity::parse("12.5").unwrap(), Quantity(12_500_000_000));
        assert_eq!(Quantity::parse("-0.000000001").unwrap(), Quantity(-1));
        assert_eq!(Quantity::parse("1e3").unwrap(), Quantity::from_units(1000));
        assert_eq!(Quantity::parse("1.50E-1").unwrap(), Quantity(150_000_000));
        assert_eq!(
            Quantity::parse("0.1000000000").unwrap(),
            Quantity(100_000_000)
        );
        assert_eq!(
            Quantity::parse("0.0000000001"),
            Err(DecimalError::TooPrecise { max_digits: 9 })
        );
        assert_eq!(Quantity::parse("NaN"), Err(DecimalError::NotANumber));
        assert_eq!(Quantity::parse("Infinity"), Err(DecimalError::NotANumber));
        assert_eq!(Quantity::parse(""), Err(DecimalError::NotANumber));
        assert_eq!(Quantity::parse("1e999"), Err(DecimalError::Overflow));
        assert_eq!(Quantity::parse("1.2.3"), Err(DecimalError::NotANumber));
    }

    #[test]
    fn formats_without_trailing_zeros() {
        assert_eq!(Quantity(12_500_000_000).to_string(), "12.5");
        assert_eq!(Quantity(-1).to_string(), "-0.000000001");
        assert_eq!(Quantity::from_units(7).to_string(), "7");
        assert_eq!(Amount(5).to_string(), "0.000000000000000005");
    }

    #[test]
    fn rounding_rules_at_the_tie() {
        let a = |s: &str| Amount::parse_price(s).unwrap();
        assert_eq!(a("0.125").round_to(2, Rounding::HalfEven), a("0.12"));
        assert_eq!(a("0.135").round_to(2, Rounding::HalfEven), a("0.14"));
        assert_eq!(a("0.125").round_to(2, Rounding::HalfUp), a("0.13"));
        assert_eq!(a("-0.125").round_to(2, Rounding::HalfUp), a("-0.13"));
        assert_eq!(a("-0.125").round_to(2, Rounding::HalfEven), a("-0.12"));
        assert_eq!(a("0.129").round_to(2, Rounding::Down), a("0.12"));
        assert_eq!(a("0.121").round_to(2, Rounding::Up), a("0.13"));
        assert_eq!(a("2.5").round_to(0, Rounding::HalfEven), a("2"));
        assert_eq!(
            a("12.3").round_to(2, Rounding::HalfEven).format_fixed(2),
            "12.30"
        );
        assert_eq!(
            a("-0.5").round_to(0, Rounding::HalfUp).format_fixed(0),
            "-1"
        );
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(v in any::<i64>()) {
            let q = Quantity(v as i128);
            prop_assert_eq!(Quantity::parse(&q.to_string()).unwrap(), q);
        }

        #[test]
        fn push_scaled_matches_display(v in any::<i128>()) {
            let mut b = Vec::new();
            push_scaled(&mut b, v, 9);
            prop_assert_eq!(String::from_utf8(b).unwrap(), Quantity(v).to_string());
            let mut b = Vec::new();
            push_scaled(&mut b, v, 18);
            prop_assert_eq!(String::from_utf8(b).unwrap(), Amount(v).to_string());
        }

        /// The 64-bit path, which nearly every quantity and amount takes.
        #[test]
        fn push_scaled_matches_display_within_64_bits(v in any::<i64>(), frac in 0i128..1000) {
            let v = v as i128;
            for (scale, small) in [(9, v), (9, frac * 1_000_000), (18, v), (18, frac * 10i128.pow(15))] {
                let mut b = Vec::new();
                push_scaled(&mut b, small, scale);
                let expected = if scale == 9 { Quantity(small).to_string() } else { Amount(small).to_string() };
                prop_assert_eq!(String::from_utf8(b).unwrap(), expected);
            }
        }

        #[test]
        fn rounding_moves_less_than_one_minor_unit(v in any::<i64>(), d in 0u32..4) {
            let a = Amount(v as i128 * 1_000_000_000);
            for rule in [Rounding::HalfEven, Rounding::HalfUp, Rounding::Down, Rounding::Up] {
                let r = a.round_to(d, rule);
                prop_assert!((r.0 - a.0).abs() < 10i128.pow(AMOUNT_SCALE - d));
            }
        }
    }
}
