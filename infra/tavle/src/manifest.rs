//! Reads `spin.toml`: routes, application variables and each component's
//! variables, and resolves them the way Spin does, so the native host serves
//! exactly the application that `spin up` would.

use anyhow::{anyhow, bail, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

#[derive(Debug, Clone, serde::Deserialize)]
pub struct AppVariable {
    #[serde(default)]
    pub default: Option<String>,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub secret: bool,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct Component {
    pub source: String,
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
}

#[derive(Debug, Clone, serde::Deserialize)]
struct HttpTrigger {
    route: String,
    component: String,
}

#[derive(Debug, Clone, serde::Deserialize)]
struct Triggers {
    #[serde(default)]
    http: Vec<HttpTrigger>,
}

#[derive(Debug, Clone, serde::Deserialize)]
struct Raw {
    spin_manifest_version: u32,
    #[serde(default)]
    variables: BTreeMap<String, AppVariable>,
    trigger: Triggers,
    component: BTreeMap<String, Component>,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub pattern: String,
    pub component: String,
}

impl Route {
    /// Spin route semantics: `/a/b` matches exactly; `/a/...` matches `/a`
    /// and everything below it.
    pub fn matches(&self, path: &str) -> bool {
        match self.pattern.strip_suffix("/...") {
            Some(prefix) => path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/')),
            None => path == self.pattern,
        }
    }

    fn specificity(&self) -> (bool, usize) {
        (!self.pattern.ends_with("/..."), self.pattern.len())
    }
}

#[derive(Debug, Clone)]
pub struct Manifest {
    pub variables: BTreeMap<String, AppVariable>,
    pub components: BTreeMap<String, Component>,
    pub routes: Vec<Route>,
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Manifest::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Manifest> {
        let raw: Raw = toml::from_str(text).context("parsing spin.toml")?;
        if raw.spin_manifest_version != 2 {
            bail!("spin.toml: only spin_manifest_version = 2 is supported");
        }
        let mut routes = Vec::new();
        for t in raw.trigger.http {
            if !raw.component.contains_key(&t.component) {
                bail!("route {} names unknown component {}", t.route, t.component);
            }
            routes.push(Route { pattern: t.route, component: t.component });
        }
        Ok(Manifest { variables: raw.variables, components: raw.component, routes })
    }

    /// The route that serves `path`: exact routes before wildcards, longer before shorter.
    pub fn route_for(&self, path: &str) -> Option<&Route> {
        self.routes.iter().filter(|r| r.matches(path)).max_by_key(|r| r.specificity())
    }

    /// Application variable values: provided values first (Spin's environment
    /// provider reads SPIN_VARIABLE_<NAME>), then defaults; a missing
    /// required variable is an error, as in `spin up`.
    pub fn resolve_app_variables(&self, provided: &HashMap<String, String>) -> Result<HashMap<String, String>> {
        let mut out = HashMap::new();
        for (name, var) in &self.variables {
            let value = provided.get(name).cloned().or_else(|| var.default.clone());
            match value {
                Some(v) => {
                    out.insert(name.clone(), v);
                }
                None if var.required => {
                    bail!("required variable `{name}` has no value (set SPIN_VARIABLE_{})", name.to_uppercase())
                }
                None => {}
            }
        }
        Ok(out)
    }

    /// One component's variables, with `{{ app_variable }}` templates expanded.
    /// A component sees only these: least privilege, as under Spin.
    pub fn component_variables(
        &self,
        component: &str,
        app: &HashMap<String, String>,
    ) -> Result<HashMap<String, String>> {
        let c = self.components.get(component).ok_or_else(|| anyhow!("unknown component {component}"))?;
        c.variables.iter().map(|(k, template)| Ok((k.clone(), expand(template, app)?))).collect()
    }

    /// `allowed_outbound_hosts` of a component with templates expanded.
    pub fn outbound_hosts(&self, component: &str, app: &HashMap<String, String>) -> Result<Vec<String>> {
        let c = self.components.get(component).ok_or_else(|| anyhow!("unknown component {component}"))?;
        c.allowed_outbound_hosts.iter().map(|h| expand(h, app)).collect()
    }
}

/// Application variables from the environment, as Spin's environment
/// provider reads them.
pub fn variables_from_env() -> HashMap<String, String> {
    std::env::vars().filter_map(|(k, v)| k.strip_prefix("SPIN_VARIABLE_").map(|n| (n.to_lowercase(), v))).collect()
}

fn expand(template: &str, app: &HashMap<String, String>) -> Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("}}").ok_or_else(|| anyhow!("unclosed template in `{template}`"))? + start;
        let name = rest[start + 2..end].trim();
        let value = app.get(name).ok_or_else(|| anyhow!("template refers to undefined variable `{name}`"))?;
        out.push_str(value);
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_routes_follow_spin() {
        let r = Route { pattern: "/auth/...".into(), component: "login".into() };
        assert!(r.matches("/auth"));
        assert!(r.matches("/auth/login"));
        assert!(!r.matches("/authx"));
        assert!(!r.matches("/other/auth"));
    }

    #[test]
    fn templates_expand_and_unknown_names_fail() {
        let app = HashMap::from([("a".to_owned(), "1".to_owned())]);
        assert_eq!(expand("x{{ a }}y", &app).unwrap(), "x1y");
        assert!(expand("{{ b }}", &app).is_err());
    }
}
