//! Offline checks of the Kubernetes deployment in `infra/k8s/` against `spin.toml`.
//!
//! * every manifest parses as YAML and has the fields Kubernetes (and the CRDs used)
//!   require; no raw `Secret` is committed; `kustomization.yaml` lists every file;
//! * the `SpinApp` binds exactly the variables `spin.toml` declares: every application
//!   variable, and every variable a component (or `allowed_outbound_hosts`) refers to,
//!   is provided, nothing undeclared is; secret variables come from a Secret that an
//!   `ExternalSecret` (Azure Key Vault) materialises, never from a literal or ConfigMap;
//! * every Secret/ConfigMap key referenced exists in the manifests, and the Secret the
//!   app reads holds only Spin variables;
//! * no Spin runtime config pretends to protect PostgreSQL: `[[client_tls]]` applies
//!   to Spin's outbound HTTP only, so an entry for the database host or for a component
//!   that talks to PostgreSQL (and makes no outbound HTTP) is refused;
//! * every documented `db_url` (comments in `infra/k8s`, `infra/README.md`, `README.md`)
//!   passes `tavle_core::db::check_db_url`, names `sslmode=require` and the server by
//!   name, and every documented migration URL (sqlx) uses `sslmode=verify-full`;
//! * NetworkPolicies: default deny; the app may leave only to the database subnet on
//!   5432 (the same CIDR as `infra/terraform`) and to cluster DNS;
//! * retention: `spin.toml` routes `/internal/retention/...` exactly when a CronJob calls
//!   `POST /internal/retention/run`; that CronJob is active, calls again while the run
//!   report says `"more_remaining":true`, reads its token from the mounted secret file
//!   and hands it to curl on standard input (never argv, never the environment); its
//!   token key is a secret variable of the retention component, from the same Key Vault
//!   secret the SpinApp binds; the component's `db_url` is its own secret variable
//!   (`retention_db_url`), from a Key Vault secret other than the app's `db_url`;
//! * the systemd timer for self-hosted Spin (`infra/systemd/`): the units have their
//!   schedule, credential and hardening settings and nothing that would put the token
//!   into the environment, and the script is the CronJob's script (`systemd-analyze
//!   verify`/`security` when available);
//! * both scheduler scripts run against a fake endpoint on 127.0.0.1: they loop on
//!   `more_remaining` up to their bound, dry-run once, exit with the documented status
//!   on 409/401/failed, and the token is in no process's command line or environment.
//!
//! The negative tests run the same checker on in-memory variants of the real files
//! to prove that each rule can fail.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Namespace every namespaced object must live in.
const NAMESPACE: &str = "tavle";
/// Route prefix served by the retention component (its scheduler calls `.../run`).
const RETENTION_ROUTE: &str = "/internal/retention";
/// Annotation that marked the retention CronJob as an inactive template (before the
/// component existed); an active CronJob must not carry it.
const INACTIVE_ANNOTATION: &str = "tavle/inactive-until";
/// What a run report says while work is left (the scheduler calls again).
const MORE_REMAINING: &str = "\"more_remaining\":true";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `infra/k8s/*.yaml` as (file name, contents), sorted by name.
fn load_manifests() -> Vec<(String, String)> {
    let dir = repo_root().join("infra/k8s");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| matches!(p.extension().and_then(|x| x.to_str()), Some("yaml" | "yml")))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
            (name, text)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    files
}

fn load_spin_toml() -> String {
    let p = repo_root().join("spin.toml");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

// ---------------------------------------------------------------------------------
// spin.toml model
// ---------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct SpinVar {
    secret: bool,
}

#[derive(Debug, Default)]
struct Spin {
    /// `[variables]`
    vars: BTreeMap<String, SpinVar>,
    /// component -> variables it refers to (through its variables and outbound hosts)
    component_refs: BTreeMap<String, BTreeSet<String>>,
    /// component -> its own variable name -> the application variables its value uses
    component_vars: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    /// components with a `postgres://` outbound host
    pg_components: BTreeSet<String>,
    /// components with an HTTP(S) outbound host (the only ones `[[client_tls]]` can concern)
    http_components: BTreeSet<String>,
    /// `[[trigger.http]]` routes and the component serving each
    routes: Vec<(String, String)>,
}

/// Names inside `{{ name }}` of a Spin template string.
fn template_refs(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        out.push(after[..end].trim().to_string());
        rest = &after[end + 2..];
    }
    out
}

fn parse_spin(text: &str) -> Result<Spin, String> {
    let doc: toml::Table = text.parse().map_err(|e| format!("spin.toml: TOML parse error: {e}"))?;
    let mut spin = Spin::default();
    if let Some(vars) = doc.get("variables").and_then(|v| v.as_table()) {
        for (name, def) in vars {
            let secret = def.get("secret").and_then(|s| s.as_bool()).unwrap_or(false);
            spin.vars.insert(name.clone(), SpinVar { secret });
        }
    }
    if let Some(components) = doc.get("component").and_then(|v| v.as_table()) {
        for (id, comp) in components {
            let mut refs = BTreeSet::new();
            let mut own = BTreeMap::new();
            if let Some(vars) = comp.get("variables").and_then(|v| v.as_table()) {
                for (name, value) in vars {
                    if let Some(s) = value.as_str() {
                        refs.extend(template_refs(s));
                        own.insert(name.clone(), template_refs(s));
                    }
                }
            }
            spin.component_vars.insert(id.clone(), own);
            if let Some(hosts) = comp.get("allowed_outbound_hosts").and_then(|v| v.as_array()) {
                for h in hosts.iter().filter_map(|h| h.as_str()) {
                    refs.extend(template_refs(h));
                    if h.starts_with("postgres://") {
                        spin.pg_components.insert(id.clone());
                    }
                    if ["http://", "https://", "*://"].iter().any(|s| h.starts_with(s)) {
                        spin.http_components.insert(id.clone());
                    }
                }
            }
            spin.component_refs.insert(id.clone(), refs);
        }
    }
    if let Some(http) = doc.get("trigger").and_then(|t| t.get("http")).and_then(|h| h.as_array()) {
        for t in http {
            if let Some(r) = t.get("route").and_then(|r| r.as_str()) {
                let component = t.get("component").and_then(|c| c.as_str()).unwrap_or("");
                spin.routes.push((r.to_string(), component.to_string()));
            }
        }
    }
    Ok(spin)
}

// ---------------------------------------------------------------------------------
// YAML helpers
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Doc {
    file: String,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }
    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }
    fn id(&self) -> String {
        format!("{}: {} {:?}", self.file, self.kind(), self.name())
    }
}

/// Split a YAML stream into documents on `---` lines and parse each one.
fn parse_yaml_stream(file: &str, text: &str, problems: &mut Vec<String>) -> Vec<Doc> {
    let mut chunks = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" || line.starts_with("--- ") {
            chunks.push(String::new());
        } else {
            let last = chunks.last_mut().unwrap();
            last.push_str(line);
            last.push('\n');
        }
    }
    let mut docs = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        match serde_yaml_ng::from_str::<Value>(chunk) {
            Ok(Value::Null) => {} // empty document (comments only)
            Ok(value @ Value::Object(_)) => docs.push(Doc { file: file.to_string(), value }),
            Ok(other) => problems.push(format!("{file}: document {} is not a mapping: {other}", i + 1)),
            Err(e) => problems.push(format!("{file}: YAML parse error in document {}: {e}", i + 1)),
        }
    }
    docs
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str().filter(|s| !s.is_empty())
}

fn is_dns1123(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Azure Key Vault secret names: 1-127 characters, letters, digits and dashes.
fn is_key_vault_name(s: &str) -> bool {
    (1..=127).contains(&s.len()) && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// Pod spec of a workload kind (Job, CronJob, Deployment, ...).
fn pod_spec(doc: &Doc) -> Option<&Value> {
    let v = &doc.value;
    match doc.kind() {
        "Job" | "Deployment" | "StatefulSet" | "DaemonSet" => v.pointer("/spec/template/spec"),
        "CronJob" => v.pointer("/spec/jobTemplate/spec/template/spec"),
        "Pod" => v.get("spec"),
        _ => None,
    }
}

/// (secret name, key) pairs a pod spec reads through env/envFrom/volumes.
fn pod_secret_refs(spec: &Value) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    for list in ["containers", "initContainers"] {
        for c in spec.get(list).and_then(|c| c.as_array()).into_iter().flatten() {
            for e in c.get("env").and_then(|e| e.as_array()).into_iter().flatten() {
                if let (Some(n), Some(k)) = (
                    str_at(e, &["valueFrom", "secretKeyRef", "name"]),
                    str_at(e, &["valueFrom", "secretKeyRef", "key"]),
                ) {
                    out.push((n.to_string(), Some(k.to_string())));
                }
            }
            for e in c.get("envFrom").and_then(|e| e.as_array()).into_iter().flatten() {
                if let Some(n) = str_at(e, &["secretRef", "name"]) {
                    out.push((n.to_string(), None));
                }
            }
        }
    }
    for vol in spec.get("volumes").and_then(|v| v.as_array()).into_iter().flatten() {
        if let Some(n) = str_at(vol, &["secret", "secretName"]) {
            // A volume that names its keys (`items`) reads exactly those.
            let keys: Vec<&str> = vol
                .pointer("/secret/items")
                .and_then(|i| i.as_array())
                .into_iter()
                .flatten()
                .filter_map(|i| str_at(i, &["key"]))
                .collect();
            if keys.is_empty() {
                out.push((n.to_string(), None));
            }
            out.extend(keys.into_iter().map(|k| (n.to_string(), Some(k.to_string()))));
        }
    }
    out
}

fn containers_text(spec: &Value) -> String {
    spec.get("containers").map(|c| c.to_string()).unwrap_or_default()
}

// ---------------------------------------------------------------------------------
// The checker
// ---------------------------------------------------------------------------------

/// Checks the deployment manifests against `spin.toml`. Returns every problem found
/// (empty = consistent). `tf_db_subnet_cidr` is the database subnet from
/// `infra/terraform`, when known.
fn check_deployment(spin_toml: &str, files: &[(String, String)], tf_db_subnet_cidr: Option<&str>) -> Vec<String> {
    let mut problems = Vec::new();
    let spin = match parse_spin(spin_toml) {
        Ok(s) => s,
        Err(e) => return vec![e],
    };

    // --- parse, required fields --------------------------------------------------
    let mut docs = Vec::new();
    for (file, text) in files {
        docs.extend(parse_yaml_stream(file, text, &mut problems));
    }
    let mut seen = BTreeSet::new();
    for d in &docs {
        let v = &d.value;
        if str_at(v, &["apiVersion"]).is_none() {
            problems.push(format!("{}: missing apiVersion", d.file));
        }
        if str_at(v, &["kind"]).is_none() {
            problems.push(format!("{}: missing kind", d.file));
            continue;
        }
        if d.kind() == "Kustomization" {
            continue;
        }
        if !is_dns1123(d.name()) {
            problems.push(format!("{}: metadata.name {:?} missing or not a DNS-1123 name", d.id(), d.name()));
        }
        let ns = str_at(v, &["metadata", "namespace"]);
        if d.kind() == "Namespace" {
            if d.name() != NAMESPACE {
                problems.push(format!("{}: expected Namespace {NAMESPACE:?}", d.id()));
            }
        } else if ns != Some(NAMESPACE) {
            problems.push(format!("{}: metadata.namespace must be {NAMESPACE:?}, is {ns:?}", d.id()));
        }
        if !seen.insert((d.kind().to_string(), d.name().to_string())) {
            problems.push(format!("{}: duplicate object", d.id()));
        }
        let require = |problems: &mut Vec<String>, path: &str| {
            if v.pointer(path).is_none_or(|x| x.is_null() || x.as_str() == Some("")) {
                problems.push(format!("{}: missing {path}", d.id()));
            }
        };
        match d.kind() {
            "Secret" => problems.push(format!(
                "{}: Secrets must not be committed; declare an ExternalSecret (Azure Key Vault) instead",
                d.id()
            )),
            "SpinApp" => {
                if str_at(v, &["apiVersion"]) != Some("core.spinkube.dev/v1alpha1") {
                    problems.push(format!("{}: apiVersion must be core.spinkube.dev/v1alpha1", d.id()));
                }
                for p in ["/spec/image", "/spec/executor"] {
                    require(&mut problems, p);
                }
                if !v.pointer("/spec/variables").is_some_and(|x| x.is_array()) {
                    problems.push(format!("{}: spec.variables must be a list", d.id()));
                }
            }
            "ExternalSecret" => {
                for p in ["/spec/secretStoreRef/name", "/spec/target/name"] {
                    require(&mut problems, p);
                }
                let data = v.pointer("/spec/data").and_then(|x| x.as_array());
                if data.is_none_or(|a| a.is_empty()) {
                    problems.push(format!("{}: spec.data must list the Key Vault secrets", d.id()));
                }
                let mut keys = BTreeSet::new();
                for item in data.into_iter().flatten() {
                    let sk = str_at(item, &["secretKey"]).unwrap_or("");
                    let rk = str_at(item, &["remoteRef", "key"]).unwrap_or("");
                    if sk.is_empty() || !keys.insert(sk) {
                        problems.push(format!("{}: data secretKey {sk:?} missing or duplicated", d.id()));
                    }
                    if !is_key_vault_name(rk) {
                        problems.push(format!("{}: remoteRef.key {rk:?} is not a valid Key Vault secret name", d.id()));
                    }
                }
            }
            "SecretStore" | "ClusterSecretStore" => {
                require(&mut problems, "/spec/provider/azurekv/vaultUrl");
                let url = str_at(v, &["spec", "provider", "azurekv", "vaultUrl"]).unwrap_or("");
                if !(url.starts_with("https://") && url.trim_end_matches('/').ends_with(".vault.azure.net")) {
                    problems.push(format!(
                        "{}: vaultUrl must be an Azure Key Vault URL (https://<name>.vault.azure.net)",
                        d.id()
                    ));
                }
            }
            "NetworkPolicy" => {
                if !v.pointer("/spec/podSelector").is_some_and(|x| x.is_object()) {
                    problems.push(format!("{}: missing spec.podSelector", d.id()));
                }
                if !v.pointer("/spec/policyTypes").is_some_and(|x| x.is_array()) {
                    problems.push(format!("{}: missing spec.policyTypes", d.id()));
                }
            }
            "ConfigMap" => {
                for (k, val) in v.get("data").and_then(|x| x.as_object()).into_iter().flatten() {
                    if !val.is_string() {
                        problems.push(format!("{}: data.{k} must be a string (quote it)", d.id()));
                    }
                }
            }
            "CronJob" => require(&mut problems, "/spec/schedule"),
            _ => {}
        }
        if let Some(spec) = pod_spec(d) {
            let containers = spec.get("containers").and_then(|c| c.as_array());
            if containers.is_none_or(|c| c.is_empty()) {
                problems.push(format!("{}: pod template has no containers", d.id()));
            }
            for c in containers.into_iter().flatten() {
                if str_at(c, &["name"]).is_none() || str_at(c, &["image"]).is_none() {
                    problems.push(format!("{}: every container needs a name and an image", d.id()));
                }
            }
            if matches!(d.kind(), "Job" | "CronJob")
                && !matches!(str_at(spec, &["restartPolicy"]), Some("Never" | "OnFailure"))
            {
                problems.push(format!("{}: restartPolicy must be Never or OnFailure", d.id()));
            }
        }
    }

    // --- kustomization lists every file ----------------------------------------------
    let kustomizations: Vec<&Doc> = docs.iter().filter(|d| d.kind() == "Kustomization").collect();
    if kustomizations.len() != 1 {
        problems.push(format!("expected one kustomization.yaml, found {}", kustomizations.len()));
    }
    for k in &kustomizations {
        let listed: BTreeSet<String> = k.value["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_str().map(str::to_string))
            .collect();
        let present: BTreeSet<String> = files.iter().map(|(f, _)| f.clone()).filter(|f| *f != k.file).collect();
        for f in present.difference(&listed) {
            problems.push(format!("{}: {f} is not listed in resources", k.file));
        }
        for f in listed.difference(&present) {
            problems.push(format!("{}: resource {f} does not exist", k.file));
        }
    }

    // --- what the manifests produce -----------------------------------------------
    // Secret name -> keys, for Secrets materialised by ExternalSecrets.
    let mut secrets: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let stores: BTreeSet<&str> = docs.iter().filter(|d| d.kind() == "SecretStore").map(|d| d.name()).collect();
    let service_accounts: BTreeSet<&str> =
        docs.iter().filter(|d| d.kind() == "ServiceAccount").map(|d| d.name()).collect();
    for d in docs.iter().filter(|d| d.kind() == "SecretStore") {
        if let Some(sa) = str_at(&d.value, &["spec", "provider", "azurekv", "serviceAccountRef", "name"]) {
            if !service_accounts.contains(sa) {
                problems.push(format!("{}: serviceAccountRef {sa:?} is not defined", d.id()));
            }
        }
    }
    let mut es_by_target: BTreeMap<String, &Doc> = BTreeMap::new();
    // (Secret, key) -> the Key Vault secret an ExternalSecret fills it from.
    let mut es_remote: BTreeMap<(String, String), String> = BTreeMap::new();
    for d in docs.iter().filter(|d| d.kind() == "ExternalSecret") {
        let v = &d.value;
        if let Some(store) = str_at(v, &["spec", "secretStoreRef", "name"]) {
            if str_at(v, &["spec", "secretStoreRef", "kind"]) != Some("ClusterSecretStore") && !stores.contains(store) {
                problems.push(format!("{}: secretStoreRef {store:?} is not defined", d.id()));
            }
        }
        let target = str_at(v, &["spec", "target", "name"]).unwrap_or(d.name()).to_string();
        let templated = v.pointer("/spec/target/template/data").and_then(|t| t.as_object());
        let keys: BTreeSet<String> = match templated {
            Some(t) => t.keys().cloned().collect(),
            None => v["spec"]["data"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["secretKey"].as_str().map(str::to_string))
                .collect(),
        };
        if templated.is_none() {
            for item in v["spec"]["data"].as_array().into_iter().flatten() {
                if let (Some(sk), Some(rk)) = (str_at(item, &["secretKey"]), str_at(item, &["remoteRef", "key"])) {
                    es_remote.insert((target.clone(), sk.to_string()), rk.to_string());
                }
            }
        }
        if es_by_target.insert(target.clone(), d).is_some() {
            problems.push(format!("{}: another ExternalSecret already writes Secret {target:?}", d.id()));
        }
        secrets.insert(target, keys);
    }
    let mut config_maps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for d in docs.iter().filter(|d| d.kind() == "ConfigMap") {
        let keys = d.value["data"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
        config_maps.insert(d.name().to_string(), keys);
    }
    let check_secret_ref = |problems: &mut Vec<String>, who: &str, name: &str, key: Option<&str>| match secrets
        .get(name)
    {
        None => problems.push(format!("{who}: Secret {name:?} is not produced by any ExternalSecret in infra/k8s")),
        Some(keys) => {
            if let Some(k) = key {
                if !keys.contains(k) {
                    problems
                        .push(format!("{who}: Secret {name:?} has no key {k:?} (ExternalSecret provides {keys:?})"));
                }
            }
        }
    };

    // --- SpinApp variables vs spin.toml ----------------------------------------------
    let spinapps: Vec<&Doc> = docs.iter().filter(|d| d.kind() == "SpinApp").collect();
    if spinapps.len() != 1 {
        problems.push(format!("expected exactly one SpinApp, found {}", spinapps.len()));
    }
    for (component, refs) in &spin.component_refs {
        for r in refs.iter().filter(|r| !spin.vars.contains_key(*r)) {
            problems.push(format!(
                "spin.toml: component {component:?} uses {{{{ {r} }}}}, which [variables] does not declare"
            ));
        }
    }
    // Variable -> (Secret, key) it is bound from (secretKeyRef), for the retention rules.
    let mut app_bindings: BTreeMap<String, (String, String)> = BTreeMap::new();
    for app in &spinapps {
        let who = app.id();
        let mut provided: BTreeMap<String, &Value> = BTreeMap::new();
        let mut app_secrets: BTreeSet<String> = BTreeSet::new();
        for var in app.value.pointer("/spec/variables").and_then(|v| v.as_array()).into_iter().flatten() {
            let Some(name) = str_at(var, &["name"]) else {
                problems.push(format!("{who}: variable entry without a name"));
                continue;
            };
            if provided.insert(name.to_string(), var).is_some() {
                problems.push(format!("{who}: variable {name:?} is bound twice"));
            }
            let Some(decl) = spin.vars.get(name) else {
                problems
                    .push(format!("{who}: provides variable {name:?}, which spin.toml [variables] does not declare"));
                continue;
            };
            let has_value = var.get("value").is_some_and(|x| !x.is_null());
            let from = var.get("valueFrom");
            if has_value == from.is_some() {
                problems.push(format!("{who}: variable {name:?} needs exactly one of value / valueFrom"));
            }
            if let Some(value) = var.get("value") {
                if !value.is_string() {
                    problems.push(format!("{who}: variable {name:?}: value must be a string"));
                }
            }
            let sref = from.and_then(|f| f.get("secretKeyRef"));
            let cref = from.and_then(|f| f.get("configMapKeyRef"));
            if decl.secret && sref.is_none() {
                problems.push(format!(
                    "{who}: {name:?} is secret in spin.toml and must come from valueFrom.secretKeyRef (Key Vault via ExternalSecret), not a literal or ConfigMap"
                ));
            }
            if let Some(s) = sref {
                let (sn, sk) = (str_at(s, &["name"]).unwrap_or(""), str_at(s, &["key"]).unwrap_or(""));
                check_secret_ref(&mut problems, &format!("{who}: variable {name:?}"), sn, Some(sk));
                app_secrets.insert(sn.to_string());
                app_bindings.insert(name.to_string(), (sn.to_string(), sk.to_string()));
            } else if let Some(c) = cref {
                let (cn, ck) = (str_at(c, &["name"]).unwrap_or(""), str_at(c, &["key"]).unwrap_or(""));
                match config_maps.get(cn) {
                    None => problems.push(format!("{who}: variable {name:?}: ConfigMap {cn:?} is not defined")),
                    Some(keys) if !keys.contains(ck) => {
                        problems.push(format!("{who}: variable {name:?}: ConfigMap {cn:?} has no key {ck:?}"))
                    }
                    _ => {}
                }
            } else if from.is_some() {
                problems.push(format!("{who}: variable {name:?}: only secretKeyRef or configMapKeyRef are allowed"));
            }
        }
        // Every declared application variable and every variable a component uses.
        let mut needed: BTreeMap<&str, Vec<&str>> = spin.vars.keys().map(|k| (k.as_str(), vec![])).collect();
        for (component, refs) in &spin.component_refs {
            for r in refs {
                needed.entry(r.as_str()).or_default().push(component.as_str());
            }
        }
        for (name, users) in &needed {
            if !provided.contains_key(*name) {
                let users = if users.is_empty() { String::new() } else { format!(" (used by component(s) {users:?})") };
                problems.push(format!(
                    "spin.toml declares variable {name:?}{users} but {} does not provide it: add it to spec.variables (secret -> ExternalSecret + secretKeyRef, otherwise ConfigMap)",
                    app.file
                ));
            }
        }
        // The Secrets the app reads hold Spin variables only, and nothing unused.
        for s in &app_secrets {
            for key in secrets.get(s).into_iter().flatten() {
                if !spin.vars.contains_key(key) {
                    problems.push(format!(
                        "Secret {s:?} (read by the SpinApp) holds {key:?}, which is not a spin.toml variable"
                    ));
                } else if !provided.values().any(|v| {
                    str_at(v, &["valueFrom", "secretKeyRef", "name"]) == Some(s.as_str())
                        && str_at(v, &["valueFrom", "secretKeyRef", "key"]) == Some(key.as_str())
                }) {
                    problems.push(format!("Secret {s:?} holds {key:?} but the SpinApp never binds it"));
                }
            }
        }

        // Runtime config, if any: a Secret that an ExternalSecret templates with runtime-config.toml.
        if let Some(rc) = str_at(&app.value, &["spec", "runtimeConfig", "loadFromSecret"]) {
            match es_by_target.get(rc) {
                None => {
                    problems.push(format!("{who}: runtimeConfig secret {rc:?} is not produced by an ExternalSecret"))
                }
                Some(es) => match str_at(&es.value, &["spec", "target", "template", "data", "runtime-config.toml"]) {
                    None => problems.push(format!("{}: must template the key runtime-config.toml", es.id())),
                    Some(toml_text) => {
                        if let Err(e) = toml_text.parse::<toml::Table>() {
                            problems.push(format!("{}: runtime-config.toml is not TOML: {e}", es.id()));
                        }
                    }
                },
            }
        }
    }

    // --- runtime configs: no [[client_tls]] for PostgreSQL -------------------------------
    // Key Vault secrets that hold the database host (what `db_host` is read from).
    let db_host_remote_keys: BTreeSet<&str> = docs
        .iter()
        .filter(|d| d.kind() == "ExternalSecret")
        .flat_map(|d| d.value["spec"]["data"].as_array().into_iter().flatten())
        .filter(|i| i["secretKey"].as_str() == Some("db_host"))
        .filter_map(|i| str_at(i, &["remoteRef", "key"]))
        .collect();
    for d in &docs {
        let (texts, db_host_vars) = match d.kind() {
            "ExternalSecret" => {
                // Template variables ({{ .name }}) that stand for the database host.
                let vars: BTreeSet<String> = d.value["spec"]["data"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|i| {
                        i["secretKey"].as_str() == Some("db_host")
                            || str_at(i, &["remoteRef", "key"]).is_some_and(|k| db_host_remote_keys.contains(k))
                    })
                    .filter_map(|i| i["secretKey"].as_str().map(str::to_string))
                    .collect();
                (d.value.pointer("/spec/target/template/data").and_then(|t| t.as_object()), vars)
            }
            "ConfigMap" => (d.value.get("data").and_then(|t| t.as_object()), BTreeSet::new()),
            _ => continue,
        };
        for (key, text) in texts.into_iter().flatten() {
            let Some(text) = text.as_str().filter(|_| key.ends_with(".toml")) else { continue };
            let Ok(rt) = text.parse::<toml::Table>() else { continue };
            let who = format!("{} ({key})", d.id());
            problems.extend(client_tls_problems(&who, &rt, &db_host_vars, &spin));
        }
    }

    // --- other workloads: the secrets they read exist; the retention scheduler -------
    for d in &docs {
        let Some(spec) = pod_spec(d) else { continue };
        for (name, key) in &pod_secret_refs(spec) {
            check_secret_ref(&mut problems, &d.id(), name, key.as_deref());
        }
    }
    problems.extend(retention_problems(&spin, &docs, &es_remote, &app_bindings));

    // --- NetworkPolicies ---------------------------------------------------------------
    let policies: Vec<&Doc> = docs.iter().filter(|d| d.kind() == "NetworkPolicy").collect();
    let default_deny = policies.iter().any(|p| {
        let v = &p.value;
        v.pointer("/spec/podSelector").is_some_and(|s| s.as_object().is_some_and(|o| o.is_empty()))
            && v.pointer("/spec/ingress").is_none()
            && v.pointer("/spec/egress").is_none()
            && ["Ingress", "Egress"].iter().all(|t| {
                v.pointer("/spec/policyTypes").and_then(|a| a.as_array()).is_some_and(|a| a.iter().any(|x| x == t))
            })
    });
    if !default_deny {
        problems
            .push("networkpolicy: a default-deny policy (podSelector {}, Ingress+Egress, no rules) is required".into());
    }
    for app in &spinapps {
        let selecting: Vec<&&Doc> = policies
            .iter()
            .filter(|p| {
                p.value.pointer("/spec/podSelector/matchLabels/core.spinkube.dev~1app-name").and_then(|x| x.as_str())
                    == Some(app.name())
            })
            .collect();
        if selecting.is_empty() {
            problems.push(format!(
                "no NetworkPolicy selects the SpinApp pods (core.spinkube.dev/app-name: {})",
                app.name()
            ));
        }
        for p in selecting {
            let v = &p.value;
            let types = v.pointer("/spec/policyTypes").map(|t| t.to_string()).unwrap_or_default();
            if !types.contains("Egress") || !types.contains("Ingress") {
                problems.push(format!("{}: must restrict both Ingress and Egress", p.id()));
            }
            let mut db_rule = false;
            for rule in v.pointer("/spec/egress").and_then(|e| e.as_array()).into_iter().flatten() {
                let ports: Vec<(String, i64)> = rule["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| (p["protocol"].as_str().unwrap_or("TCP").to_string(), p["port"].as_i64().unwrap_or(-1)))
                    .collect();
                let to = rule["to"].as_array().cloned().unwrap_or_default();
                if ports.is_empty() || to.is_empty() {
                    problems.push(format!("{}: every egress rule needs explicit `to` and `ports`", p.id()));
                    continue;
                }
                let dns = ports.iter().all(|(_, port)| *port == 53)
                    && to.iter().all(|t| t.get("podSelector").is_some() && t.get("ipBlock").is_none());
                let db = ports.iter().all(|(proto, port)| proto == "TCP" && *port == 5432)
                    && to.iter().all(|t| t.get("ipBlock").is_some());
                if db {
                    db_rule = true;
                    for t in &to {
                        let cidr = t["ipBlock"]["cidr"].as_str().unwrap_or("");
                        if cidr.ends_with("/0") || cidr.is_empty() {
                            problems.push(format!(
                                "{}: database egress must name the database subnet, not {cidr:?}",
                                p.id()
                            ));
                        }
                        if let Some(tf) = tf_db_subnet_cidr {
                            if cidr != tf {
                                problems.push(format!(
                                    "{}: database egress CIDR {cidr} differs from infra/terraform db_subnet_cidr {tf}",
                                    p.id()
                                ));
                            }
                        }
                    }
                } else if !dns {
                    problems.push(format!(
                        "{}: egress allows {ports:?} to {to:?}; only the database (TCP 5432) and cluster DNS (53) are allowed",
                        p.id()
                    ));
                }
            }
            if !db_rule {
                problems.push(format!("{}: no egress rule to the database subnet on TCP 5432", p.id()));
            }
            for rule in v.pointer("/spec/ingress").and_then(|e| e.as_array()).into_iter().flatten() {
                if rule["from"].as_array().is_none_or(|a| a.is_empty() || a.iter().any(|f| f.get("ipBlock").is_some()))
                {
                    problems.push(format!("{}: ingress must come from named namespaces/pods only", p.id()));
                }
            }
        }
    }

    problems
}

// ---------------------------------------------------------------------------------
// Retention scheduling: the CronJob, the systemd units, the script they share
// ---------------------------------------------------------------------------------

/// The strings of a container's `command` and `args`: its script, for `sh -c`.
fn container_script(c: &Value) -> String {
    ["command", "args"]
        .iter()
        .flat_map(|k| c.get(*k).and_then(|a| a.as_array()).into_iter().flatten())
        .filter_map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A shell script without its comment lines.
fn script_code(script: &str) -> String {
    script.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>().join("\n")
}

/// What every scheduler script must do, whoever runs it: call again while the report
/// says `"more_remaining":true`, and hand the token to curl on standard input only.
fn scheduler_script_problems(who: &str, script: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let script = &script_code(script);
    if !(script.contains(MORE_REMAINING) && script.contains("while ")) {
        problems.push(format!(
            "{who}: must call again while the run report says {MORE_REMAINING} (a loop with a bound on the number of calls)"
        ));
    }
    if !script.contains("--config -") {
        problems.push(format!(
            "{who}: must hand the token to curl on standard input (`curl --config -`), never as an argument"
        ));
    }
    for line in script.lines().map(str::trim) {
        let on_curl_line = line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')).any(|w| w == "curl");
        let token_flag =
            ["Authorization", "Bearer", "--oauth2-bearer", "--user ", " -u "].iter().any(|f| line.contains(f));
        if on_curl_line && token_flag {
            problems
                .push(format!("{who}: puts the token on curl's command line, where ps and /proc show it: {line:?}"));
        }
    }
    problems
}

/// Rules for the retention component's scheduling and its secrets.
fn retention_problems(
    spin: &Spin,
    docs: &[Doc],
    es_remote: &BTreeMap<(String, String), String>,
    app_bindings: &BTreeMap<String, (String, String)>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let component = spin.routes.iter().find(|(r, _)| r.starts_with(RETENTION_ROUTE)).map(|(_, c)| c.as_str());
    let cronjobs: Vec<&Doc> = docs
        .iter()
        .filter(|d| d.kind() == "CronJob" && pod_spec(d).is_some_and(|s| containers_text(s).contains(RETENTION_ROUTE)))
        .collect();
    // Key Vault secret a Spin variable is bound from, if it is bound from an ExternalSecret.
    let app_remote = |var: &str| app_bindings.get(var).and_then(|b| es_remote.get(b));

    match component {
        Some(_) if cronjobs.is_empty() => problems.push(format!(
            "spin.toml routes {RETENTION_ROUTE}/...: a CronJob must call POST {RETENTION_ROUTE}/run (retention-cronjob.yaml)"
        )),
        None => {
            for d in &cronjobs {
                problems.push(format!("{}: calls POST {RETENTION_ROUTE}/run, which spin.toml does not route", d.id()));
            }
        }
        _ => {}
    }

    for d in &cronjobs {
        let who = d.id();
        if d.value.pointer("/spec/suspend").and_then(|s| s.as_bool()) == Some(true) {
            problems.push(format!("{who}: the retention CronJob must be active: remove `suspend: true`"));
        }
        if d.value.pointer("/metadata/annotations").and_then(|a| a.get(INACTIVE_ANNOTATION)).is_some() {
            problems
                .push(format!("{who}: the retention CronJob is active: remove the {INACTIVE_ANNOTATION:?} annotation"));
        }
        let Some(spec) = pod_spec(d) else { continue };
        let containers: Vec<&Value> = spec.get("containers").and_then(|c| c.as_array()).into_iter().flatten().collect();
        let script: String = containers.iter().map(|c| container_script(c)).collect::<Vec<_>>().join("\n");
        problems.extend(scheduler_script_problems(&who, &script));
        // No secret in the environment.
        for c in &containers {
            for e in c.get("env").and_then(|e| e.as_array()).into_iter().flatten() {
                if let Some(n) = str_at(e, &["valueFrom", "secretKeyRef", "name"]) {
                    problems.push(format!(
                        "{who}: env {:?} comes from Secret {n:?}: a secret in the environment (read the mounted file instead)",
                        str_at(e, &["name"]).unwrap_or("")
                    ));
                }
            }
            for e in c.get("envFrom").and_then(|e| e.as_array()).into_iter().flatten() {
                if let Some(n) = str_at(e, &["secretRef", "name"]) {
                    problems.push(format!("{who}: envFrom Secret {n:?}: secrets in the environment"));
                }
            }
        }
        // The token: a file of a secret volume, which the container names.
        let mut token_files = 0;
        for vol in spec.get("volumes").and_then(|v| v.as_array()).into_iter().flatten() {
            let (Some(vname), Some(secret)) = (str_at(vol, &["name"]), str_at(vol, &["secret", "secretName"])) else {
                continue;
            };
            let mounts: Vec<&str> = containers
                .iter()
                .flat_map(|c| c.get("volumeMounts").and_then(|m| m.as_array()).into_iter().flatten())
                .filter(|m| str_at(m, &["name"]) == Some(vname))
                .filter_map(|m| str_at(m, &["mountPath"]))
                .collect();
            let items = vol.pointer("/secret/items").and_then(|i| i.as_array());
            if items.is_none_or(|i| i.is_empty()) {
                problems.push(format!("{who}: secret volume {vname:?} must name the token key in `items`"));
            }
            for item in items.into_iter().flatten() {
                let (Some(key), Some(path)) = (str_at(item, &["key"]), str_at(item, &["path"])) else { continue };
                token_files += 1;
                let files: Vec<String> = mounts.iter().map(|m| format!("{}/{path}", m.trim_end_matches('/'))).collect();
                if !files.iter().any(|f| containers_text(spec).contains(f.as_str())) {
                    problems.push(format!(
                        "{who}: must read the token from the mounted secret file ({}), which the container never names",
                        if files.is_empty() { format!("volume {vname:?} is not mounted") } else { files.join(", ") }
                    ));
                }
                match (spin.vars.get(key), component) {
                    (Some(v), Some(c)) if v.secret && spin.component_refs.get(c).is_some_and(|r| r.contains(key)) => {}
                    _ => problems.push(format!(
                        "{who}: token key {key:?} (Secret {secret:?}) must be a `secret = true` variable of spin.toml that the retention component checks"
                    )),
                }
                let ours = es_remote.get(&(secret.to_string(), key.to_string()));
                if let (Some(ours), Some(app)) = (ours, app_remote(key)) {
                    if ours != app {
                        problems.push(format!(
                            "{who}: reads {key:?} from Key Vault secret {ours:?} but the SpinApp binds {key:?} from {app:?}: the scheduler and the app must share one Key Vault secret"
                        ));
                    }
                }
            }
        }
        if token_files == 0 {
            problems.push(format!("{who}: no token: mount the scheduler token's Secret as a file"));
        }
    }

    // The retention component connects with its own login.
    if let Some(c) = component {
        let db = spin.component_vars.get(c).and_then(|v| v.get("db_url")).map(Vec::as_slice).unwrap_or_default();
        match db {
            [var] if var == "db_url" => problems.push(format!(
                "spin.toml: component {c:?} must connect with its own login (db_url = \"{{{{ retention_db_url }}}}\", role tavle_retention), not the app's db_url"
            )),
            [var] => {
                if !spin.vars.get(var).is_some_and(|v| v.secret) {
                    problems.push(format!("spin.toml: {var:?} (component {c:?}'s db_url) must be `secret = true`"));
                }
                if let (Some(own), Some(app)) = (app_remote(var), app_remote("db_url")) {
                    if own == app {
                        problems.push(format!(
                            "SpinApp: {var:?} and db_url come from the same Key Vault secret {own:?}: the retention component must have its own login (tavle_retention_N)"
                        ));
                    }
                }
            }
            _ => problems.push(format!(
                "spin.toml: component {c:?} needs db_url = \"{{{{ <its own secret variable> }}}}\""
            )),
        }
    }
    problems
}

/// `key=value` lines of a systemd unit file, by section, in order (keys may repeat).
fn parse_unit(text: &str) -> BTreeMap<String, Vec<(String, String)>> {
    let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut section = String::new();
    let mut pending = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with(';')) {
            continue;
        }
        if let Some(cont) = line.strip_suffix('\\') {
            pending.push_str(cont);
            pending.push(' ');
            continue;
        }
        let line = std::mem::take(&mut pending) + line;
        if line.starts_with('[') && line.ends_with(']') {
            section = line[1..line.len() - 1].to_string();
        } else if let Some((k, v)) = line.split_once('=') {
            out.entry(section.clone()).or_default().push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

fn unit_values<'a>(unit: &'a BTreeMap<String, Vec<(String, String)>>, section: &str, key: &str) -> Vec<&'a str> {
    unit.get(section).into_iter().flatten().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
}

/// A systemd time span (`300`, `30s`, `5min`, `1h 30min`) in seconds.
fn unit_seconds(span: &str) -> Option<u64> {
    let mut total = 0;
    for part in span.split_whitespace() {
        let split = part.find(|c: char| !c.is_ascii_digit()).unwrap_or(part.len());
        let n: u64 = part[..split].parse().ok()?;
        total += n * match &part[split..] {
            "" | "s" | "sec" => 1,
            "m" | "min" => 60,
            "h" | "hr" => 3600,
            _ => return None,
        };
    }
    Some(total)
}

/// The part of a scheduler script from its `set -eu` line on: what the CronJob and the
/// systemd script share.
fn shared_script_body(script: &str) -> Option<&str> {
    let at = script.find("\nset -eu\n").map(|i| i + 1).or_else(|| script.starts_with("set -eu\n").then_some(0))?;
    Some(&script[at..])
}

const YES: [&str; 4] = ["yes", "true", "on", "1"];

/// Checks the systemd service, timer and script (as text); `cron_script`: the
/// CronJob's script, which the systemd script must equal from `set -eu` on.
fn check_systemd(service: &str, timer: &str, script: &str, cron_script: Option<&str>) -> Vec<String> {
    let mut problems = Vec::new();
    let svc = parse_unit(service);
    let tmr = parse_unit(timer);
    let last = |u: &BTreeMap<String, Vec<(String, String)>>, sec: &str, key: &str| {
        unit_values(u, sec, key).last().map(|v| v.to_string())
    };
    let s = "tavle-retention.service";

    if last(&svc, "Service", "Type").as_deref() != Some("oneshot") {
        problems.push(format!("{s}: Type=oneshot (one run per start)"));
    }
    let exec = last(&svc, "Service", "ExecStart").unwrap_or_default();
    let mut words = exec.trim_start_matches(['-', '@', ':', '+', '!']).split_whitespace();
    if !words.next().is_some_and(|w| w.ends_with("/tavle-retention-run")) || words.next().is_some() {
        problems.push(format!(
            "{s}: ExecStart must run tavle-retention-run without arguments (anything there is on its command line), is {exec:?}"
        ));
    }
    // The token: a credential, nothing else.
    let creds: Vec<String> = ["LoadCredential", "LoadCredentialEncrypted"]
        .iter()
        .flat_map(|k| unit_values(&svc, "Service", k))
        .map(|v| v.split(':').next().unwrap_or("").to_string())
        .collect();
    if !creds.iter().any(|c| c == "scheduler_token") {
        problems.push(format!(
            "{s}: must load the token as a credential: LoadCredential=scheduler_token:<root-only file> (or LoadCredentialEncrypted=)"
        ));
    }
    for k in ["SetCredential", "SetCredentialEncrypted"] {
        if !unit_values(&svc, "Service", k).is_empty() {
            problems.push(format!("{s}: {k}= writes the secret into the unit file itself; use LoadCredential="));
        }
    }
    if !unit_values(&svc, "Service", "EnvironmentFile").is_empty() {
        problems.push(format!("{s}: no EnvironmentFile=: that is how a token ends up in the environment"));
    }
    for k in ["Environment", "PassEnvironment"] {
        for v in unit_values(&svc, "Service", k) {
            for assignment in v.split_whitespace() {
                let name = assignment.trim_matches('"').split('=').next().unwrap_or("").to_ascii_uppercase();
                if (name.contains("TOKEN") && !name.ends_with("_FILE")) || assignment.contains("Bearer") {
                    problems.push(format!("{s}: {k}={v}: the token must not be in the environment (LoadCredential=)"));
                }
            }
        }
    }
    if last(&svc, "Service", "User").is_some_and(|u| u == "root" || u == "0") {
        problems.push(format!("{s}: must not run as root"));
    }
    let hardening: [(&str, &[&str]); 12] = [
        ("DynamicUser", &YES),
        ("NoNewPrivileges", &YES),
        ("ProtectSystem", &["strict"]),
        ("ProtectHome", &["yes", "true", "on", "1", "read-only", "tmpfs"]),
        ("PrivateTmp", &YES),
        ("PrivateDevices", &YES),
        ("ProtectKernelTunables", &YES),
        ("ProtectKernelModules", &YES),
        ("ProtectControlGroups", &YES),
        ("RestrictSUIDSGID", &YES),
        ("LockPersonality", &YES),
        ("RestrictNamespaces", &YES),
    ];
    for (key, ok) in hardening {
        if !last(&svc, "Service", key).is_some_and(|v| ok.contains(&v.as_str())) {
            problems.push(format!("{s}: hardening: {key}={}", ok[0]));
        }
    }
    if last(&svc, "Service", "CapabilityBoundingSet").as_deref() != Some("") {
        problems.push(format!("{s}: hardening: CapabilityBoundingSet= (empty: no capabilities)"));
    }
    for key in ["SystemCallFilter", "RestrictAddressFamilies"] {
        if unit_values(&svc, "Service", key).is_empty() {
            problems.push(format!("{s}: hardening: {key}= is missing"));
        }
    }

    let t = "tavle-retention.timer";
    if !unit_values(&tmr, "Timer", "OnCalendar").iter().any(|v| v.contains("02:30") && v.contains("Europe/Oslo")) {
        problems.push(format!("{t}: OnCalendar= must be nightly at 02:30 Europe/Oslo (as the CronJob)"));
    }
    if !last(&tmr, "Timer", "Persistent").is_some_and(|v| YES.contains(&v.as_str())) {
        problems.push(format!("{t}: Persistent=true (a night missed while the host was down runs at boot)"));
    }
    match last(&tmr, "Timer", "RandomizedDelaySec").as_deref().map(unit_seconds) {
        Some(Some(secs)) if (1..=1800).contains(&secs) => {}
        other => problems.push(format!("{t}: RandomizedDelaySec= must be small (1 s to 30 min), is {other:?}")),
    }
    if last(&tmr, "Timer", "Unit").is_some_and(|u| u != s) {
        problems.push(format!("{t}: Unit= must be {s}"));
    }
    if !unit_values(&tmr, "Install", "WantedBy").iter().any(|v| v.split_whitespace().any(|w| w == "timers.target")) {
        problems.push(format!("{t}: [Install] WantedBy=timers.target"));
    }

    let r = "tavle-retention-run";
    if script.lines().next() != Some("#!/bin/sh") {
        problems.push(format!("{r}: must be a POSIX sh script (#!/bin/sh)"));
    }
    problems.extend(scheduler_script_problems(r, script));
    let code = script_code(script);
    for id in &creds {
        if ![format!("CREDENTIALS_DIRECTORY/{id}"), format!("CREDENTIALS_DIRECTORY}}/{id}")]
            .iter()
            .any(|p| code.contains(p.as_str()))
        {
            problems.push(format!(
                "{r}: must read the token from $CREDENTIALS_DIRECTORY/{id} (the service's LoadCredential=)"
            ));
        }
    }
    if let Some(cron) = cron_script {
        match (shared_script_body(script), shared_script_body(cron)) {
            (Some(a), Some(b)) if a == b => {}
            (Some(_), Some(_)) => problems.push(format!(
                "{r}: differs from the CronJob's script (retention-cronjob.yaml args) from `set -eu` on: the two must stay the same"
            )),
            _ => problems.push(format!("{r} and the CronJob's script must both have a `set -eu` line")),
        }
    }
    problems
}

/// Why a `[[client_tls]]` entry for PostgreSQL is refused.
const CLIENT_TLS_IS_HTTP_ONLY: &str = "[[client_tls]] applies to Spin's outbound HTTP only, never to PostgreSQL, \
     so it would pretend to protect a connection it does not touch (the database's TLS comes from db_url with \
     sslmode=require and the node's trust store; infra/README.md, \"TLS to the database\")";

/// Names used by the Go templates (`{{ .name }}`, `{{ .name | lower }}`) of a string.
fn go_template_refs(s: &str) -> Vec<String> {
    template_refs(s)
        .iter()
        .filter_map(|r| {
            let r = r.trim_start_matches('.');
            let end = r.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(r.len());
            (end > 0).then(|| r[..end].to_string())
        })
        .collect()
}

/// Problems of the `[[client_tls]]` entries of a Spin runtime config. Spin's PostgreSQL
/// client never reads them: an entry for the database host (a template variable in
/// `db_host_vars` or `db_host`, or an Azure PostgreSQL FQDN), or for a component that
/// talks to PostgreSQL and makes no outbound HTTP, configures nothing it seems to.
fn client_tls_problems(who: &str, rt: &toml::Table, db_host_vars: &BTreeSet<String>, spin: &Spin) -> Vec<String> {
    let mut problems = Vec::new();
    for entry in rt.get("client_tls").and_then(|t| t.as_array()).into_iter().flatten() {
        for h in entry.get("hosts").and_then(|h| h.as_array()).into_iter().flatten().filter_map(|h| h.as_str()) {
            let name = h.rsplit_once(':').map_or(h, |(name, _port)| name).trim_end_matches('.');
            let azure_pg = name.to_ascii_lowercase().ends_with(".postgres.database.azure.com");
            let db_host_var = go_template_refs(h).iter().any(|v| v == "db_host" || db_host_vars.contains(v));
            if azure_pg || db_host_var {
                problems
                    .push(format!("{who}: [[client_tls]] names the database host {h:?}: {CLIENT_TLS_IS_HTTP_ONLY}"));
            }
        }
        for c in entry.get("component_ids").and_then(|c| c.as_array()).into_iter().flatten().filter_map(|c| c.as_str())
        {
            if !spin.component_refs.contains_key(c) {
                problems.push(format!("{who}: [[client_tls]] lists unknown component {c:?}"));
            } else if spin.pg_components.contains(c) && !spin.http_components.contains(c) {
                problems.push(format!(
                    "{who}: [[client_tls]] lists component {c:?}, which talks to PostgreSQL and makes no outbound HTTP: {CLIENT_TLS_IS_HTTP_ONLY}"
                ));
            }
        }
    }
    problems
}

/// Placeholders of the documented connection URLs, and plausible values for them.
const URL_PLACEHOLDERS: [(&str, &str); 5] = [
    ("<pw>", "Zx9-not-a-real-secret"),
    ("<password>", "Zx9-not-a-real-secret"),
    ("…", "Zx9-not-a-real-secret"),
    ("<server_fqdn>", "psql-tavle-prod.postgres.database.azure.com"),
    ("<db_host>", "psql-tavle-prod.postgres.database.azure.com"),
];

/// The login that owns the schema and runs `tavle migrate` (infra/README.md 3.2).
const SCHEMA_OWNER: &str = "tavle_owner";

/// How many URLs of each kind a source documents.
#[derive(Debug, Default, Clone, Copy)]
struct UrlCounts {
    db_urls: usize,
    migration_urls: usize,
}

/// Checks every PostgreSQL URL written in `sources` (name, text): comments, tables and
/// shell examples alike (Spin templates such as `postgres://{{ db_host }}` are not URLs).
/// A URL for the schema owner, or on a line that sets `DATABASE_URL`, is for the
/// operator binary (sqlx): it must use `sslmode=verify-full`, since sqlx's `require`
/// does not verify. Every other URL is a `db_url` for Spin: it must pass
/// `tavle_core::db::check_db_url` and name `sslmode=require`. Both must name the
/// server by host name, not IP (the certificate names the FQDN). Placeholders
/// (`<pw>`, `<server_fqdn>`, ...) are replaced by plausible values first.
fn check_documented_urls(sources: &[(String, String)]) -> (Vec<String>, BTreeMap<String, UrlCounts>) {
    let mut problems = Vec::new();
    let mut counts: BTreeMap<String, UrlCounts> = BTreeMap::new();
    for (source, text) in sources {
        for (n, line) in text.lines().enumerate() {
            let at = format!("{source}:{}", n + 1);
            for (i, _) in line.match_indices("postgres") {
                let rest = &line[i..];
                if !(rest.starts_with("postgres://") || rest.starts_with("postgresql://")) {
                    continue;
                }
                let end = rest.find(|c: char| c.is_whitespace() || "'\"`|)]".contains(c)).unwrap_or(rest.len());
                // Prose may end a sentence right after a URL.
                let written = rest[..end].trim_end_matches(['.', ',', ';', ':']);
                if written.contains("{{") {
                    continue;
                }
                let mut url = written.to_string();
                for (placeholder, value) in URL_PLACEHOLDERS {
                    url = url.replace(placeholder, value);
                }
                if url.contains(['<', '>']) {
                    problems.push(format!("{at}: {written:?} has a placeholder this check does not know"));
                    continue;
                }
                let Ok(uri) = url.parse::<http::Uri>() else {
                    problems.push(format!("{at}: {written:?} is not a URL"));
                    continue;
                };
                let authority = uri.authority().map_or("", |a| a.as_str());
                let user = authority.rsplit_once('@').map_or("", |(info, _)| info.split(':').next().unwrap_or(""));
                let host = uri.host().unwrap_or("").trim_start_matches('[').trim_end_matches(']');
                if host.parse::<std::net::IpAddr>().is_ok() {
                    problems.push(format!(
                        "{at}: {written:?} names the server by IP address; use its FQDN (the server certificate names the FQDN, so verification fails on an IP)"
                    ));
                }
                let count = counts.entry(source.clone()).or_default();
                if user == SCHEMA_OWNER || line.contains("DATABASE_URL") {
                    count.migration_urls += 1;
                    match url.parse::<sqlx::postgres::PgConnectOptions>() {
                        Err(e) => problems.push(format!("{at}: migration URL {written:?} does not parse for sqlx: {e}")),
                        Ok(o) if !matches!(o.get_ssl_mode(), sqlx::postgres::PgSslMode::VerifyFull) => {
                            problems.push(format!(
                                "{at}: migration URL {written:?} must use sslmode=verify-full: `tavle migrate` connects with sqlx, whose `require` does not verify the server"
                            ))
                        }
                        Ok(_) => {}
                    }
                } else {
                    count.db_urls += 1;
                    if let Err(e) = tavle_core::db::check_db_url(&url) {
                        problems.push(format!("{at}: db_url {written:?} is refused by check_db_url: {e}"));
                    } else if !uri.query().unwrap_or("").split('&').any(|p| p == "sslmode=require") {
                        problems.push(format!(
                            "{at}: db_url {written:?} must name sslmode=require (verified TLS on Spin; `prefer`, the default, falls back to plain text)"
                        ));
                    }
                }
            }
        }
    }
    (problems, counts)
}

/// Every text that documents connection URLs: the manifests, the two guides, spin.toml.
fn load_documented_sources() -> Vec<(String, String)> {
    let mut sources: Vec<(String, String)> =
        load_manifests().into_iter().map(|(name, text)| (format!("infra/k8s/{name}"), text)).collect();
    for path in ["infra/README.md", "README.md", "spin.toml"] {
        let p = repo_root().join(path);
        sources.push((
            path.to_string(),
            std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display())),
        ));
    }
    sources
}

/// `default` of `variable "db_subnet_cidr"` in infra/terraform/variables.tf.
fn terraform_db_subnet_cidr() -> Option<String> {
    let text = std::fs::read_to_string(repo_root().join("infra/terraform/variables.tf")).ok()?;
    let block = &text[text.find("variable \"db_subnet_cidr\"")?..];
    let block = &block[..block.find("\n}").unwrap_or(block.len())];
    let line = block.lines().find(|l| l.trim_start().starts_with("default"))?;
    Some(line.split('"').nth(1)?.to_string())
}

fn assert_clean(problems: &[String]) {
    assert!(problems.is_empty(), "infra/k8s is inconsistent with spin.toml:\n  - {}", problems.join("\n  - "));
}

fn assert_flags(problems: &[String], needle: &str) {
    assert!(
        problems.iter().any(|p| p.contains(needle)),
        "expected a problem mentioning {needle:?}, got:\n  - {}",
        problems.join("\n  - ")
    );
}

/// Replace `from` (which must occur) in file `name` of the manifest set.
fn patched(files: &[(String, String)], name: &str, from: &str, to: &str) -> Vec<(String, String)> {
    files
        .iter()
        .map(|(f, t)| {
            if f == name {
                assert!(t.contains(from), "{name} does not contain {from:?}");
                (f.clone(), t.replacen(from, to, 1))
            } else {
                (f.clone(), t.clone())
            }
        })
        .collect()
}

/// spin.toml plus a component `probe` with the given `[component.probe.variables]` body.
fn with_probe_component(spin_toml: &str, variables: &str) -> String {
    format!("{spin_toml}\n[component.probe]\nsource = \"probe.wasm\"\n[component.probe.variables]\n{variables}")
}

// ---------------------------------------------------------------------------------
// Tests against the real repository
// ---------------------------------------------------------------------------------

#[test]
fn deployment_provides_exactly_the_spin_variables() {
    let cidr = terraform_db_subnet_cidr();
    assert!(cidr.is_some(), "db_subnet_cidr default not found in infra/terraform/variables.tf");
    assert_clean(&check_deployment(&load_spin_toml(), &load_manifests(), cidr.as_deref()));
}

#[test]
fn spin_toml_declares_variables_and_components() {
    // Guards against the checker silently passing on an empty model.
    let spin = parse_spin(&load_spin_toml()).expect("spin.toml parses");
    assert!(spin.vars.contains_key("db_url"), "spin.toml declares db_url");
    assert!(spin.vars["db_url"].secret, "db_url is secret");
    assert!(!spin.component_refs.is_empty(), "spin.toml has components");
    assert!(!spin.pg_components.is_empty(), "some component talks to PostgreSQL");
}

#[test]
fn every_manifest_parses_with_required_fields() {
    let mut problems = Vec::new();
    let mut count = 0;
    for (file, text) in load_manifests() {
        let docs = parse_yaml_stream(&file, &text, &mut problems);
        assert!(!docs.is_empty(), "{file}: no YAML document");
        count += docs.len();
    }
    assert_clean(&problems);
    assert!(count >= 10, "expected the full deployment, found {count} objects");
}

// ---------------------------------------------------------------------------------
// Negative tests: the checker fails on in-memory variants
// ---------------------------------------------------------------------------------

#[test]
fn fails_when_a_component_gains_a_variable_the_deployment_lacks() {
    // A new component (e.g. ingest) declares a webhook secret that infra/k8s lacks.
    let spin = with_probe_component(&load_spin_toml(), "webhook_secret = \"{{ webhook_secret }}\"\n");
    assert!(spin.contains("[variables]\n"), "spin.toml has a [variables] table");
    let spin = spin.replacen("[variables]\n", "[variables]\nwebhook_secret = { required = true, secret = true }\n", 1);
    let problems = check_deployment(&spin, &load_manifests(), None);
    assert_flags(
        &problems,
        "\"webhook_secret\" (used by component(s) [\"probe\"]) but spinapp.yaml does not provide it",
    );
}

#[test]
fn fails_when_an_application_variable_is_not_provided() {
    let spin = load_spin_toml().replacen("[variables]\n", "[variables]\nfeature_flag = { default = \"off\" }\n", 1);
    assert_flags(&check_deployment(&spin, &load_manifests(), None), "declares variable \"feature_flag\"");
}

#[test]
fn fails_when_a_component_references_an_undeclared_variable() {
    let spin = with_probe_component(&load_spin_toml(), "mystery = \"{{ mystery }}\"\n");
    assert_flags(&check_deployment(&spin, &load_manifests(), None), "which [variables] does not declare");
}

#[test]
fn fails_when_the_spinapp_provides_an_undeclared_variable() {
    let files = patched(
        &load_manifests(),
        "spinapp.yaml",
        "  variables:\n",
        "  variables:\n    - name: not_in_spin_toml\n      value: \"x\"\n",
    );
    assert_flags(
        &check_deployment(&load_spin_toml(), &files, None),
        "\"not_in_spin_toml\", which spin.toml [variables] does not declare",
    );
}

#[test]
fn fails_when_a_secret_variable_is_a_literal() {
    let files = patched(
        &load_manifests(),
        "spinapp.yaml",
        "    - name: db_url\n      valueFrom:\n        secretKeyRef:\n          name: tavle-app-secrets\n          key: db_url\n",
        "    - name: db_url\n      value: \"postgres://u:p@h/db\"\n",
    );
    let problems = check_deployment(&load_spin_toml(), &files, None);
    assert_flags(&problems, "\"db_url\" is secret in spin.toml");
    // ...and the Secret's db_url key is now unused.
    assert_flags(&problems, "holds \"db_url\" but the SpinApp never binds it");
}

#[test]
fn fails_when_a_secret_key_is_not_in_key_vault() {
    let files = patched(&load_manifests(), "spinapp.yaml", "key: token_signing_key", "key: token_signing_key_v2");
    assert_flags(&check_deployment(&load_spin_toml(), &files, None), "has no key \"token_signing_key_v2\"");
}

#[test]
fn fails_when_the_app_secret_holds_a_non_spin_value() {
    let files = patched(
        &load_manifests(),
        "externalsecrets.yaml",
        "  data:\n    # postgres://",
        "  data:\n    - secretKey: stray_password\n      remoteRef:\n        key: tavle-stray\n    # postgres://",
    );
    assert_flags(
        &check_deployment(&load_spin_toml(), &files, None),
        "holds \"stray_password\", which is not a spin.toml variable",
    );
}

#[test]
fn fails_when_a_raw_secret_is_committed() {
    let mut files = load_manifests();
    files.push((
        "leak.yaml".into(),
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: leak\n  namespace: tavle\nstringData:\n  db_url: x\n".into(),
    ));
    let problems = check_deployment(&load_spin_toml(), &files, None);
    assert_flags(&problems, "Secrets must not be committed");
    assert_flags(&problems, "leak.yaml is not listed in resources");
}

#[test]
fn fails_on_broken_yaml_and_missing_fields() {
    let mut files = patched(&load_manifests(), "configmap.yaml", "kind: ConfigMap\n", "");
    files.push(("broken.yaml".into(), "apiVersion: v1\nkind: [unclosed\n".into()));
    let problems = check_deployment(&load_spin_toml(), &files, None);
    assert_flags(&problems, "broken.yaml: YAML parse error");
    assert_flags(&problems, "configmap.yaml: missing kind");
}

/// The manifests with a Spin runtime config added back: an ExternalSecret templating
/// `runtime-config.toml` with `client_tls_toml`, and the SpinApp loading it.
fn with_runtime_config(client_tls_toml: &str) -> Vec<(String, String)> {
    let body: String = client_tls_toml.lines().map(|l| format!("          {l}\n")).collect();
    let es = format!(
        "---\napiVersion: external-secrets.io/v1\nkind: ExternalSecret\nmetadata:\n  name: tavle-runtime-config\n  namespace: tavle\n\
         spec:\n  secretStoreRef:\n    kind: SecretStore\n    name: azure-key-vault\n  target:\n    name: tavle-runtime-config\n\
         \x20   template:\n      engineVersion: v2\n      data:\n        runtime-config.toml: |\n{body}\
         \x20 data:\n    - secretKey: db_host\n      remoteRef:\n        key: tavle-db-host\n"
    );
    let files = patched(
        &load_manifests(),
        "spinapp.yaml",
        "  replicas: 2\n",
        "  replicas: 2\n  runtimeConfig:\n    loadFromSecret: tavle-runtime-config\n",
    );
    files.into_iter().map(|(f, t)| if f == "externalsecrets.yaml" { (f, format!("{t}{es}")) } else { (f, t) }).collect()
}

#[test]
fn fails_when_a_runtime_config_pretends_to_protect_postgresql() {
    // What the manifests used to carry: trust roots for the database host, for every
    // PostgreSQL component. Spin's PostgreSQL client never reads it.
    let files = with_runtime_config(
        "[[client_tls]]\ncomponent_ids = [\"login\", \"ingest\", \"students\"]\nhosts = [\"{{ .db_host }}\"]\nca_use_webpki_roots = true\n",
    );
    let problems = check_deployment(&load_spin_toml(), &files, None);
    assert_flags(&problems, "[[client_tls]] names the database host \"{{ .db_host }}\"");
    for c in ["login", "ingest", "students"] {
        assert_flags(
            &problems,
            &format!("lists component {c:?}, which talks to PostgreSQL and makes no outbound HTTP"),
        );
    }
    assert_flags(&problems, "applies to Spin's outbound HTTP only, never to PostgreSQL");

    // The server's FQDN written out, for no component in particular.
    let files = with_runtime_config("[[client_tls]]\nhosts = [\"psql-tavle.postgres.database.azure.com:5432\"]\n");
    assert_flags(
        &check_deployment(&load_spin_toml(), &files, None),
        "names the database host \"psql-tavle.postgres.database.azure.com:5432\"",
    );

    // A PostgreSQL component that makes no outbound HTTP, whatever the host.
    let files = with_runtime_config("[[client_tls]]\ncomponent_ids = [\"login\"]\nhosts = [\"api.example.com\"]\n");
    assert_flags(
        &check_deployment(&load_spin_toml(), &files, None),
        "lists component \"login\", which talks to PostgreSQL",
    );
}

#[test]
fn a_runtime_config_for_outbound_http_is_left_alone() {
    // Not over-eager: client_tls for a component's own HTTPS host is what it is for.
    let spin = format!(
        "{}\n[component.caller]\nsource = \"x.wasm\"\nallowed_outbound_hosts = [\"https://api.example.com\"]\n",
        load_spin_toml()
    );
    let files = with_runtime_config(
        "[[client_tls]]\ncomponent_ids = [\"caller\"]\nhosts = [\"api.example.com\"]\nca_use_webpki_roots = true\n",
    );
    assert_clean(&check_deployment(&spin, &files, None));
    // The same runtime config is read: add the database host and it is flagged.
    let files = with_runtime_config(
        "[[client_tls]]\ncomponent_ids = [\"caller\"]\nhosts = [\"api.example.com\", \"{{ .db_host }}\"]\n",
    );
    assert_flags(&check_deployment(&spin, &files, None), "names the database host \"{{ .db_host }}\"");
}

#[test]
fn documented_database_urls_verify_the_server() {
    let (problems, counts) = check_documented_urls(&load_documented_sources());
    assert!(
        problems.is_empty(),
        "documented PostgreSQL URLs would not verify the server:\n  - {}",
        problems.join("\n  - ")
    );
    // Guards against passing on nothing: each guide shows both kinds.
    for source in ["infra/k8s/externalsecrets.yaml", "infra/README.md", "README.md"] {
        let c = counts.get(source).copied().unwrap_or_default();
        assert!(
            c.db_urls >= 1 && c.migration_urls >= 1,
            "{source}: expected a db_url and a migration URL, found {c:?}"
        );
    }
}

#[test]
fn fails_when_a_documented_database_url_would_not_verify() {
    let sources = load_documented_sources();
    let check = |file: &str, from: &str, to: &str| check_documented_urls(&patched(&sources, file, from, to)).0;

    // Spin cannot parse verify-full: every connection would fail.
    let problems = check("infra/README.md", "5432/tavle?sslmode=require", "5432/tavle?sslmode=verify-full");
    assert_flags(&problems, "infra/README.md:");
    assert_flags(
        &problems,
        "is refused by check_db_url: db_url: Spin's PostgreSQL client does not know sslmode=verify-ca",
    );
    // No sslmode: `prefer`, downgradable.
    let problems = check("infra/k8s/externalsecrets.yaml", "5432/tavle?sslmode=require", "5432/tavle");
    assert_flags(&problems, "must be reached with sslmode=require");
    // A loopback example passes check_db_url but does not name require.
    let problems = check(
        "README.md",
        "tavle_app_1:…@db.example.com:5432/tavle?sslmode=require",
        "tavle_app_1@localhost:5432/tavle",
    );
    assert_flags(&problems, "must name sslmode=require");
    // The migration URL with sqlx's unverified `require`.
    let problems = check("README.md", "5432/tavle?sslmode=verify-full", "5432/tavle?sslmode=require");
    assert_flags(&problems, "must use sslmode=verify-full");
    let problems = check(
        "infra/README.md",
        "tavle_owner:<pw>@<server_fqdn>:5432/tavle?sslmode=verify-full",
        "tavle_owner:<pw>@<server_fqdn>:5432/tavle",
    );
    assert_flags(&problems, "must use sslmode=verify-full");
    // An IP address cannot match the certificate.
    let problems = check("infra/README.md", "tavle_app_1:<pw>@<server_fqdn>", "tavle_app_1:<pw>@10.20.1.4");
    assert_flags(&problems, "names the server by IP address");
    // A placeholder the check would have to guess.
    let problems = check(
        "infra/k8s/externalsecrets.yaml",
        "<db_host>:5432/tavle?sslmode=require",
        "<host>:5432/tavle?sslmode=require",
    );
    assert_flags(&problems, "has a placeholder this check does not know");
}

#[test]
fn fails_when_egress_is_opened_or_the_db_cidr_drifts() {
    let files = patched(&load_manifests(), "networkpolicy.yaml", "port: 5432", "port: 443");
    assert_flags(
        &check_deployment(&load_spin_toml(), &files, None),
        "only the database (TCP 5432) and cluster DNS (53) are allowed",
    );
    let problems = check_deployment(&load_spin_toml(), &load_manifests(), Some("10.99.0.0/24"));
    assert_flags(&problems, "differs from infra/terraform db_subnet_cidr 10.99.0.0/24");
}

#[test]
fn secrets_mounted_as_files_must_exist() {
    // The migration Job reads its URL from a secret volume; a key the ExternalSecret
    // does not provide would leave the file missing and the Job failing at start.
    let files = patched(
        &load_manifests(),
        "migration-job.yaml",
        "              - key: database_url\n",
        "              - key: database_url_v2\n",
    );
    assert_flags(&check_deployment(&load_spin_toml(), &files, None), "has no key \"database_url_v2\"");
}

// ---------------------------------------------------------------------------------
// Retention scheduling
// ---------------------------------------------------------------------------------

/// `infra/systemd/`: (service, timer, script).
fn load_systemd() -> (String, String, String) {
    let read = |name: &str| {
        let p = repo_root().join("infra/systemd").join(name);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
    };
    (read("tavle-retention.service"), read("tavle-retention.timer"), read("tavle-retention-run"))
}

/// The script of the retention CronJob (its `sh -c` argument: the longest string of
/// the container's command and args).
fn cron_script(files: &[(String, String)]) -> String {
    let (_, text) = files.iter().find(|(f, _)| f == "retention-cronjob.yaml").expect("retention-cronjob.yaml");
    let docs = parse_yaml_stream("retention-cronjob.yaml", text, &mut Vec::new());
    let cronjob = docs.iter().find(|d| d.kind() == "CronJob").expect("a CronJob");
    let container = &pod_spec(cronjob).expect("pod spec")["containers"][0];
    ["command", "args"]
        .iter()
        .flat_map(|k| container[*k].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_str().map(str::to_string))
        .max_by_key(|s| s.len())
        .expect("a script")
}

#[test]
fn systemd_units_match_the_cronjob() {
    let (service, timer, script) = load_systemd();
    let problems = check_systemd(&service, &timer, &script, Some(&cron_script(&load_manifests())));
    assert!(problems.is_empty(), "infra/systemd:\n  - {}", problems.join("\n  - "));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(repo_root().join("infra/systemd/tavle-retention-run")).unwrap().permissions(),
    );
    assert!(mode & 0o111 != 0, "infra/systemd/tavle-retention-run must be executable (mode {mode:o})");
}

/// A fresh, empty directory under the system temp dir.
fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tavle-infra-{tag}-{}-{}", std::process::id(), uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn tool_available(tool: &str, arg: &str) -> bool {
    Command::new(tool).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

#[test]
fn systemd_units_pass_systemd_analyze() {
    if !tool_available("systemd-analyze", "--version") {
        // The static rules (systemd_units_match_the_cronjob) still ran.
        eprintln!("systemd-analyze not installed: verify/security/calendar checks skipped");
        return;
    }
    let (service, timer, script) = load_systemd();
    let dir = temp_dir("systemd");
    // verify insists that ExecStart exists: point it at a copy of the script.
    let exe = dir.join("tavle-retention-run");
    std::fs::write(&exe, &script).unwrap();
    std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let exec_line = service.lines().find(|l| l.starts_with("ExecStart=")).expect("ExecStart=");
    let service = service.replacen(exec_line, &format!("ExecStart={}", exe.display()), 1);
    std::fs::write(dir.join("tavle-retention.service"), &service).unwrap();
    std::fs::write(dir.join("tavle-retention.timer"), &timer).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new("systemd-analyze").args(args).output().expect("systemd-analyze");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    };
    let svc = dir.join("tavle-retention.service").display().to_string();
    let tmr = dir.join("tavle-retention.timer").display().to_string();
    // Unknown keys and unparsable values are only warnings there: no output at all.
    let (ok, text) = run(&["verify", &svc, &tmr]);
    assert!(ok && text.trim().is_empty(), "systemd-analyze verify:\n{text}");
    // Exposure at most 2.0 of 10 ("OK"; the threshold counts tenths).
    let (ok, text) = run(&["security", "--offline=yes", "--threshold=20", &svc]);
    assert!(ok, "systemd-analyze security rates the service above 2.0:\n{text}");
    let calendar = timer.lines().find_map(|l| l.strip_prefix("OnCalendar=")).expect("OnCalendar=");
    let (ok, text) = run(&["calendar", calendar]);
    assert!(ok, "systemd-analyze calendar {calendar:?}:\n{text}");

    // The verify step can fail: a misspelt hardening key is reported.
    let broken = service.replacen("ProtectSystem=strict", "ProtectSytem=strict", 1);
    std::fs::write(dir.join("tavle-retention.service"), broken).unwrap();
    let (_, text) = run(&["verify", &svc]);
    assert!(text.contains("Unknown key"), "systemd-analyze verify missed a misspelt key:\n{text}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn retention_schedule_rules_fail() {
    let spin = load_spin_toml();
    let files = load_manifests();
    let check = |spin: &str, files: &[(String, String)]| check_deployment(spin, files, None);
    let cron = |from: &str, to: &str| patched(&files, "retention-cronjob.yaml", from, to);

    // Suspended again, or still marked as a template.
    let problems = check(&spin, &cron("\nspec:\n  schedule:", "\nspec:\n  suspend: true\n  schedule:"));
    assert_flags(&problems, "must be active: remove `suspend: true`");
    let problems =
        check(&spin, &cron("  labels:\n", &format!("  annotations:\n    {INACTIVE_ANNOTATION}: \"x\"\n  labels:\n")));
    assert_flags(&problems, "remove the \"tavle/inactive-until\" annotation");

    // Route and CronJob go together.
    let no_route = spin.replacen("route = \"/internal/retention/...\"", "route = \"/internal/other/...\"", 1);
    assert_flags(&check(&no_route, &files), "which spin.toml does not route");
    let without: Vec<(String, String)> = files.iter().filter(|(f, _)| f != "retention-cronjob.yaml").cloned().collect();
    let without = patched(&without, "kustomization.yaml", "  - retention-cronjob.yaml\n", "");
    assert_flags(&check(&spin, &without), "a CronJob must call POST /internal/retention/run");

    // One call, no loop.
    let problems = check(&spin, &cron("while :; do", "for once in 1; do"));
    assert_flags(&problems, "must call again while the run report says \"more_remaining\":true");

    // The token on curl's command line instead of its standard input.
    let problems =
        check(&spin, &cron("curl -q --config - --silent", "curl -q -H \"Authorization: Bearer $token\" --silent"));
    assert_flags(&problems, "must hand the token to curl on standard input");
    assert_flags(&problems, "puts the token on curl's command line");

    // The token in the environment.
    let problems = check(
        &spin,
        &cron(
            "              env:\n",
            "              env:\n                - name: SCHEDULER_TOKEN\n                  valueFrom:\n                    secretKeyRef:\n                      name: tavle-scheduler\n                      key: scheduler_token\n",
        ),
    );
    assert_flags(
        &problems,
        "env \"SCHEDULER_TOKEN\" comes from Secret \"tavle-scheduler\": a secret in the environment",
    );

    // A token file other than the mounted one.
    let problems = check(
        &spin,
        &cron("value: /run/secrets/tavle-scheduler/scheduler_token", "value: /run/secrets/elsewhere/scheduler_token"),
    );
    assert_flags(
        &problems,
        "must read the token from the mounted secret file (/run/secrets/tavle-scheduler/scheduler_token)",
    );

    // Scheduler and app from different Key Vault secrets.
    let problems = check(
        &spin,
        &patched(&files, "externalsecrets.yaml", "key: tavle-scheduler-token", "key: tavle-scheduler-token-v2"),
    );
    assert_flags(&problems, "reads \"scheduler_token\" from Key Vault secret \"tavle-scheduler-token\" but the SpinApp binds \"scheduler_token\" from \"tavle-scheduler-token-v2\"");

    // The token key is no secret variable of spin.toml.
    let not_secret = spin.replacen(
        "scheduler_token = { required = true, secret = true }",
        "scheduler_token = { required = true }",
        1,
    );
    assert_flags(
        &check(&not_secret, &files),
        "token key \"scheduler_token\" (Secret \"tavle-scheduler\") must be a `secret = true` variable",
    );

    // The retention component on the app's login, or on the app's Key Vault secret.
    let app_login = spin.replacen("db_url = \"{{ retention_db_url }}\"", "db_url = \"{{ db_url }}\"", 1);
    assert_flags(&check(&app_login, &files), "must connect with its own login");
    let problems =
        check(&spin, &patched(&files, "externalsecrets.yaml", "key: tavle-retention-db-url", "key: tavle-db-url"));
    assert_flags(&problems, "\"retention_db_url\" and db_url come from the same Key Vault secret \"tavle-db-url\"");
    let literal = patched(
        &files,
        "spinapp.yaml",
        "    - name: retention_db_url\n      valueFrom:\n        secretKeyRef:\n          name: tavle-app-secrets\n          key: retention_db_url\n",
        "    - name: retention_db_url\n      value: \"postgres://u:p@h/db\"\n",
    );
    assert_flags(
        &check(&spin, &literal),
        "\"retention_db_url\" is secret in spin.toml and must come from valueFrom.secretKeyRef",
    );
}

#[test]
fn systemd_rules_fail() {
    let (service, timer, script) = load_systemd();
    let cron = cron_script(&load_manifests());
    let svc = |from: &str, to: &str| {
        assert!(service.contains(from), "tavle-retention.service lacks {from:?}");
        check_systemd(&service.replacen(from, to, 1), &timer, &script, Some(&cron))
    };
    let tmr = |from: &str, to: &str| {
        assert!(timer.contains(from), "tavle-retention.timer lacks {from:?}");
        check_systemd(&service, &timer.replacen(from, to, 1), &script, Some(&cron))
    };
    let run = |from: &str, to: &str| {
        assert!(script.contains(from), "tavle-retention-run lacks {from:?}");
        let changed = script.replacen(from, to, 1);
        check_systemd(&service, &timer, &changed, Some(&changed.clone()))
    };

    assert_flags(&svc("DynamicUser=yes\n", ""), "hardening: DynamicUser=yes");
    assert_flags(&svc("NoNewPrivileges=yes", "NoNewPrivileges=no"), "hardening: NoNewPrivileges=yes");
    assert_flags(&svc("ProtectSystem=strict", "ProtectSystem=full"), "hardening: ProtectSystem=strict");
    assert_flags(
        &svc("CapabilityBoundingSet=\n", "CapabilityBoundingSet=CAP_NET_RAW\n"),
        "CapabilityBoundingSet= (empty",
    );
    assert_flags(
        &svc("LoadCredential=scheduler_token:/etc/credstore/tavle-scheduler-token\n", ""),
        "must load the token as a credential",
    );
    assert_flags(
        &svc("Environment=TAVLE_RETENTION_MAX_CALLS=30", "Environment=TAVLE_SCHEDULER_TOKEN=abc"),
        "the token must not be in the environment",
    );
    assert_flags(&svc("Type=oneshot", "Type=oneshot\nEnvironmentFile=/etc/tavle/env"), "no EnvironmentFile=");
    assert_flags(
        &svc("Type=oneshot", "Type=oneshot\nSetCredential=scheduler_token:abc"),
        "SetCredential= writes the secret",
    );
    assert_flags(
        &svc(
            "ExecStart=/usr/local/libexec/tavle/tavle-retention-run",
            "ExecStart=/usr/local/libexec/tavle/tavle-retention-run abc",
        ),
        "ExecStart must run tavle-retention-run without arguments",
    );

    assert_flags(
        &tmr("OnCalendar=*-*-* 02:30:00 Europe/Oslo", "OnCalendar=daily"),
        "OnCalendar= must be nightly at 02:30",
    );
    assert_flags(&tmr("Persistent=true", "Persistent=false"), "Persistent=true");
    assert_flags(&tmr("RandomizedDelaySec=5min", "RandomizedDelaySec=6h"), "RandomizedDelaySec= must be small");

    assert_flags(&run("#!/bin/sh\n", "#!/bin/bash\n"), "must be a POSIX sh script");
    assert_flags(
        &run("token_file=$CREDENTIALS_DIRECTORY/scheduler_token", "token_file=/etc/tavle/token"),
        "must read the token from $CREDENTIALS_DIRECTORY/scheduler_token",
    );
    assert_flags(
        &run("curl -q --config - --silent", "curl -q --oauth2-bearer \"$token\" --silent"),
        "puts the token on curl's command line",
    );
    // The systemd script drifting from the CronJob's.
    let drifted = script.replacen(
        "max_calls=\"${TAVLE_RETENTION_MAX_CALLS:-30}\"",
        "max_calls=\"${TAVLE_RETENTION_MAX_CALLS:-300}\"",
        1,
    );
    assert_ne!(drifted, script);
    assert_flags(&check_systemd(&service, &timer, &drifted, Some(&cron)), "differs from the CronJob's script");
}

// --- the scripts themselves, against a fake endpoint on 127.0.0.1 -----------------

/// A request the fake endpoint received, and which processes held the token meanwhile.
#[derive(Debug, Clone)]
struct Seen {
    request_line: String,
    headers: BTreeMap<String, String>,
    body: String,
    leaks: Vec<String>,
}

/// Processes whose command line or environment contain `needle` (readable ones: ours).
fn processes_holding(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        for what in ["cmdline", "environ"] {
            let Ok(bytes) = std::fs::read(entry.path().join(what)) else { continue };
            if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                let cmd = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ").replace(needle, "<TOKEN>");
                found.push(format!("pid {pid} has the token in its {what}: {}", cmd.trim()));
            }
        }
    }
    found
}

/// Serves `responses` (status, JSON body) in order, the last one again and again,
/// on 127.0.0.1; records each request and checks /proc for `token` while it is open.
struct FakeEndpoint {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeEndpoint {
    fn start(responses: Vec<(u16, String)>, token: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                let mut stream = match listener.accept() {
                    Ok((s, _)) => s,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    Err(e) => panic!("accept: {e}"),
                };
                stream.set_nonblocking(false).unwrap();
                stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i;
                    }
                    let n = stream.read(&mut chunk).expect("read request");
                    assert!(n > 0, "connection closed mid-request");
                    buf.extend_from_slice(&chunk[..n]);
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                let mut lines = head.split("\r\n");
                let request_line = lines.next().unwrap_or("").to_string();
                let headers: BTreeMap<String, String> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                    .collect();
                let len: usize = headers.get("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
                while buf.len() < head_end + 4 + len {
                    let n = stream.read(&mut chunk).expect("read body");
                    assert!(n > 0, "connection closed mid-body");
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = String::from_utf8_lossy(&buf[head_end + 4..head_end + 4 + len]).into_owned();
                // curl and the shells around it are alive now, waiting for the answer.
                let leaks = processes_holding(&token);
                let n = {
                    let mut seen = seen2.lock().unwrap();
                    seen.push(Seen { request_line, headers, body, leaks });
                    seen.len()
                };
                let (status, payload) = &responses[(n - 1).min(responses.len() - 1)];
                let ctype = if *status == 200 { "application/json" } else { "application/problem+json" };
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{payload}",
                    payload.len()
                );
                stream.write_all(answer.as_bytes()).expect("write answer");
            }
        });
        FakeEndpoint { addr, seen, stop, thread: Some(thread) }
    }

    fn finish(mut self) -> Vec<Seen> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            if let Err(e) = t.join() {
                std::panic::resume_unwind(e);
            }
        }
        self.seen.lock().unwrap().clone()
    }
}

/// How a scheduler script is started: the systemd file, or the CronJob's `sh -c`.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Runner {
    Systemd,
    CronJob,
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs a scheduler script with only `env` (and PATH) in its environment; the token
/// file is `<dir>/scheduler_token`, given the way the runner gives it.
fn run_script(runner: Runner, script: &Path, cron: &str, dir: &Path, env: &[(&str, String)], args: &[&str]) -> Run {
    let mut cmd = Command::new("sh");
    match runner {
        Runner::Systemd => cmd.arg(script).args(args),
        Runner::CronJob => {
            assert!(args.is_empty(), "the CronJob passes no arguments");
            cmd.arg("-c").arg(cron)
        }
    };
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if runner == Runner::Systemd {
        cmd.env("CREDENTIALS_DIRECTORY", dir);
    } else {
        cmd.env("TAVLE_RETENTION_TOKEN_FILE", dir.join("scheduler_token"));
    }
    let mut child = cmd.spawn().expect("spawn sh");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).ok();
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).ok();
        s
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            panic!("{runner:?} script still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run { code: status.code(), stdout: t_out.join().unwrap(), stderr: t_err.join().unwrap() }
}

fn report(status: &str, more: bool, dry_run: bool) -> (u16, String) {
    (
        200,
        format!(
            "{{\"id\":\"0b0e5e0c-0000-4000-8000-000000000001\",\"trigger\":\"schedule\",\"dry_run\":{dry_run},\"status\":\"{status}\",\"more_remaining\":{more},\"started_at\":\"2026-12-02T01:30:00Z\",\"finished_at\":\"2026-12-02T01:30:20Z\",\"batches\":10,\"longest_batch_ms\":1800,\"counts\":{{\"pupils_erased\":2000,\"access_log_pruned\":0}}}}"
        ),
    )
}

fn problem(status: u16, kind: &str) -> (u16, String) {
    (status, format!("{{\"type\":\"urn:tavle:problem:{kind}\",\"title\":\"{kind}\",\"status\":{status}}}"))
}

struct Case {
    name: &'static str,
    responses: Vec<(u16, String)>,
    env: Vec<(&'static str, &'static str)>,
    args: Vec<&'static str>,
    /// Write the token file (with or without a final newline); None: no file.
    token_file: Option<bool>,
    exit: i32,
    calls: usize,
    dry_run: bool,
    trigger: &'static str,
}

fn cases() -> Vec<Case> {
    let more = report("more_remaining", true, false);
    let done = report("completed", false, false);
    let case = |name, responses: Vec<(u16, String)>, exit, calls| Case {
        name,
        responses,
        env: vec![],
        args: vec![],
        token_file: Some(true),
        exit,
        calls,
        dry_run: false,
        trigger: "schedule",
    };
    vec![
        case("calls again while more_remaining", vec![more.clone(), more.clone(), done.clone()], 0, 3),
        Case {
            env: vec![("TAVLE_RETENTION_MAX_CALLS", "4")],
            ..case("stops after TAVLE_RETENTION_MAX_CALLS calls", vec![more.clone()], 4, 4)
        },
        Case {
            env: vec![("TAVLE_RETENTION_DRY_RUN", "true")],
            dry_run: true,
            trigger: "manual",
            ..case("dry run: one call, never repeated", vec![report("more_remaining", true, true)], 0, 1)
        },
        case("a failed run", vec![report("failed", false, false)], 1, 1),
        case("another run holds the lock", vec![problem(409, "conflict")], 3, 3),
        case("the lock is free again", vec![problem(409, "conflict"), done.clone()], 0, 2),
        case("token refused", vec![problem(401, "unauthorized")], 2, 1),
        case("server error", vec![problem(500, "internal")], 1, 1),
        case("an answer that is no run report", vec![(200, "{}".to_string())], 1, 1),
        Case { token_file: None, ..case("no token file", vec![done.clone()], 2, 0) },
        Case {
            env: vec![("TAVLE_RETENTION_TRIGGER", "manual")],
            token_file: Some(false),
            trigger: "manual",
            ..case("manual trigger, token file without a final newline", vec![done.clone()], 0, 1)
        },
    ]
}

#[test]
fn retention_scripts_behave_against_a_fake_endpoint() {
    assert!(tool_available("curl", "--version"), "this test runs the scheduler scripts, which need curl on PATH");
    let script = repo_root().join("infra/systemd/tavle-retention-run");
    let cron = cron_script(&load_manifests());
    // A token like the real one (32 random bytes, base64) that no other process has.
    let token = {
        use base64::Engine as _;
        let bytes: Vec<u8> = [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()].iter().flat_map(|u| *u.as_bytes()).collect();
        base64::engine::general_purpose::STANDARD.encode(bytes)
    };

    // The watcher can see a leak: a process with the token as an argument.
    let mut witness = Command::new("sh").args(["-c", "sleep 5", &token]).spawn().expect("spawn sh");
    std::thread::sleep(Duration::from_millis(100));
    let seen = processes_holding(&token);
    witness.kill().ok();
    witness.wait().ok();
    assert!(!seen.is_empty(), "the /proc watcher does not find a token on a command line");

    let mut runs = vec![];
    for runner in [Runner::Systemd, Runner::CronJob] {
        let mut cs = cases();
        if runner == Runner::Systemd {
            cs.push(Case {
                // The argument alone, without TAVLE_RETENTION_DRY_RUN.
                args: vec!["--dry-run"],
                env: vec![],
                ..Case { name: "--dry-run", ..cases().remove(2) }
            });
            cs.push(Case {
                args: vec!["--manual"],
                trigger: "manual",
                ..Case { name: "--manual", ..cases().remove(0) }
            });
        }
        for c in cs {
            runs.push((runner, c));
        }
    }
    let mut failures = Vec::new();
    for (runner, c) in &runs {
        let dir = temp_dir("retention-run");
        if let Some(newline) = c.token_file {
            let text = if newline { format!("{token}\n") } else { token.clone() };
            std::fs::write(dir.join("scheduler_token"), text).unwrap();
        }
        let endpoint = FakeEndpoint::start(c.responses.clone(), token.clone());
        let mut env: Vec<(&str, String)> = vec![
            ("TAVLE_RETENTION_URL", format!("http://{}/internal/retention/run", endpoint.addr)),
            ("TAVLE_RETENTION_RETRY_SECONDS", "0".into()),
            ("TAVLE_RETENTION_MAX_TIME", "10".into()),
        ];
        env.extend(c.env.iter().map(|(k, v)| (*k, v.to_string())));
        let run = run_script(*runner, &script, &cron, &dir, &env, &c.args);
        let seen = endpoint.finish();
        std::fs::remove_dir_all(&dir).ok();

        let who = format!("{runner:?} / {}", c.name);
        let mut wrong = Vec::new();
        if run.code != Some(c.exit) {
            wrong.push(format!("exit {:?}, expected {}", run.code, c.exit));
        }
        if seen.len() != c.calls {
            wrong.push(format!("{} call(s), expected {}", seen.len(), c.calls));
        }
        let path = if c.dry_run { "/internal/retention/run?dry_run=true" } else { "/internal/retention/run" };
        for (i, r) in seen.iter().enumerate() {
            if r.request_line != format!("POST {path} HTTP/1.1") {
                wrong.push(format!("call {}: {:?}", i + 1, r.request_line));
            }
            if r.headers.get("authorization") != Some(&format!("Bearer {token}")) {
                wrong.push(format!("call {}: no or a wrong Authorization header", i + 1));
            }
            if r.headers.get("content-type").map(String::as_str) != Some("application/json") {
                wrong.push(format!("call {}: content-type {:?}", i + 1, r.headers.get("content-type")));
            }
            if r.body != format!("{{\"trigger\":\"{}\"}}", c.trigger) {
                wrong.push(format!("call {}: body {:?}", i + 1, r.body));
            }
            wrong.extend(r.leaks.iter().map(|l| format!("call {}: {l}", i + 1)));
        }
        if run.stdout.contains(&token) || run.stderr.contains(&token) {
            wrong.push("printed the token".into());
        }
        if !wrong.is_empty() {
            failures.push(format!(
                "{who}: {}\n    stdout: {}\n    stderr: {}",
                wrong.join("; "),
                run.stdout.trim(),
                run.stderr.trim()
            ));
        }
    }
    assert!(failures.is_empty(), "scheduler scripts:\n  - {}", failures.join("\n  - "));

    // Nothing listens: curl fails, and so does the script.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let dir = temp_dir("retention-run");
    std::fs::write(dir.join("scheduler_token"), format!("{token}\n")).unwrap();
    for runner in [Runner::Systemd, Runner::CronJob] {
        let env = [("TAVLE_RETENTION_URL", format!("http://{closed}/internal/retention/run"))];
        let run = run_script(runner, &script, &cron, &dir, &env, &[]);
        assert_eq!(run.code, Some(1), "{runner:?}, nothing listening: {}", run.stderr);
        assert!(run.stderr.contains("curl failed"), "{runner:?}: {}", run.stderr);
    }
    std::fs::remove_dir_all(&dir).ok();
}
