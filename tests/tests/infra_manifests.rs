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
//! * the Spin runtime config lists every component that talks to PostgreSQL;
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
            out.push((n.to_string(), None));
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
                for p in ["/spec/image", "/spec/executor", "/spec/runtimeConfig/loadFromSecret"] {
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

        // Runtime config: a Secret with runtime-config.toml; PostgreSQL components listed.
        if let Some(rc) = str_at(&app.value, &["spec", "runtimeConfig", "loadFromSecret"]) {
            match es_by_target.get(rc) {
                None => {
                    problems.push(format!("{who}: runtimeConfig secret {rc:?} is not produced by an ExternalSecret"))
                }
                Some(es) => match str_at(&es.value, &["spec", "target", "template", "data", "runtime-config.toml"]) {
                    None => problems.push(format!("{}: must template the key runtime-config.toml", es.id())),
                    Some(toml_text) => match toml_text.parse::<toml::Table>() {
                        Err(e) => problems.push(format!("{}: runtime-config.toml is not TOML: {e}", es.id())),
                        Ok(rt) => {
                            let mut listed = BTreeSet::new();
                            for tls in rt.get("client_tls").and_then(|t| t.as_array()).into_iter().flatten() {
                                for c in tls.get("component_ids").and_then(|c| c.as_array()).into_iter().flatten() {
                                    if let Some(c) = c.as_str() {
                                        listed.insert(c.to_string());
                                    }
                                }
                            }
                            for c in spin.pg_components.difference(&listed) {
                                problems.push(format!(
                                    "{}: component {c:?} connects to PostgreSQL but is missing from [[client_tls]] component_ids",
                                    es.id()
                                ));
                            }
                            for c in listed.iter().filter(|c| !spin.component_refs.contains_key(*c)) {
                                problems.push(format!("{}: [[client_tls]] lists unknown component {c:?}", es.id()));
                            }
                        }
                    },
                },
            }
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

#[test]
fn fails_when_a_postgres_component_is_missing_from_runtime_config() {
    let spin = format!(
        "{}\n[component.newcomer]\nsource = \"x.wasm\"\nallowed_outbound_hosts = [\"postgres://{{{{ db_host }}}}\"]\n[component.newcomer.variables]\ndb_url = \"{{{{ db_url }}}}\"\n",
        load_spin_toml()
    );
    assert_flags(&check_deployment(&spin, &load_manifests(), None), "component \"newcomer\" connects to PostgreSQL");
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
