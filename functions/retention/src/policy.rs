//! The retention policies of one deployment: defaults, each with a floor and
//! a ceiling that cannot be configured away (README "Retention"). Parsed
//! once from the component's variables; a value outside its bounds is
//! refused with a message that names the variable and the bounds (the native
//! host refuses to start, Spin answers 500 and logs it).

use tavle_core::vars::Variables;

/// One bounded setting: its variable, default and inclusive bounds.
struct Setting {
    name: &'static str,
    default: i64,
    min: i64,
    max: i64,
    why: &'static str,
}

const GRACE: Setting = Setting {
    name: "retention_pupil_grace_days",
    default: 90,
    min: 14,
    max: 180,
    why: "a pupil marked as left is erased after this many days",
};
const FINAL_YEAR: Setting = Setting {
    name: "retention_final_year_level",
    default: 10,
    min: 1,
    max: 13,
    why: "pupils who leave from this year level or above keep a leavers' report",
};
const LEAVER_REPORT: Setting = Setting {
    name: "retention_leaver_report_months",
    default: 12,
    min: 1,
    max: 12,
    why: "leavers' reports are kept at most 12 months (seed 003)",
};
const PSEUDONYMISE: Setting = Setting {
    name: "retention_account_pseudonymise_days",
    default: 30,
    min: 0,
    max: 90,
    why: "a deleted account is pseudonymised within 3 months (seed 001)",
};
const LOGS: Setting = Setting {
    name: "retention_log_months",
    default: 12,
    min: 6,
    max: 120,
    why: "access and audit records are kept at least 6 months (seed 004)",
};
const DELIVERIES: Setting = Setting {
    name: "retention_delivery_days",
    default: 30,
    min: 1,
    max: 90,
    why: "processed webhook ids are kept past the replay window",
};
const BATCH_ROWS: Setting = Setting {
    name: "retention_batch_rows",
    default: 2000,
    min: 1,
    max: 5000,
    why: "rows one batch statement may touch",
};
const RUN_SECONDS: Setting = Setting {
    name: "retention_run_seconds",
    default: 20,
    min: 0,
    max: 55,
    why: "seconds of work per call, within the host's request time limit (0: one batch per call)",
};

/// The scheduler token's minimum length (32 random bytes in base64 are 44).
pub const MIN_TOKEN_LEN: usize = 32;

/// A deployment's policies; only exists within bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policies {
    pub grace_days: i64,
    pub final_year_level: i64,
    pub leaver_report_months: i64,
    pub pseudonymise_days: i64,
    pub log_months: i64,
    pub delivery_days: i64,
    pub batch_rows: i64,
    pub run_seconds: i64,
}

impl Policies {
    /// The policies configured in `vars`, or every setting that is out of
    /// bounds (and a missing or short scheduler token), in one message.
    pub fn from_vars(vars: &impl Variables) -> Result<Policies, String> {
        let mut errors = Vec::new();
        let mut get = |s: &Setting| -> i64 {
            let raw = vars.get(s.name).filter(|v| !v.trim().is_empty());
            match raw.as_deref().map(|v| v.trim().parse::<i64>()) {
                None => s.default,
                Some(Ok(n)) if (s.min..=s.max).contains(&n) => n,
                Some(_) => {
                    errors.push(format!(
                        "`{}` must be a whole number from {} to {} ({}); it is {:?}",
                        s.name,
                        s.min,
                        s.max,
                        s.why,
                        raw.unwrap_or_default()
                    ));
                    s.default
                }
            }
        };
        let policies = Policies {
            grace_days: get(&GRACE),
            final_year_level: get(&FINAL_YEAR),
            leaver_report_months: get(&LEAVER_REPORT),
            pseudonymise_days: get(&PSEUDONYMISE),
            log_months: get(&LOGS),
            delivery_days: get(&DELIVERIES),
            batch_rows: get(&BATCH_ROWS),
            run_seconds: get(&RUN_SECONDS),
        };
        if vars.get("scheduler_token").is_none_or(|t| t.trim().len() < MIN_TOKEN_LEN) {
            errors.push(format!(
                "`scheduler_token` must be set, at least {MIN_TOKEN_LEN} characters (32 random bytes, base64)"
            ));
        }
        if errors.is_empty() {
            Ok(policies)
        } else {
            Err(format!("retention is misconfigured: {}", errors.join("; ")))
        }
    }

    /// As the report shows them.
    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!({
            "pupil_grace_days": self.grace_days,
            "final_year_level": self.final_year_level,
            "leaver_report_months": self.leaver_report_months,
            "account_pseudonymise_days": self.pseudonymise_days,
            "log_months": self.log_months,
            "delivery_days": self.delivery_days,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        let mut v: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        v.entry("scheduler_token".into()).or_insert_with(|| "x".repeat(44));
        v
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let p = Policies::from_vars(&vars(&[])).unwrap();
        assert_eq!((p.grace_days, p.leaver_report_months, p.pseudonymise_days, p.log_months), (90, 12, 30, 12));
        assert_eq!((p.final_year_level, p.delivery_days, p.batch_rows, p.run_seconds), (10, 30, 2000, 20));
    }

    #[test]
    fn floors_and_ceilings_cannot_be_configured_away() {
        for (name, bad) in [
            ("retention_log_months", "5"),
            ("retention_log_months", "121"),
            ("retention_leaver_report_months", "13"),
            ("retention_account_pseudonymise_days", "91"),
            ("retention_account_pseudonymise_days", "-1"),
            ("retention_pupil_grace_days", "13"),
            ("retention_pupil_grace_days", "365"),
            ("retention_delivery_days", "0"),
            ("retention_batch_rows", "5001"),
            ("retention_run_seconds", "56"),
            ("retention_final_year_level", "14"),
            ("retention_log_months", "twelve"),
        ] {
            let err = Policies::from_vars(&vars(&[(name, bad)])).unwrap_err();
            assert!(err.contains(name) && err.contains("from"), "{name}={bad}: {err}");
        }
        let ok =
            Policies::from_vars(&vars(&[("retention_log_months", "6"), ("retention_account_pseudonymise_days", "90")]));
        assert_eq!(ok.map(|p| (p.log_months, p.pseudonymise_days)), Ok((6, 90)));
    }

    #[test]
    fn every_error_is_named_at_once_and_a_weak_token_is_refused() {
        let mut v = vars(&[("retention_log_months", "1"), ("retention_leaver_report_months", "24")]);
        v.insert("scheduler_token".into(), "short".into());
        let err = Policies::from_vars(&v).unwrap_err();
        for name in ["retention_log_months", "retention_leaver_report_months", "scheduler_token"] {
            assert!(err.contains(name), "{err}");
        }
        assert!(!err.contains("short"), "the token's value must not be in the message: {err}");
    }
}
