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
//! * the retention CronJob stays suspended (and out of the variable check) until
//!   `spin.toml` routes `/internal/retention/...`; after that it must be active and its
//!   token must be a secret variable of `spin.toml`.
//!
//! The negative tests run the same checker on in-memory variants of the real files
//! to prove that each rule can fail.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Namespace every namespaced object must live in.
const NAMESPACE: &str = "tavle";
/// Route prefix served by the (future) retention component.
const RETENTION_ROUTE: &str = "/internal/retention";
/// Annotation that marks a manifest as an inactive template.
const INACTIVE_ANNOTATION: &str = "tavle/inactive-until";

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
    /// components with a `postgres://` outbound host
    pg_components: BTreeSet<String>,
    /// components with an HTTP(S) outbound host (the only ones `[[client_tls]]` can concern)
    http_components: BTreeSet<String>,
    /// `[[trigger.http]]` routes
    routes: Vec<String>,
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
            if let Some(vars) = comp.get("variables").and_then(|v| v.as_table()) {
                for value in vars.values() {
                    if let Some(s) = value.as_str() {
                        refs.extend(template_refs(s));
                    }
                }
            }
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
                spin.routes.push(r.to_string());
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

    // --- other workloads: secrets exist; retention CronJob gating --------------------
    let retention_live = spin.routes.iter().any(|r| r.starts_with(RETENTION_ROUTE));
    for d in &docs {
        let Some(spec) = pod_spec(d) else { continue };
        let is_retention = d.kind() == "CronJob" && containers_text(spec).contains(RETENTION_ROUTE);
        let refs = pod_secret_refs(spec);
        for (name, key) in &refs {
            check_secret_ref(&mut problems, &d.id(), name, key.as_deref());
        }
        if !is_retention {
            continue;
        }
        let suspended = d.value.pointer("/spec/suspend").and_then(|s| s.as_bool()) == Some(true);
        let marked = d.value.pointer("/metadata/annotations").and_then(|a| a.get(INACTIVE_ANNOTATION)).is_some();
        if !retention_live {
            // Inactive template: excluded from the variable check until the route exists.
            if !suspended || !marked {
                problems.push(format!(
                    "{}: spin.toml has no {RETENTION_ROUTE}/... route yet, so the CronJob must stay `suspend: true` with the {INACTIVE_ANNOTATION:?} annotation",
                    d.id()
                ));
            }
        } else {
            if suspended || marked {
                problems.push(format!(
                    "{}: spin.toml now routes {RETENTION_ROUTE}/...: activate the CronJob (remove suspend and the {INACTIVE_ANNOTATION:?} annotation)",
                    d.id()
                ));
            }
            for (name, key) in &refs {
                let Some(key) = key else { continue };
                match spin.vars.get(key) {
                    Some(v) if v.secret => {}
                    _ => problems.push(format!(
                        "{}: token key {key:?} (Secret {name:?}) must be a `secret = true` variable of spin.toml that the retention component checks",
                        d.id()
                    )),
                }
            }
        }
    }
    if !retention_live
        && !docs
            .iter()
            .any(|d| d.kind() == "CronJob" && pod_spec(d).is_some_and(|s| containers_text(s).contains(RETENTION_ROUTE)))
    {
        problems.push(format!("no CronJob template calling POST {RETENTION_ROUTE}/run"));
    }

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
fn retention_cronjob_is_gated_on_the_route() {
    // Not suspended while the route does not exist yet.
    let files = patched(&load_manifests(), "retention-cronjob.yaml", "\n  suspend: true", "\n  suspend: false");
    assert_flags(&check_deployment(&load_spin_toml(), &files, None), "must stay `suspend: true`");

    // Route exists but the CronJob is still suspended and its token is undeclared.
    let spin =
        format!("{}\n[[trigger.http]]\nroute = \"/internal/retention/...\"\ncomponent = \"login\"\n", load_spin_toml());
    let problems = check_deployment(&spin, &load_manifests(), None);
    assert_flags(&problems, "activate the CronJob");
    assert_flags(&problems, "token key \"scheduler_token\"");
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
