//! Norwegian national identity numbers, parsed once at the edge ("parse, don't
//! validate"): an [`IdentityNumber`] can only exist if it passed [`IdentityNumber::parse`].
//!
//! # Which kinds each [`SyntheticPolicy`] accepts
//!
//! * `Reject` (production) accepts only fødselsnummer and D-numbers (day + 40): the numbers
//!   Folkeregisteret issues, and so the only ones a school administrative system holds.
//! * Month + 40 is both the health sector's H-number and NAV's (Dolly) synthetic test number;
//!   the digits cannot tell them apart. Schools never get H-numbers, and accepting + 40 would
//!   let test identities into production, so `Reject` refuses it. `Accept` takes it and
//!   reports [`IdentityKind::HNumberOrSyntheticNav`] (or [`IdentityKind::SyntheticNavDNumber`]
//!   with day + 40 too, which no H-number has).
//! * Month + 80 is Skatteetaten's Tenor synthetic test number (also with day + 40): accepted
//!   only under `Accept`, for demos and tests. FH-numbers and anything else: never.
//!
//! # Check digits
//!
//! Classic rule: with weights k1 = [3,7,6,1,8,9,4,5,2] and k2 = [5,4,3,2,7,6,5,4,3,2] (k1 and
//! k2 themselves weigh 1), `(Σ w1·d + k1) mod 11 == 0` and `(Σ w2·d + k2) mod 11 == 0`, where
//! the k2 sum includes k1 (weight 2); a check digit that would have to be 10 makes the number
//! invalid. Numbers issued from 1 January 2032 keep the k2 rule unchanged but let
//! `(Σ w1·d + k1) mod 11` be 0, 1, 2 or 3 ("k1 = {11,12,13,14} - (Σ w1·d mod 11)", so up to four
//! k1 per individual number). Systems must accept both rules in parallel; since the classic
//! rule is the remainder-0 case of the new one, a number is accepted when the new rule holds.
//! Source: Skatteetaten, "Nytt fødselsnummer fra 2032", Folkeregisteret API documentation
//! (github.com/Skatteetaten/folkeregisteret-api-dokumentasjon, src/om-tjenestene/nyttfnr2032.md),
//! including its worked example for 30.10.1982 with individual number 999 (k1 = 2 or 3).
//!
//! # Date of birth
//!
//! The same source says that from 2032 the individual number no longer tells the century, and
//! new numbers are also issued to people born before 2032. A remainder-0 number may be either
//! kind, so the classic century table (000–499 → 1900s, 500–749 → 1854–1899, 500–999 →
//! 2000–2039, 900–999 → 1940–1999) cannot be used to reject a date: the day and month must
//! exist in *some* century. The only date that depends on the century is 29 February in a year
//! ending in 00, which exists because 2000 was a leap year; 29 February in any other year whose
//! two digits are not divisible by four is rejected, as are 31 February, 31 April, day 0, etc.

use std::fmt;

use zeroize::Zeroize;

/// Weights of the first check digit (k1) over the nine date and individual-number digits.
const K1_WEIGHTS: [u32; 9] = [3, 7, 6, 1, 8, 9, 4, 5, 2];
/// Weights of the second check digit (k2) over the nine digits and k1.
const K2_WEIGHTS: [u32; 10] = [5, 4, 3, 2, 7, 6, 5, 4, 3, 2];

/// What an identity number is, read from its date digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdentityKind {
    /// Ordinary fødselsnummer: day and month as is.
    Fodselsnummer,
    /// D-number (day + 40), for people not (yet) resident in Norway.
    DNumber,
    /// Month + 40: either a health-sector H-number or a NAV (Dolly) synthetic test number.
    /// The digits cannot tell which.
    HNumberOrSyntheticNav,
    /// Day + 40 and month + 40: a NAV synthetic D-number (H-numbers never have day + 40).
    SyntheticNavDNumber,
    /// Month + 80: a Skatteetaten Tenor synthetic test fødselsnummer.
    SyntheticTenor,
    /// Day + 40 and month + 80: a Skatteetaten Tenor synthetic test D-number.
    SyntheticTenorDNumber,
}

impl IdentityKind {
    /// True for the kinds Folkeregisteret issues to real people (fødselsnummer, D-number).
    #[must_use]
    pub fn is_registry_number(self) -> bool {
        matches!(self, Self::Fodselsnummer | Self::DNumber)
    }

    /// True when the number is (or may be) a synthetic test number, or an H-number.
    #[must_use]
    pub fn is_synthetic_or_h_number(self) -> bool {
        !self.is_registry_number()
    }

    /// True when day + 40 (a D-number, real or synthetic).
    #[must_use]
    pub fn is_d_number(self) -> bool {
        matches!(self, Self::DNumber | Self::SyntheticNavDNumber | Self::SyntheticTenorDNumber)
    }
}

/// Whether a deployment accepts synthetic test numbers (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyntheticPolicy {
    /// Production: only fødselsnummer and D-numbers.
    #[default]
    Reject,
    /// Demo and test deployments: also month + 40 (H-number / NAV synthetic) and month + 80
    /// (Tenor synthetic).
    Accept,
}

impl SyntheticPolicy {
    /// From the `accept_synthetic_identity_numbers` variable: "true", or
    /// "false"/unset (the production default).
    pub fn from_vars(vars: &impl crate::vars::Variables) -> Result<Self, crate::Problem> {
        match vars.get("accept_synthetic_identity_numbers").as_deref().map(str::trim) {
            Some("true") => Ok(SyntheticPolicy::Accept),
            None | Some("") | Some("false") => Ok(SyntheticPolicy::Reject),
            Some(_) => {
                eprintln!("error: configuration variable `accept_synthetic_identity_numbers` must be true or false");
                Err(crate::Problem::internal())
            }
        }
    }
}

/// Why an input is not an acceptable identity number. Messages never contain the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdentityError {
    /// Not exactly eleven ASCII digits after trimming surrounding whitespace.
    Format,
    /// The day or month digits do not form a real calendar date of any known kind.
    InvalidDate,
    /// The check digits are wrong under both the classic and the post-2032 rule.
    InvalidCheckDigits,
    /// A Tenor or NAV synthetic number in a deployment that rejects them.
    SyntheticNotAccepted,
    /// A month + 40 number (H-number or NAV synthetic) in a deployment that rejects them.
    HNumberNotAccepted,
}

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Format => "must be exactly eleven digits",
            Self::InvalidDate => "does not contain a valid date of birth",
            Self::InvalidCheckDigits => "invalid check digits",
            Self::SyntheticNotAccepted => "synthetic test numbers are not accepted in this deployment",
            Self::HNumberNotAccepted => "H-numbers and NAV synthetic test numbers are not accepted in this deployment",
        })
    }
}

impl std::error::Error for IdentityError {}

/// A validated Norwegian identity number (fødselsnummer, D-number or, where the policy allows,
/// an H-number or synthetic test number).
///
/// It deliberately has no `Display` and no `Serialize`, and its `Debug` is redacted, so it cannot
/// leak into logs or responses by accident; [`IdentityNumber::expose`] is the one way to the
/// digits. The digits are zeroed when the value is dropped (best effort: the compiler may have
/// left copies elsewhere, and the caller's input string is not ours to wipe).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdentityNumber {
    /// Eleven ASCII digits.
    digits: [u8; 11],
    kind: IdentityKind,
}

impl IdentityNumber {
    /// Parses `input`, trimmed of surrounding whitespace, as an identity number acceptable under
    /// `policy`. Checks, in order: format, date (and so kind), check digits, policy.
    ///
    /// # Errors
    /// The first check that fails, as an [`IdentityError`] whose message never holds the input.
    pub fn parse(input: &str, policy: SyntheticPolicy) -> Result<Self, IdentityError> {
        let bytes = input.trim().as_bytes();
        if bytes.len() != 11 || !bytes.iter().all(u8::is_ascii_digit) {
            return Err(IdentityError::Format);
        }
        let mut number = Self { digits: [0; 11], kind: IdentityKind::Fodselsnummer };
        number.digits.copy_from_slice(bytes);
        // From here on every early return drops `number`, which zeroes the digits.
        number.kind = number.decode_kind()?;
        if !number.check_digits_valid() {
            return Err(IdentityError::InvalidCheckDigits);
        }
        if policy == SyntheticPolicy::Reject && !number.kind.is_registry_number() {
            return Err(match number.kind {
                IdentityKind::HNumberOrSyntheticNav => IdentityError::HNumberNotAccepted,
                _ => IdentityError::SyntheticNotAccepted,
            });
        }
        Ok(number)
    }

    /// The eleven digits. Named so that every use is visible in review: only pass them on to
    /// encryption, blind indexing or an explicit, audited export.
    #[must_use]
    pub fn expose(&self) -> &str {
        std::str::from_utf8(&self.digits).unwrap_or_default() // always ASCII digits
    }

    /// What kind of number this is.
    #[must_use]
    pub fn kind(&self) -> IdentityKind {
        self.kind
    }

    /// A Skatteetaten Tenor synthetic (month + 80) number for the birth date
    /// `(year, month, day)`, for demos and tests. Individual numbers are tried from `serial`
    /// (wrapping within the classic range for the birth year, so the number also reads right
    /// under the classic century rules) until the classic check digits exist. `None` if the
    /// date is invalid, the year is outside 1854–2039, or no individual number works.
    #[must_use]
    pub fn synthetic(birth: (i32, u32, u32), serial: u32) -> Option<IdentityNumber> {
        let (year, month, day) = birth;
        let calendar_month = u8::try_from(month).ok().and_then(|m| time::Month::try_from(m).ok())?;
        time::Date::from_calendar_date(year, calendar_month, u8::try_from(day).ok()?).ok()?;
        let (first, count): (u32, u32) = match year {
            1854..=1899 => (500, 250),
            1900..=1999 => (0, 500),
            2000..=2039 => (500, 500),
            _ => return None,
        };
        let yy = year.rem_euclid(100) as u32;
        let start = serial % count;
        for step in 0..count {
            let individual = first + (start + step) % count;
            let mut d = [0u32; 11];
            d[..9].copy_from_slice(&[
                day / 10,
                day % 10,
                (month + 80) / 10,
                (month + 80) % 10,
                yy / 10,
                yy % 10,
                individual / 100,
                individual / 10 % 10,
                individual % 10,
            ]);
            let k1 = (11 - weighted(&d[..9], &K1_WEIGHTS) % 11) % 11;
            if k1 == 10 {
                continue;
            }
            d[9] = k1;
            let k2 = (11 - weighted(&d[..10], &K2_WEIGHTS) % 11) % 11;
            if k2 == 10 {
                continue;
            }
            d[10] = k2;
            let text: Option<String> = d.iter().map(|&x| char::from_digit(x, 10)).collect();
            return IdentityNumber::parse(&text?, SyntheticPolicy::Accept).ok();
        }
        None
    }

    fn digit(&self, i: usize) -> u32 {
        u32::from(self.digits[i] - b'0')
    }

    fn two(&self, i: usize) -> u32 {
        self.digit(i) * 10 + self.digit(i + 1)
    }

    /// Reads the kind from the day and month offsets and checks that the date exists.
    fn decode_kind(&self) -> Result<IdentityKind, IdentityError> {
        let (dd, mm, yy) = (self.two(0), self.two(2), self.two(4));
        let (d_number, day) = match dd {
            1..=31 => (false, dd),
            41..=71 => (true, dd - 40),
            _ => return Err(IdentityError::InvalidDate),
        };
        let (offset, month) = match mm {
            1..=12 => (0, mm),
            41..=52 => (40, mm - 40),
            81..=92 => (80, mm - 80),
            _ => return Err(IdentityError::InvalidDate),
        };
        // 29 February exists in some century iff it exists in 20yy (the two year digits
        // divisible by four, "00" thanks to 2000); see the module docs for why the century
        // is not fixed.
        let month = time::Month::try_from(month as u8).map_err(|_| IdentityError::InvalidDate)?;
        if day > u32::from(time::util::days_in_month(month, 2000 + yy as i32)) {
            return Err(IdentityError::InvalidDate);
        }
        Ok(match (offset, d_number) {
            (0, false) => IdentityKind::Fodselsnummer,
            (0, true) => IdentityKind::DNumber,
            (40, false) => IdentityKind::HNumberOrSyntheticNav,
            (40, true) => IdentityKind::SyntheticNavDNumber,
            (_, false) => IdentityKind::SyntheticTenor,
            (_, true) => IdentityKind::SyntheticTenorDNumber,
        })
    }

    /// Classic or post-2032 mod-11 check (see the module docs).
    fn check_digits_valid(&self) -> bool {
        let mut d = [0u32; 11];
        for (i, x) in d.iter_mut().enumerate() {
            *x = self.digit(i);
        }
        let remainder1 = (weighted(&d[..9], &K1_WEIGHTS) + d[9]) % 11;
        let remainder2 = (weighted(&d[..10], &K2_WEIGHTS) + d[10]) % 11;
        d.zeroize();
        remainder1 <= 3 && remainder2 == 0
    }
}

impl fmt::Debug for IdentityNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IdentityNumber(***********)")
    }
}

impl Drop for IdentityNumber {
    fn drop(&mut self) {
        self.digits.zeroize();
    }
}

impl zeroize::ZeroizeOnDrop for IdentityNumber {}

fn weighted(digits: &[u32], weights: &[u32]) -> u32 {
    digits.iter().zip(weights).map(|(d, w)| d * w).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const REJECT: SyntheticPolicy = SyntheticPolicy::Reject;
    const ACCEPT: SyntheticPolicy = SyntheticPolicy::Accept;

    // ---- An independent oracle, written from the Skatteetaten formulas as published ----
    //   k1 = 11 - (S1 mod 11)                       (classic; 11 -> 0, 10 -> invalid)
    //   k1 = {11,12,13,14} - (S1 mod 11)            (from 2032; values >= 11 wrap, 10 invalid)
    //   k2 = 11 - (S2 mod 11), S2 including 2·k1    (unchanged; 11 -> 0, 10 -> invalid)

    fn s1(p: &str) -> u32 {
        let w = [3, 7, 6, 1, 8, 9, 4, 5, 2];
        p.bytes().zip(w).map(|(b, w)| u32::from(b - b'0') * w).sum()
    }

    fn k2_for(p: &str, k1: u32) -> Option<u32> {
        let w = [5, 4, 3, 2, 7, 6, 5, 4, 3];
        let s2: u32 = p.bytes().zip(w).map(|(b, w)| u32::from(b - b'0') * w).sum::<u32>() + 2 * k1;
        match 11 - s2 % 11 {
            11 => Some(0),
            10 => None,
            k => Some(k),
        }
    }

    /// All valid (k1, k2) pairs for a nine-digit prefix, classic first.
    fn oracle_pairs(p: &str) -> Vec<(u32, u32)> {
        let r = s1(p) % 11;
        let mut out = Vec::new();
        for base in [11u32, 12, 13, 14] {
            let k1 = match base - r {
                k if k >= 11 => k - 11,
                k => k,
            };
            if k1 == 10 || out.iter().any(|&(x, _)| x == k1) {
                continue;
            }
            if let Some(k2) = k2_for(p, k1) {
                out.push((k1, k2));
            }
        }
        out
    }

    /// The classic-rule number for a prefix, if one exists.
    fn classic(p: &str) -> Option<String> {
        let k1 = match 11 - s1(p) % 11 {
            11 => 0,
            10 => return None,
            k => k,
        };
        k2_for(p, k1).map(|k2| format!("{p}{k1}{k2}"))
    }

    /// First classic-valid number with this DDMMYY, trying individual numbers from `from`.
    fn first_valid(ddmmyy: &str, from: u32) -> String {
        (from..1000).find_map(|i| classic(&format!("{ddmmyy}{i:03}"))).expect("some individual number works")
    }

    // ---- Oracle sanity: it reproduces the published worked examples ----

    #[test]
    fn oracle_matches_skatteetaten_worked_examples() {
        // "Person født 02.01.2032": prefix 020132 999, classic k1 = 9, k2 = 7.
        assert_eq!(s1("020132999"), 156);
        assert_eq!(oracle_pairs("020132999")[0], (9, 7));
        // "Person 1/2 født 30.10.1982" issued in 2032: k1 = 2 (k2 = 0) and k1 = 3 (k2 = 9).
        assert_eq!(s1("301082999"), 196);
        let pairs = oracle_pairs("301082999");
        assert!(pairs.contains(&(2, 0)), "{pairs:?}");
        assert!(pairs.contains(&(3, 9)), "{pairs:?}");
    }

    // ---- Valid numbers ----

    #[test]
    fn accepts_generated_fodselsnummer_across_centuries() {
        for ddmmyy in ["010100", "150678", "311299", "290200", "290224", "010155", "280239"] {
            let n = first_valid(ddmmyy, 0);
            let id = IdentityNumber::parse(&n, REJECT).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(id.expose(), n);
            assert_eq!(id.kind(), IdentityKind::Fodselsnummer);
            assert!(id.kind().is_registry_number());
        }
    }

    #[test]
    fn trims_surrounding_whitespace_only() {
        let n = first_valid("140307", 500);
        let id = IdentityNumber::parse(&format!(" \t{n}\r\n "), REJECT).unwrap();
        assert_eq!(id.expose(), n);
        let spaced = format!("{} {}", &n[..6], &n[6..]);
        assert_eq!(IdentityNumber::parse(&spaced, REJECT), Err(IdentityError::Format));
        let dashed = format!("{}-{}", &n[..6], &n[6..]);
        assert_eq!(IdentityNumber::parse(&dashed, REJECT), Err(IdentityError::Format));
    }

    #[test]
    fn d_number_accepted_under_both_policies() {
        let n = first_valid("420315", 500); // born 2 March 2015, day + 40
        for policy in [REJECT, ACCEPT] {
            let id = IdentityNumber::parse(&n, policy).unwrap();
            assert_eq!(id.kind(), IdentityKind::DNumber);
            assert!(id.kind().is_d_number());
        }
        // Day 71 (= 31) is the largest D-number day; 72 and 40 are not dates.
        assert!(IdentityNumber::parse(&first_valid("710112", 500), REJECT).is_ok());
        let p72 = first_valid("720112", 500);
        assert_eq!(IdentityNumber::parse(&p72, ACCEPT), Err(IdentityError::InvalidDate));
        let p40 = first_valid("400112", 500);
        assert_eq!(IdentityNumber::parse(&p40, ACCEPT), Err(IdentityError::InvalidDate));
    }

    // ---- Check digits ----

    #[test]
    fn wrong_check_digits_rejected() {
        let n = first_valid("050816", 500);
        let (prefix, k1, k2) = (&n[..9], &n[9..10], &n[10..]);
        for d in 0..10 {
            let k2_wrong = format!("{prefix}{k1}{d}");
            if k2_wrong != n {
                assert_eq!(IdentityNumber::parse(&k2_wrong, REJECT), Err(IdentityError::InvalidCheckDigits));
            }
        }
        assert!(IdentityNumber::parse(&format!("{prefix}{k1}{k2}"), REJECT).is_ok());
        assert_eq!(IdentityNumber::parse("01010100000", REJECT).map(|_| ()), Err(IdentityError::InvalidCheckDigits));
    }

    #[test]
    fn parser_agrees_with_oracle_on_every_check_digit_pair() {
        // Every individual number and every (k1, k2) for a few dates: 400,000 inputs.
        for ddmmyy in ["010100", "290296", "451180", "178512"] {
            for i in 0..1000 {
                let prefix = format!("{ddmmyy}{i:03}");
                let valid = oracle_pairs(&prefix);
                for k1 in 0..10 {
                    for k2 in 0..10 {
                        let n = format!("{prefix}{k1}{k2}");
                        let got = IdentityNumber::parse(&n, ACCEPT);
                        if valid.contains(&(k1, k2)) {
                            assert!(got.is_ok(), "{n} should be valid: {got:?}");
                        } else {
                            assert_eq!(got, Err(IdentityError::InvalidCheckDigits), "{n}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn post_2032_rule_accepts_remainders_one_to_three_only() {
        let mut seen = [false; 4];
        for i in (0..1000).rev() {
            let prefix = format!("070931{i:03}");
            let r = s1(&prefix) % 11;
            for k1 in 0..10u32 {
                let remainder = (r + k1) % 11;
                let Some(k2) = k2_for(&prefix, k1) else {
                    continue;
                };
                let n = format!("{prefix}{k1}{k2}");
                let got = IdentityNumber::parse(&n, REJECT);
                if remainder <= 3 {
                    assert!(got.is_ok(), "remainder {remainder} must be accepted");
                    seen[remainder as usize] = true;
                } else {
                    assert_eq!(got, Err(IdentityError::InvalidCheckDigits));
                }
            }
        }
        assert_eq!(seen, [true; 4]);
    }

    #[test]
    fn post_2032_rule_applies_to_d_numbers_and_pre_2032_births() {
        // A D-number and a 1982 birth, each with a k1 that only the new rule allows.
        for prefix in ["451082999", "301082999", "611299998"] {
            let pairs = oracle_pairs(prefix);
            let new_only: Vec<_> = pairs.iter().skip(usize::from(classic(prefix).is_some())).collect();
            assert!(!new_only.is_empty());
            for &(k1, k2) in new_only {
                let n = format!("{prefix}{k1}{k2}");
                // Keep real-looking digits out of the assertion message.
                assert!(IdentityNumber::parse(&n, REJECT).is_ok());
            }
        }
    }

    // ---- Dates ----

    #[test]
    fn invalid_dates_rejected_even_with_valid_check_digits() {
        for ddmmyy in [
            "310215", // 31 February
            "300216", // 30 February, even in a leap year
            "290223", // 29 February in a year that is never leap
            "290201", // 29 February 1901/2001
            "310415", // 31 April
            "000115", // day 0
            "010015", // month 0
            "011315", // month 13
            "320115", // day 32
            "015315", // month 53
            "019315", // month 93
            "016015", // month 60
            "690215", // D-number for 29 February in a non-leap year
        ] {
            let n = first_valid(ddmmyy, 0);
            for policy in [REJECT, ACCEPT] {
                assert_eq!(IdentityNumber::parse(&n, policy), Err(IdentityError::InvalidDate), "{ddmmyy}");
            }
        }
    }

    #[test]
    fn leap_days_accepted_where_some_century_has_them() {
        for ddmmyy in ["290200", "290204", "290296", "690296", "298212"] {
            let n = first_valid(ddmmyy, 0);
            assert!(IdentityNumber::parse(&n, ACCEPT).is_ok(), "{ddmmyy}");
        }
    }

    // ---- Kinds and policies ----

    #[test]
    fn month_plus_40_is_ambiguous_and_rejected_in_production() {
        let n = first_valid("034518", 0); // 3 May 2018 (month 05 + 40)
        assert_eq!(IdentityNumber::parse(&n, REJECT), Err(IdentityError::HNumberNotAccepted));
        let id = IdentityNumber::parse(&n, ACCEPT).unwrap();
        assert_eq!(id.kind(), IdentityKind::HNumberOrSyntheticNav);
        assert!(id.kind().is_synthetic_or_h_number());

        let d = first_valid("434518", 0); // NAV synthetic D-number
        assert_eq!(IdentityNumber::parse(&d, REJECT), Err(IdentityError::SyntheticNotAccepted));
        let id = IdentityNumber::parse(&d, ACCEPT).unwrap();
        assert_eq!(id.kind(), IdentityKind::SyntheticNavDNumber);
        assert!(id.kind().is_d_number());
    }

    #[test]
    fn tenor_month_plus_80_only_under_accept() {
        let n = first_valid("128516", 500); // 12 May 2016 (month 05 + 80)
        assert_eq!(IdentityNumber::parse(&n, REJECT), Err(IdentityError::SyntheticNotAccepted));
        assert_eq!(IdentityNumber::parse(&n, ACCEPT).unwrap().kind(), IdentityKind::SyntheticTenor);

        let d = first_valid("528516", 500);
        assert_eq!(IdentityNumber::parse(&d, REJECT), Err(IdentityError::SyntheticNotAccepted));
        assert_eq!(IdentityNumber::parse(&d, ACCEPT).unwrap().kind(), IdentityKind::SyntheticTenorDNumber);
    }

    #[test]
    fn invalid_check_digits_reported_before_policy() {
        let n = first_valid("128516", 500);
        let bad = format!("{}{}", &n[..10], (u32::from(n.as_bytes()[10] - b'0') + 1) % 10);
        assert_eq!(IdentityNumber::parse(&bad, REJECT), Err(IdentityError::InvalidCheckDigits));
    }

    #[test]
    fn default_policy_is_reject() {
        assert_eq!(SyntheticPolicy::default(), REJECT);
    }

    // ---- Format ----

    #[test]
    fn non_digits_and_wrong_lengths_rejected() {
        let n = first_valid("010203", 500);
        let cases = [
            String::new(),
            "   ".to_owned(),
            n[..10].to_owned(),
            format!("{n}0"),
            format!("{}a", &n[..10]),
            format!("+{}", &n[..10]),
            format!("{}.{}", &n[..6], &n[7..]),
            format!("{}\0", &n[..10]),
            format!("-{}", &n[1..]),
        ];
        for case in cases {
            assert_eq!(IdentityNumber::parse(&case, ACCEPT), Err(IdentityError::Format));
        }
    }

    #[test]
    fn unicode_digits_rejected() {
        let ascii = first_valid("010203", 500);
        let to = |base: u32| -> String {
            ascii.chars().map(|c| char::from_u32(base + c.to_digit(10).unwrap()).unwrap()).collect()
        };
        // Arabic-Indic, Extended Arabic-Indic, Devanagari and fullwidth digits.
        for base in [0x0660, 0x06F0, 0x0966, 0xFF10] {
            let s = to(base);
            assert!(s.chars().all(char::is_numeric));
            assert_eq!(IdentityNumber::parse(&s, ACCEPT), Err(IdentityError::Format));
        }
        // Nine ASCII digits and one two-byte Arabic-Indic digit: eleven bytes, still no.
        let sneaky = format!("{}\u{0664}", &ascii[..9]);
        assert_eq!(sneaky.len(), 11);
        assert_eq!(IdentityNumber::parse(&sneaky, ACCEPT), Err(IdentityError::Format));
    }

    // ---- No leaks ----

    #[test]
    fn error_messages_contain_no_digits() {
        let valid = first_valid("128516", 500);
        let inputs = [
            "12345".to_owned(),
            first_valid("310215", 0),
            "01010100000".to_owned(),
            valid.clone(),
            first_valid("034518", 0),
        ];
        let mut seen = Vec::new();
        for input in &inputs {
            let err = IdentityNumber::parse(input, REJECT).unwrap_err();
            let message = err.to_string();
            assert!(!message.chars().any(|c| c.is_ascii_digit()), "{message}");
            assert!(!format!("{err:?}").chars().any(|c| c.is_ascii_digit()));
            seen.push(err);
        }
        assert_eq!(
            seen,
            [
                IdentityError::Format,
                IdentityError::InvalidDate,
                IdentityError::InvalidCheckDigits,
                IdentityError::SyntheticNotAccepted,
                IdentityError::HNumberNotAccepted,
            ]
        );
    }

    #[test]
    fn debug_is_redacted() {
        let id = IdentityNumber::parse(&first_valid("010203", 500), REJECT).unwrap();
        assert_eq!(format!("{id:?}"), "IdentityNumber(***********)");
        let wrapped: Result<_, IdentityError> = Ok(Some(id.clone()));
        let text = format!("{wrapped:#?}");
        assert!(!text.chars().any(|c| c.is_ascii_digit()), "{text}");
    }

    // ---- Synthetic generator ----

    #[test]
    fn synthetic_numbers_are_valid_tenor_numbers() {
        let mut seen = std::collections::HashSet::new();
        for (birth, serial) in [
            ((2015, 3, 14), 0),
            ((2015, 3, 14), 100),
            ((2015, 3, 14), 499),
            ((2016, 2, 29), 7),
            ((2000, 2, 29), 0),
            ((1987, 12, 31), 250),
            ((1899, 1, 1), 3),
            ((2039, 6, 30), 1_000_000),
        ] {
            let id = IdentityNumber::synthetic(birth, serial).expect("generated");
            let (y, m, d) = birth;
            let digits = id.expose().to_owned();
            assert_eq!(digits[..6], format!("{:02}{:02}{:02}", d, m + 80, y % 100));
            assert_eq!(id.kind(), IdentityKind::SyntheticTenor);
            assert_eq!(classic(&digits[..9]).as_deref(), Some(digits.as_str()));
            assert_eq!(IdentityNumber::parse(&digits, ACCEPT).unwrap(), id);
            assert_eq!(IdentityNumber::parse(&digits, REJECT), Err(IdentityError::SyntheticNotAccepted));
            // The individual number is in the classic range of the birth year.
            let individual: u32 = digits[6..9].parse().unwrap();
            let ok = match y {
                1854..=1899 => (500..750).contains(&individual),
                1900..=1999 => individual < 500,
                _ => individual >= 500,
            };
            assert!(ok, "individual number out of range for {y}");
            seen.insert(digits);
        }
        assert_eq!(seen.len(), 8);
    }

    #[test]
    fn synthetic_serials_give_distinct_numbers() {
        let all: std::collections::HashSet<_> = (0..100)
            .filter_map(|s| IdentityNumber::synthetic((2014, 8, 1), s))
            .map(|id| id.expose().to_owned())
            .collect();
        assert!(all.len() > 50, "{}", all.len());
    }

    #[test]
    fn synthetic_rejects_impossible_births() {
        for birth in [
            (2015, 2, 29),
            (1900, 2, 29),
            (2015, 13, 1),
            (2015, 0, 1),
            (2015, 4, 31),
            (2015, 1, 0),
            (1853, 1, 1),
            (2040, 1, 1),
            (-5, 1, 1),
        ] {
            assert!(IdentityNumber::synthetic(birth, 0).is_none(), "{birth:?}");
        }
    }
}
