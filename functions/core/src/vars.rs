//! Component configuration. Under Spin the values are the component's own
//! Spin variables (a component can read only those `spin.toml` grants it);
//! the native host resolves the same per-component variables from
//! `spin.toml` and `SPIN_VARIABLE_*` environment variables.

use crate::problem::Problem;
use std::collections::HashMap;

pub trait Variables {
    fn get(&self, name: &str) -> Option<String>;

    /// A required variable; a missing one is an operator error (500), logged
    /// by name only.
    fn require(&self, name: &str) -> Result<String, Problem> {
        self.get(name).filter(|v| !v.is_empty()).ok_or_else(|| {
            eprintln!("error: configuration variable `{name}` is missing");
            Problem::internal()
        })
    }

    /// A numeric variable with a default when unset.
    fn number(&self, name: &str, default: i64) -> Result<i64, Problem> {
        match self.get(name).filter(|v| !v.is_empty()) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|_| {
                eprintln!("error: configuration variable `{name}` is not a number");
                Problem::internal()
            }),
        }
    }

    /// A number that must be above zero (counts, periods).
    fn positive(&self, name: &str, default: i64) -> Result<i64, Problem> {
        let n = self.number(name, default)?;
        if n > 0 {
            Ok(n)
        } else {
            eprintln!("error: configuration variable `{name}` must be positive");
            Err(Problem::internal())
        }
    }
}

impl Variables for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned()
    }
}

/// Spin variables of the running component.
#[cfg(target_arch = "wasm32")]
pub struct SpinVariables;

#[cfg(target_arch = "wasm32")]
impl Variables for SpinVariables {
    fn get(&self, name: &str) -> Option<String> {
        spin_sdk::variables::get(name).ok()
    }
}
