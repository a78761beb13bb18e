//! The OpenAPI document `openapi.yaml` against `spin.toml` and the handlers.
//!
//! * the document is OpenAPI 3.1, every `$ref` resolves, every operation has a
//!   unique `operationId`, every response documents `x-request-id`, and every
//!   error response is `application/problem+json`;
//! * every route of `spin.toml` (`/x/...` meaning `/x` and everything below
//!   it) has at least one documented operation that the route really serves,
//!   and every documented path is served by some route — with negative tests
//!   that run the same checks on in-memory variants;
//! * a tour of real requests through the native host (routed by `spin.toml`)
//!   whose responses must be documented for their operation: status, content
//!   type, required headers, and the body against the documented schema.
//!
//! The full fuzzing conformance run against a live host is `.ci/schemathesis.sh`.

use http::{Method, Request};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use tavle_tests::{project_root, synthetic_id, unix_now, Api, TestApp, TestResponse, ORIGIN};

const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

// ---------------------------------------------------------------------------
// Loading

/// YAML to JSON; mapping keys that YAML reads as numbers (`200:`) or booleans
/// become strings, as OpenAPI means them.
fn yaml_to_json(v: &serde_yaml_ng::Value) -> Value {
    use serde_yaml_ng::Value as Y;
    match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(*b),
        Y::Number(n) => serde_json::to_value(n).expect("a YAML number is a JSON number"),
        Y::String(s) => Value::String(s.clone()),
        Y::Sequence(items) => Value::Array(items.iter().map(yaml_to_json).collect()),
        Y::Mapping(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let key = match k {
                    Y::String(s) => s.clone(),
                    Y::Number(n) => n.to_string(),
                    Y::Bool(b) => b.to_string(),
                    other => panic!("unsupported mapping key {other:?}"),
                };
                out.insert(key, yaml_to_json(v));
            }
            Value::Object(out)
        }
        Y::Tagged(t) => yaml_to_json(&t.value),
    }
}

fn parse_doc(text: &str) -> Value {
    let y: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).expect("openapi.yaml is YAML");
    yaml_to_json(&y)
}

fn load_doc() -> Value {
    let path = project_root().join("openapi.yaml");
    parse_doc(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())))
}

fn load_spin_toml() -> String {
    let path = project_root().join("spin.toml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// Routes of spin.toml against documented paths

/// The HTTP routes of `[[trigger.http]]`. Private routes (`route = { private
/// = true }`) have no URL and are skipped.
fn spin_routes(manifest: &str) -> Result<Vec<String>, String> {
    let t: toml::Value = toml::from_str(manifest).map_err(|e| format!("spin.toml: {e}"))?;
    let triggers = t
        .get("trigger")
        .and_then(|t| t.get("http"))
        .and_then(|h| h.as_array())
        .ok_or("spin.toml has no [[trigger.http]]")?;
    let mut routes = Vec::new();
    for trig in triggers {
        match trig.get("route") {
            Some(toml::Value::String(r)) => routes.push(r.clone()),
            Some(toml::Value::Table(_)) => {}
            other => return Err(format!("[[trigger.http]] with an unexpected route {other:?}")),
        }
    }
    Ok(routes)
}

/// Documented paths that have at least one operation.
fn documented_paths(doc: &Value) -> Vec<String> {
    doc["paths"]
        .as_object()
        .map(|paths| {
            paths
                .iter()
                .filter(|(_, item)| METHODS.iter().any(|m| item.get(*m).is_some()))
                .map(|(p, _)| p.clone())
                .collect()
        })
        .unwrap_or_default()
}

fn segments(path: &str) -> Vec<&str> {
    path.trim_start_matches('/').split('/').filter(|s| !s.is_empty()).collect()
}

/// Whether a Spin route serves every URL of a documented path template.
/// `/x/...` serves `/x` and everything below it; a route segment `:name`
/// serves any one segment; a literal route segment serves only that literal
/// (not a `{param}` of the document, which stands for any value).
fn route_serves(route: &str, path: &str) -> bool {
    let (prefix, wildcard) = match route.strip_suffix("/...") {
        Some(p) => (p, true),
        None => (route, false),
    };
    let (r, p) = (segments(prefix), segments(path));
    if p.len() < r.len() || (!wildcard && p.len() != r.len()) {
        return false;
    }
    r.iter().zip(&p).all(|(rs, ps)| rs.starts_with(':') || rs == ps)
}

/// The route Spin picks for a documented path: exact routes before
/// wildcards, then the longest (as the native host does).
fn serving_route<'a>(routes: &'a [String], path: &str) -> Option<&'a str> {
    routes.iter().filter(|r| route_serves(r, path)).max_by_key(|r| (!r.ends_with("/..."), r.len())).map(String::as_str)
}

/// Routes of the manifest that serve no documented operation.
fn undocumented_routes(manifest: &str, doc: &Value) -> Result<Vec<String>, String> {
    let routes = spin_routes(manifest)?;
    let served: BTreeSet<&str> = documented_paths(doc).iter().filter_map(|p| serving_route(&routes, p)).collect();
    Ok(routes.iter().filter(|r| !served.contains(r.as_str())).cloned().collect())
}

/// Documented paths that no route of the manifest serves.
fn unrouted_paths(manifest: &str, doc: &Value) -> Result<Vec<String>, String> {
    let routes = spin_routes(manifest)?;
    Ok(documented_paths(doc).into_iter().filter(|p| serving_route(&routes, p).is_none()).collect())
}

#[test]
fn document_is_openapi_3_1() {
    let doc = load_doc();
    let version = doc["openapi"].as_str().expect("`openapi` is a string");
    assert!(version.starts_with("3.1."), "openapi: {version} (want 3.1.x)");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    assert!(!documented_paths(&doc).is_empty());
}

#[test]
fn every_spin_route_is_documented() {
    let missing = undocumented_routes(&load_spin_toml(), &load_doc()).unwrap();
    assert!(missing.is_empty(), "spin.toml routes without any documented operation in openapi.yaml: {missing:?}");
}

#[test]
fn every_documented_path_is_routed() {
    let extra = unrouted_paths(&load_spin_toml(), &load_doc()).unwrap();
    assert!(extra.is_empty(), "openapi.yaml documents paths no spin.toml route serves: {extra:?}");
}

#[test]
fn an_undocumented_route_fails_the_check() {
    let doc = load_doc();
    let real = load_spin_toml();
    // Relative to the real manifest, so that this test proves only that the
    // check can fail (`every_spin_route_is_documented` judges the real one).
    let baseline = undocumented_routes(&real, &doc).unwrap();
    for route in ["/reports/...", "/auth", "/admin/schools/:id"] {
        let manifest = format!("{real}\n[[trigger.http]]\nroute = \"{route}\"\ncomponent = \"login\"\n");
        let missing = undocumented_routes(&manifest, &doc).unwrap();
        let mut want = baseline.clone();
        want.push(route.to_owned());
        assert_eq!(missing, want, "an extra route {route} must be reported");
    }
    // A more specific route takes paths away from the wildcard: if it serves
    // every documented path, the wildcard is left undocumented.
    let manifest = "[[trigger.http]]\nroute = \"/auth/...\"\ncomponent = \"login\"\n\
                    [[trigger.http]]\nroute = \"/auth/:op\"\ncomponent = \"other\"\n";
    let doc_auth = json!({"openapi": "3.1.0", "paths": {"/auth/login": {"post": {}}}});
    assert_eq!(undocumented_routes(manifest, &doc_auth).unwrap(), vec!["/auth/...".to_owned()]);
    // Path items without operations document nothing.
    let empty = json!({"openapi": "3.1.0", "paths": {"/auth/login": {"parameters": []}}});
    assert_eq!(undocumented_routes(&real, &empty).unwrap().len(), spin_routes(&real).unwrap().len());
    // A private route has no URL to document.
    let private = format!("{real}\n[[trigger.http]]\nroute = {{ private = true }}\ncomponent = \"login\"\n");
    assert!(undocumented_routes(&private, &doc).unwrap().is_empty());
}

#[test]
fn a_documented_path_without_a_route_fails_the_check() {
    let mut doc = load_doc();
    doc["paths"]["/reports/{id}"] = json!({"get": {"responses": {"200": {"description": "x"}}}});
    doc["paths"]["/auth"] = json!({"get": {"responses": {"200": {"description": "x"}}}});
    doc["paths"]["/admin/user"] = json!({"get": {"responses": {"200": {"description": "x"}}}});
    let baseline = unrouted_paths(&load_spin_toml(), &load_doc()).unwrap();
    let extra = unrouted_paths(&load_spin_toml(), &doc).unwrap();
    let added: Vec<&String> = extra.iter().filter(|p| !baseline.contains(p)).collect();
    assert_eq!(added, ["/admin/user", "/reports/{id}"], "`/auth` is under `/auth/...`");
}

#[test]
fn route_matching_follows_spin() {
    assert!(route_serves("/auth/...", "/auth"));
    assert!(route_serves("/auth/...", "/auth/login"));
    assert!(route_serves("/admin/users/...", "/admin/users/{id}/roles"));
    assert!(!route_serves("/admin/users/...", "/admin/usersx"));
    assert!(!route_serves("/admin/users/...", "/admin"));
    assert!(route_serves("/...", "/anything/{x}"));
    assert!(route_serves("/a/b", "/a/b"));
    assert!(!route_serves("/a/b", "/a/b/c"));
    assert!(route_serves("/a/:id", "/a/{id}"));
    assert!(!route_serves("/a/me", "/a/{id}"), "a literal route does not serve every value of {{id}}");
    assert_eq!(
        serving_route(&["/a/...".to_owned(), "/a/b".to_owned()], "/a/b"),
        Some("/a/b"),
        "exact routes win over wildcards"
    );
}

// ---------------------------------------------------------------------------
// Document structure

/// Resolves a local `$ref` (`#/components/...`).
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    let mut v = v;
    for _ in 0..16 {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("non-local $ref {r}"));
                v = doc.pointer(pointer).unwrap_or_else(|| panic!("unresolved $ref {r}"));
            }
            None => return v,
        }
    }
    panic!("$ref cycle")
}

fn all_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                out.push(r.clone());
            }
            m.values().for_each(|v| all_refs(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| all_refs(v, out)),
        _ => {}
    }
}

/// (METHOD, path, operation) for every documented operation.
fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for m in METHODS {
            if let Some(op) = item.get(m) {
                out.push((m.to_uppercase(), path.clone(), op));
            }
        }
    }
    out
}

/// Header names (lower-cased) of a response object, with their definitions.
fn response_headers<'a>(doc: &'a Value, response: &'a Value) -> BTreeMap<String, &'a Value> {
    response["headers"]
        .as_object()
        .map(|h| h.iter().map(|(k, v)| (k.to_lowercase(), resolve(doc, v))).collect())
        .unwrap_or_default()
}

#[test]
fn document_is_consistent() {
    let doc = load_doc();
    let mut refs = Vec::new();
    all_refs(&doc, &mut refs);
    for r in &refs {
        let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("non-local $ref {r}"));
        assert!(doc.pointer(pointer).is_some(), "unresolved $ref {r}");
    }
    let schemes: BTreeSet<&str> =
        doc["components"]["securitySchemes"].as_object().expect("securitySchemes").keys().map(String::as_str).collect();
    assert!(schemes.contains("bearerAuth") && schemes.contains("sessionCookie"), "{schemes:?}");
    assert_eq!(doc["components"]["securitySchemes"]["sessionCookie"]["name"], "__Host-tavle_session");

    let mut ids = BTreeSet::new();
    for (method, path, op) in operations(&doc) {
        let what = format!("{method} {path}");
        let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{what}: no operationId"));
        assert!(ids.insert(id.to_owned()), "{what}: duplicate operationId {id}");
        for r in op["security"].as_array().or(doc["security"].as_array()).into_iter().flatten() {
            for name in r.as_object().expect("security requirement").keys() {
                assert!(schemes.contains(name.as_str()), "{what}: unknown security scheme {name}");
            }
        }
        let responses = op["responses"].as_object().unwrap_or_else(|| panic!("{what}: no responses"));
        assert!(responses.keys().any(|s| s.starts_with('2')), "{what}: no success response");
        let secured = op.get("security").is_none_or(|s| s.as_array().is_some_and(|a| !a.is_empty()));
        if secured {
            assert!(responses.contains_key("401"), "{what}: authenticated but no 401 documented");
        }
        if op.get("requestBody").is_some() {
            for status in ["400", "413", "415", "422"] {
                assert!(responses.contains_key(status), "{what}: reads a JSON body but does not document {status}");
            }
            let schema = resolve(&doc, &op["requestBody"]["content"]["application/json"]["schema"]);
            assert_eq!(schema["additionalProperties"], false, "{what}: request bodies deny unknown members");
        }
        assert!(responses.contains_key("503"), "{what}: every operation uses the database: document 503");
        for (status, response) in responses {
            let response = resolve(&doc, response);
            let headers = response_headers(&doc, response);
            assert!(
                headers.get("x-request-id").is_some_and(|h| h["required"] == true),
                "{what} {status}: x-request-id is not a required header"
            );
            if status == "503" {
                assert!(
                    headers.get("retry-after").is_some_and(|h| h["required"] == true),
                    "{what}: 503 without Retry-After"
                );
            }
            let content = response["content"].as_object();
            if status.starts_with('4') || status.starts_with('5') {
                let types: Vec<&String> = content.map(|c| c.keys().collect()).unwrap_or_default();
                assert_eq!(types, vec!["application/problem+json"], "{what} {status}: errors are problem+json");
            } else if status == "204" {
                assert!(content.is_none(), "{what}: 204 has no content");
            }
        }
        for param in op["parameters"].as_array().into_iter().flatten() {
            let param = resolve(&doc, param);
            assert!(param["schema"].is_object(), "{what}: parameter without schema");
        }
    }
}

// ---------------------------------------------------------------------------
// No personal data in URLs
//
// Paths and query strings end up in every proxy's and ingress's access log:
// no operation may take a name, an identity number, an e-mail address or a
// Feide username there (searches take them in a POST body).

/// Parameter names (compared without case, `-` or `_`) that would carry
/// personal data, whole ...
const PERSONAL_NAMES: &[&str] = &["q", "term", "terms", "fnr", "dnr", "ssn", "nin", "cpr", "user", "login", "mail"];
/// ... or anywhere in the name (`pupil_name`, `feide_username`, `e-mail`,
/// `identity_number`, `search_text`).
const PERSONAL_FRAGMENTS: &[&str] = &[
    "name",
    "email",
    "feide",
    "identity",
    "fodselsnummer",
    "fødselsnummer",
    "personnummer",
    "dnumber",
    "search",
    "query",
];
/// What a parameter's description says when it takes such data.
const PERSONAL_PHRASES: &[&str] = &[
    "name search",
    "searches names",
    "search by name",
    "given name",
    "family name",
    "identity number",
    "fødselsnummer",
    "d-number",
    "e-mail",
    "email address",
    "feide username",
];
/// String formats of such data.
const PERSONAL_FORMATS: &[&str] = &["email", "idn-email"];

fn personal_parameter_name(name: &str) -> bool {
    let compact: String = name.to_lowercase().chars().filter(|c| !matches!(c, '-' | '_' | '.' | ' ')).collect();
    PERSONAL_NAMES.contains(&compact.as_str()) || PERSONAL_FRAGMENTS.iter().any(|f| compact.contains(f))
}

/// Formats and patterns of personal data anywhere in a parameter's schema:
/// an e-mail format, a pattern for an address (`@`) or for eleven digits.
fn personal_schema(doc: &Value, schema: &Value, at: &str, out: &mut Vec<String>) {
    let schema = resolve(doc, schema);
    if let Some(format) = schema.get("format").and_then(Value::as_str) {
        if PERSONAL_FORMATS.contains(&format) {
            out.push(format!("{at}: format `{format}`"));
        }
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
        let compact: String = pattern.chars().filter(|c| !c.is_whitespace()).collect();
        if compact.contains('@') || compact.contains("{11") || compact.contains(",11}") {
            out.push(format!("{at}: pattern `{pattern}`"));
        }
    }
    for key in ["oneOf", "anyOf", "allOf", "prefixItems"] {
        for sub in schema.get(key).and_then(Value::as_array).into_iter().flatten() {
            personal_schema(doc, sub, at, out);
        }
    }
    for key in ["items", "contains", "additionalProperties", "not"] {
        if let Some(sub) = schema.get(key).filter(|s| s.is_object()) {
            personal_schema(doc, sub, at, out);
        }
    }
    for sub in schema.get("properties").and_then(Value::as_object).into_iter().flat_map(|p| p.values()) {
        personal_schema(doc, sub, at, out);
    }
}

/// Every path or query parameter of every operation (declared on the
/// operation or on its path item, directly or by `$ref`), and every variable
/// of a path template, that takes personal data.
fn personal_data_in_urls(doc: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for (method, path, op) in operations(doc) {
        let what = format!("{method} {path}");
        for segment in segments(&path) {
            if let Some(var) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                if personal_parameter_name(var) {
                    out.push(format!("{what}: path variable `{var}`"));
                }
            }
        }
        let declared = doc["paths"][&path]["parameters"].as_array().into_iter().flatten();
        for param in declared.chain(op["parameters"].as_array().into_iter().flatten()) {
            let param = resolve(doc, param);
            let (Some(name), Some(place)) = (param["name"].as_str(), param["in"].as_str()) else {
                out.push(format!("{what}: a parameter without name or `in`"));
                continue;
            };
            if !matches!(place, "path" | "query") {
                continue;
            }
            let at = format!("{what}: {place} parameter `{name}`");
            if personal_parameter_name(name) {
                out.push(format!("{at} is named for personal data"));
            }
            let description = param["description"].as_str().unwrap_or("").to_lowercase();
            if let Some(phrase) = PERSONAL_PHRASES.iter().find(|p| description.contains(*p)) {
                out.push(format!("{at} is described as taking personal data (\"{phrase}\")"));
            }
            personal_schema(doc, &param["schema"], &at, &mut out);
            for media in param["content"].as_object().into_iter().flat_map(|c| c.values()) {
                personal_schema(doc, &media["schema"], &at, &mut out);
            }
        }
    }
    out
}

#[test]
fn no_operation_takes_personal_data_in_its_path_or_query() {
    let found = personal_data_in_urls(&load_doc());
    assert!(
        found.is_empty(),
        "personal data in URLs (proxies and ingresses log them; send it in a POST body):\n  {}",
        found.join("\n  ")
    );
}

#[test]
fn personal_data_in_a_url_fails_the_check() {
    // Relative to the real document, so that this test proves only that the
    // check can fail (the one above judges the real document).
    let baseline = personal_data_in_urls(&load_doc()).len();
    let added = |mutate: &dyn Fn(&mut Value)| {
        let mut doc = load_doc();
        mutate(&mut doc);
        personal_data_in_urls(&doc).len() - baseline
    };
    let query = |name: &str| json!({"name": name, "in": "query", "schema": {"type": "string"}});
    let on_schools = |param: Value| {
        move |doc: &mut Value| doc["paths"]["/schools"]["get"]["parameters"].as_array_mut().unwrap().push(param.clone())
    };
    for name in [
        "q",
        "name",
        "given_name",
        "family_name",
        "identity_number",
        "identityNumber",
        "fnr",
        "email",
        "e-mail",
        "feide",
        "feide_username",
        "username",
        "search",
        "pupil_name",
        "FamilyName",
    ] {
        assert_eq!(added(&on_schools(query(name))), 1, "a query parameter `{name}`");
    }
    // Ids, filters and paging are fine.
    for name in ["school_id", "group_id", "year_level", "subject", "cursor", "limit", "from", "to"] {
        assert_eq!(added(&on_schools(query(name))), 0, "a query parameter `{name}`");
    }
    // A header is not part of the URL.
    assert_eq!(added(&on_schools(json!({"name": "name", "in": "header", "schema": {"type": "string"}}))), 0);
    // Described, formatted or patterned as personal data, whatever the name.
    let described = json!({"name": "who", "in": "query", "description": "The pupil's Identity number.",
                           "schema": {"type": "string"}});
    assert_eq!(added(&on_schools(described)), 1);
    let formatted = json!({"name": "who", "in": "query", "schema": {"type": "string", "format": "email"}});
    assert_eq!(added(&on_schools(formatted)), 1);
    for pattern in ["^[0-9]{11}$", "^\\d{6} ?\\d{5}$|^\\d{11}$", "^[^@]+@[^@]+$"] {
        let patterned = json!({"name": "who", "in": "query",
                               "schema": {"oneOf": [{"type": "null"}, {"type": "string", "pattern": pattern}]}});
        assert_eq!(added(&on_schools(patterned)), 1, "{pattern}");
    }
    // Through a `$ref`, and on the path item rather than the operation.
    assert_eq!(
        added(&|doc: &mut Value| {
            doc["components"]["parameters"]["ByName"] = query("family_name");
            doc["paths"]["/schools"]["parameters"] = json!([{"$ref": "#/components/parameters/ByName"}]);
        }),
        1
    );
    // A path template naming personal data.
    assert_eq!(
        added(&|doc: &mut Value| {
            doc["paths"]["/pupils/by-fnr/{fnr}"] = json!({"get": {
                "parameters": [{"name": "fnr", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "x"}}}});
        }),
        2,
        "the template variable and its parameter"
    );
    assert_eq!(
        added(&|doc: &mut Value| {
            doc["paths"]["/staff/{email}"] = json!({"get": {"responses": {"200": {"description": "x"}}}});
        }),
        1,
        "a template variable without a declared parameter"
    );
}

// ---------------------------------------------------------------------------
// A minimal JSON Schema validator for the keywords the document uses. It
// refuses unknown keywords so that the document cannot quietly outgrow it.

const KNOWN_KEYWORDS: &[&str] = &[
    "$ref",
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "const",
    "oneOf",
    "allOf",
    "anyOf",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "minItems",
    "maxItems",
    "uniqueItems",
    "format",
    "pattern",
    "description",
    "default",
    "example",
    "examples",
    "discriminator",
    "title",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "unevaluatedProperties",
];

fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn is_date_time(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && (b[10] == b'T' || b[10] == b't')
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && (s.ends_with('Z') || s.ends_with('z') || s[19..].contains(['+', '-']))
}

/// Property names a schema declares itself or through `allOf` (what
/// `unevaluatedProperties` regards as evaluated, for the schemas used here).
fn declared_properties(doc: &Value, schema: &Value, out: &mut BTreeSet<String>) {
    let schema = resolve(doc, schema);
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        out.extend(props.keys().cloned());
    }
    for sub in schema.get("allOf").and_then(Value::as_array).into_iter().flatten() {
        declared_properties(doc, sub, out);
    }
}

fn validate(doc: &Value, schema: &Value, v: &Value, at: &str, errors: &mut Vec<String>) {
    let schema = resolve(doc, schema);
    let Some(s) = schema.as_object() else {
        if schema == &Value::Bool(false) {
            errors.push(format!("{at}: not allowed"));
        }
        return;
    };
    for k in s.keys() {
        assert!(KNOWN_KEYWORDS.contains(&k.as_str()), "the test validator does not know keyword `{k}`");
    }
    if let Some(t) = s.get("type") {
        let actual = type_of(v);
        let ok = |want: &str| want == actual || (want == "number" && actual == "integer");
        let fits = match t {
            Value::String(want) => ok(want),
            Value::Array(wants) => wants.iter().filter_map(Value::as_str).any(ok),
            _ => true,
        };
        if !fits {
            errors.push(format!("{at}: {actual} is not of type {t}"));
            return;
        }
    }
    if let Some(c) = s.get("const") {
        if c != v {
            errors.push(format!("{at}: {v} is not {c}"));
        }
    }
    if let Some(Value::Array(options)) = s.get("enum") {
        if !options.contains(v) {
            errors.push(format!("{at}: {v} is not one of {options:?}"));
        }
    }
    if let Some(Value::Array(all)) = s.get("allOf") {
        all.iter().for_each(|sub| validate(doc, sub, v, at, errors));
    }
    for (key, exactly_one) in [("oneOf", true), ("anyOf", false)] {
        if let Some(Value::Array(options)) = s.get(key) {
            let matching = options
                .iter()
                .filter(|sub| {
                    let mut e = Vec::new();
                    validate(doc, sub, v, at, &mut e);
                    e.is_empty()
                })
                .count();
            if matching == 0 || (exactly_one && matching > 1) {
                errors.push(format!("{at}: {v} matches {matching} of the {key} schemas"));
            }
        }
    }
    match v {
        Value::String(text) => {
            let n = text.chars().count() as u64;
            if s.get("minLength").and_then(Value::as_u64).is_some_and(|m| n < m) {
                errors.push(format!("{at}: shorter than minLength"));
            }
            if s.get("maxLength").and_then(Value::as_u64).is_some_and(|m| n > m) {
                errors.push(format!("{at}: longer than maxLength"));
            }
            match s.get("format").and_then(Value::as_str) {
                Some("uuid") if uuid::Uuid::try_parse(text).is_err() || text.len() != 36 => {
                    errors.push(format!("{at}: {text:?} is not a uuid"))
                }
                Some("date-time") if !is_date_time(text) => errors.push(format!("{at}: {text:?} is not a date-time")),
                Some("date") if text.len() != 10 || !is_date_time(&format!("{text}T00:00:00Z")) => {
                    errors.push(format!("{at}: {text:?} is not a date"))
                }
                _ => {}
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or_default();
            if s.get("minimum").and_then(Value::as_f64).is_some_and(|m| x < m) {
                errors.push(format!("{at}: {x} < minimum"));
            }
            if s.get("maximum").and_then(Value::as_f64).is_some_and(|m| x > m) {
                errors.push(format!("{at}: {x} > maximum"));
            }
            if s.get("exclusiveMinimum").and_then(Value::as_f64).is_some_and(|m| x <= m) {
                errors.push(format!("{at}: {x} <= exclusiveMinimum"));
            }
            if s.get("exclusiveMaximum").and_then(Value::as_f64).is_some_and(|m| x >= m) {
                errors.push(format!("{at}: {x} >= exclusiveMaximum"));
            }
        }
        Value::Array(items) => {
            let n = items.len() as u64;
            if s.get("minItems").and_then(Value::as_u64).is_some_and(|m| n < m) {
                errors.push(format!("{at}: fewer than minItems"));
            }
            if s.get("maxItems").and_then(Value::as_u64).is_some_and(|m| n > m) {
                errors.push(format!("{at}: more than maxItems"));
            }
            if s.get("uniqueItems") == Some(&Value::Bool(true)) {
                let distinct: BTreeSet<String> = items.iter().map(Value::to_string).collect();
                if distinct.len() != items.len() {
                    errors.push(format!("{at}: items are not unique"));
                }
            }
            if let Some(item_schema) = s.get("items") {
                for (i, item) in items.iter().enumerate() {
                    validate(doc, item_schema, item, &format!("{at}/{i}"), errors);
                }
            }
        }
        Value::Object(members) => {
            for r in s.get("required").and_then(Value::as_array).into_iter().flatten() {
                let name = r.as_str().expect("required names are strings");
                if !members.contains_key(name) {
                    errors.push(format!("{at}: missing required member `{name}`"));
                }
            }
            if s.get("unevaluatedProperties") == Some(&Value::Bool(false)) {
                let mut declared = BTreeSet::new();
                declared_properties(doc, schema, &mut declared);
                for name in members.keys().filter(|k| !declared.contains(*k)) {
                    errors.push(format!("{at}/{name}: not allowed"));
                }
            }
            let props = s.get("properties").and_then(Value::as_object);
            for (name, value) in members {
                match props.and_then(|p| p.get(name)) {
                    Some(sub) => validate(doc, sub, value, &format!("{at}/{name}"), errors),
                    None => {
                        if let Some(extra) = s.get("additionalProperties") {
                            validate(doc, extra, value, &format!("{at}/{name}"), errors);
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

#[test]
fn the_validator_catches_mismatches() {
    let doc = load_doc();
    let user = json!({"$ref": "#/components/schemas/User"});
    let good = json!({
        "id": "0b8f7a52-3c1e-4f0e-9d53-2f6d1c0a9e11", "username": "ola", "display_name": "Ola",
        "email": null, "active": true, "locked": false, "locked_until": null, "last_login_at": null,
        "created_at": "2025-01-31T07:45:12.123456Z", "language": "nb",
        "roles": [{"role": "teacher", "group_id": "0b8f7a52-3c1e-4f0e-9d53-2f6d1c0a9e11"}, {"role": "tenant_admin"}]
    });
    let mut errors = Vec::new();
    validate(&doc, &user, &good, "", &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    for (pointer, bad) in [
        ("/id", json!("nope")),
        ("/language", json!("sv")),
        ("/created_at", json!("yesterday")),
        ("/roles/0", json!({"role": "teacher"})),
        ("/roles/1", json!({"role": "tenant_admin", "school_id": "0b8f7a52-3c1e-4f0e-9d53-2f6d1c0a9e11"})),
        ("/extra", json!(1)),
    ] {
        let mut v = good.clone();
        match pointer.strip_prefix("/roles/") {
            Some(i) => v["roles"][i.parse::<usize>().unwrap()] = bad,
            None => v[&pointer[1..]] = bad,
        }
        let mut errors = Vec::new();
        validate(&doc, &user, &v, "", &mut errors);
        assert!(!errors.is_empty(), "{pointer} should fail");
    }
}

// ---------------------------------------------------------------------------
// Real handlers against the document

struct Contract {
    doc: Value,
}

impl Contract {
    /// Asserts that `r` is a documented response of `method template` and
    /// returns its status.
    fn check(&self, method: &str, template: &str, r: &TestResponse) -> u16 {
        let doc = &self.doc;
        let what = format!("{method} {template} -> {}: {}", r.status, r.text());
        assert!(r.status < 500, "server error: {what}");
        let op = &doc["paths"][template][method.to_lowercase()];
        assert!(op.is_object(), "{method} {template} is not documented");
        let status = r.status.to_string();
        let response = op["responses"].get(&status).unwrap_or_else(|| panic!("undocumented status: {what}"));
        let response = resolve(doc, response);
        for (name, h) in response_headers(doc, response) {
            let value = r.header(&name);
            if h["required"] == true {
                assert!(value.is_some(), "missing header {name}: {what}");
            }
            if let Some(value) = value {
                let typed = match h["schema"]["type"].as_str() {
                    Some("integer") => {
                        json!(value.parse::<i64>().unwrap_or_else(|_| panic!("{name} is not an integer: {what}")))
                    }
                    _ => json!(value),
                };
                let mut errors = Vec::new();
                validate(doc, &h["schema"], &typed, &format!("header {name}"), &mut errors);
                assert!(errors.is_empty(), "{errors:?}: {what}");
            }
        }
        match response["content"].as_object() {
            None => assert!(r.body.is_empty(), "undocumented body: {what}"),
            Some(content) => {
                let ct = r.header("content-type").unwrap_or_else(|| panic!("no content-type: {what}"));
                let mime = ct.split(';').next().unwrap().trim();
                let media = content.get(mime).unwrap_or_else(|| panic!("undocumented content type {mime}: {what}"));
                let mut errors = Vec::new();
                validate(doc, &media["schema"], &r.json(), "", &mut errors);
                assert!(errors.is_empty(), "body does not match the schema: {errors:?}: {what}");
            }
        }
        r.status
    }
}

fn request(method: Method, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Request<Vec<u8>> {
    let mut b = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(body.to_vec()).unwrap()
}

#[tokio::test]
async fn handlers_answer_as_documented() {
    let c = Contract { doc: load_doc() };
    let app = TestApp::spawn().await;
    let admin = app.seed_tenant("oslo").await;
    let (school, group) = app.seed_school(&admin.tenant_id, "Nordpolen skole").await;

    // Login: success, wrong password, and each kind of malformed request.
    let r = app.login_response("oslo", "admin", &admin.password).await;
    assert_eq!(c.check("POST", "/auth/login", &r), 200);
    let token = r.json()["access_token"].as_str().unwrap().to_owned();
    let cookie = r.header("set-cookie").unwrap().split(';').next().unwrap().to_owned();
    let t = Some(token.as_str());
    for (body, want) in [
        (json!({"tenant": "oslo", "username": "admin", "password": "wrong-Password-1"}), 401),
        (json!({"tenant": "nowhere", "username": "admin", "password": "x"}), 401),
        (json!({"tenant": "oslo", "username": "admin", "password": "x", "remember": true}), 422),
        (json!({"tenant": "oslo", "username": "admin"}), 422),
        (json!({"tenant": "", "username": "admin", "password": "x"}), 422),
        (json!({"tenant": "oslo", "username": "a".repeat(255), "password": "x"}), 422),
    ] {
        let r = app.post("/auth/login", None, body).await;
        assert_eq!(c.check("POST", "/auth/login", &r), want, "{}", r.text());
    }
    for (headers, body, want) in [
        (vec![("content-type", "text/plain")], b"{}".to_vec(), 415),
        (vec![("content-type", "application/json")], b"{\"tenant\":".to_vec(), 400),
        (vec![("content-type", "application/json")], vec![b' '; 70 * 1024], 413),
        (vec![("content-type", "application/json"), ("origin", "https://evil.example")], b"{}".to_vec(), 403),
    ] {
        let r = app.call(request(Method::POST, "/auth/login", &headers, &body)).await;
        assert_eq!(c.check("POST", "/auth/login", &r), want, "{}", r.text());
    }

    // Who am I, refresh, and unauthenticated or cross-site attempts.
    assert_eq!(c.check("GET", "/auth/me", &app.get("/auth/me", &token).await), 200);
    assert_eq!(c.check("GET", "/auth/me", &app.send(Method::GET, "/auth/me", None, None).await), 401);
    assert_eq!(c.check("GET", "/auth/me", &app.get("/auth/me", "not.a.jwt").await), 401);
    // Bearer only: refresh takes the session cookie.
    assert_eq!(c.check("POST", "/auth/refresh", &app.send(Method::POST, "/auth/refresh", t, None).await), 401);
    let by_cookie = app.call(request(Method::POST, "/auth/refresh", &[("cookie", &cookie)], b"")).await;
    assert_eq!(c.check("POST", "/auth/refresh", &by_cookie), 403, "cookie without Origin");
    let by_cookie =
        app.call(request(Method::POST, "/auth/refresh", &[("cookie", &cookie), ("origin", ORIGIN)], b"")).await;
    assert_eq!(c.check("POST", "/auth/refresh", &by_cookie), 200);
    let echoed = app
        .call(request(
            Method::GET,
            "/auth/me",
            &[("x-request-id", "trace-42"), ("authorization", &format!("Bearer {token}"))],
            b"",
        ))
        .await;
    assert_eq!(c.check("GET", "/auth/me", &echoed), 200);
    assert_eq!(echoed.header("x-request-id"), Some("trace-42"));

    // User administration.
    let new_user = |username: &str| {
        json!({"username": username, "display_name": "Kari Larsen", "email": "kari@skole.example",
               "password": "Kx9#mPq2-eksempel", "language": "nn", "roles": [{"role": "teacher", "group_id": group}]})
    };
    let r = app.post("/admin/users", t, new_user("kari")).await;
    assert_eq!(c.check("POST", "/admin/users", &r), 201);
    let kari = r.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(c.check("POST", "/admin/users", &app.post("/admin/users", t, new_user("KARI")).await), 409);
    let mut bad = new_user("x");
    bad["password"] = json!("short");
    bad["roles"] = json!([{"role": "school_leader"}]);
    assert_eq!(c.check("POST", "/admin/users", &app.post("/admin/users", t, bad).await), 422);
    let mut foreign = new_user("per");
    foreign["roles"] = json!([{"role": "teacher", "group_id": uuid::Uuid::new_v4().to_string()}]);
    assert_eq!(c.check("POST", "/admin/users", &app.post("/admin/users", t, foreign).await), 422);
    let r = app
        .post(
            "/admin/users",
            t,
            json!({"username": "rita", "display_name": "Rita", "password": "Kx9#mPq2-rektor",
        "roles": [{"role": "school_leader", "school_id": school}, {"role": "privacy_officer", "school_id": null}]}),
        )
        .await;
    assert_eq!(c.check("POST", "/admin/users", &r), 201);

    for path in ["/admin/users?limit=1", "/admin/users", "/admin/users?limit=200"] {
        let r = app.get(path, &token).await;
        assert_eq!(c.check("GET", "/admin/users", &r), 200);
    }
    let first = app.get("/admin/users?limit=1", &token).await.json();
    let cursor = first["next_cursor"].as_str().expect("three users, pages of one").to_owned();
    assert_eq!(
        c.check("GET", "/admin/users", &app.get(&format!("/admin/users?limit=1&cursor={cursor}"), &token).await),
        200
    );
    for path in [
        "/admin/users?limit=0",
        "/admin/users?limit=201",
        "/admin/users?limit=x",
        "/admin/users?cursor=%%",
        "/admin/users?cursor=bm9wZQ",
    ] {
        assert_eq!(c.check("GET", "/admin/users", &app.get(path, &token).await), 400, "{path}");
    }

    let user_path = |id: &str, action: &str| format!("/admin/users/{id}{action}");
    assert_eq!(c.check("GET", "/admin/users/{id}", &app.get(&user_path(&kari, ""), &token).await), 200);
    for id in [uuid::Uuid::new_v4().to_string(), "not-a-uuid".to_owned()] {
        assert_eq!(c.check("GET", "/admin/users/{id}", &app.get(&user_path(&id, ""), &token).await), 404);
        let r = app.send(Method::POST, &user_path(&id, "/unlock"), t, None).await;
        assert_eq!(c.check("POST", "/admin/users/{id}/unlock", &r), 404);
    }
    let roles =
        json!({"roles": [{"role": "teacher", "group_id": group}, {"role": "school_leader", "school_id": school}]});
    let r = app.send(Method::PUT, &user_path(&kari, "/roles"), t, Some(roles)).await;
    assert_eq!(c.check("PUT", "/admin/users/{id}/roles", &r), 200);
    let r = app.send(Method::PUT, &user_path(&admin.user_id, "/roles"), t, Some(json!({"roles": []}))).await;
    assert_eq!(c.check("PUT", "/admin/users/{id}/roles", &r), 409);
    let r = app.send(Method::PUT, &user_path(&kari, "/roles"), t, Some(json!({"roles": [], "extra": 1}))).await;
    assert_eq!(c.check("PUT", "/admin/users/{id}/roles", &r), 422);
    for action in ["deactivate", "activate", "unlock"] {
        let r = app.send(Method::POST, &user_path(&kari, &format!("/{action}")), t, None).await;
        assert_eq!(c.check("POST", &format!("/admin/users/{{id}}/{action}"), &r), 200, "{action}");
    }
    let r = app.send(Method::POST, &user_path(&admin.user_id, "/deactivate"), t, None).await;
    assert_eq!(c.check("POST", "/admin/users/{id}/deactivate", &r), 409);

    // A teacher is not an admin; and changes their own password.
    let teacher = app
        .create_user(&app.login(&admin).await, &admin, "lise", json!([{"role": "teacher", "group_id": group}]))
        .await;
    let ts = app.login(&teacher).await;
    assert_eq!(c.check("GET", "/auth/me", &app.get("/auth/me", &ts.token).await), 200);
    assert_eq!(c.check("GET", "/admin/users", &app.get("/admin/users", &ts.token).await), 403);
    let r = app.send(Method::DELETE, &user_path(&kari, ""), Some(&ts.token), None).await;
    assert_eq!(c.check("DELETE", "/admin/users/{id}", &r), 403);
    let change = |current: &str| json!({"current_password": current, "new_password": "Nytt#Passord-2025x"});
    let r = app.post("/auth/password", Some(&ts.token), change("wrong-Password-1")).await;
    assert_eq!(c.check("POST", "/auth/password", &r), 422);
    let r = app.post("/auth/password", Some(&ts.token), change(&teacher.password)).await;
    assert_eq!(c.check("POST", "/auth/password", &r), 204);

    // Deletion, and logout ends the session.
    assert_eq!(
        c.check("DELETE", "/admin/users/{id}", &app.send(Method::DELETE, &user_path(&kari, ""), t, None).await),
        204
    );
    assert_eq!(
        c.check("DELETE", "/admin/users/{id}", &app.send(Method::DELETE, &user_path(&kari, ""), t, None).await),
        404
    );
    let r = app.send(Method::DELETE, &user_path(&admin.user_id, ""), t, None).await;
    assert_eq!(c.check("DELETE", "/admin/users/{id}", &r), 409);
    assert_eq!(c.check("POST", "/auth/logout", &app.send(Method::POST, "/auth/logout", t, None).await), 204);
    assert_eq!(c.check("POST", "/auth/logout", &app.send(Method::POST, "/auth/logout", t, None).await), 401);
    assert_eq!(c.check("POST", "/auth/refresh", &app.send(Method::POST, "/auth/refresh", t, None).await), 401);
}

/// A Standard Webhooks delivery with explicit headers (`None` leaves one out).
fn delivery(
    path: &str,
    content_type: &str,
    id: Option<&str>,
    ts: i64,
    signature: Option<&str>,
    body: &[u8],
) -> Request<Vec<u8>> {
    let mut headers = vec![("content-type", content_type.to_owned()), ("webhook-timestamp", ts.to_string())];
    if let Some(id) = id {
        headers.push(("webhook-id", id.to_owned()));
    }
    if let Some(sig) = signature {
        headers.push(("webhook-signature", sig.to_owned()));
    }
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    request(Method::POST, path, &headers, body)
}

#[tokio::test]
async fn ingest_answers_as_documented() {
    use base64::Engine;
    let c = Contract { doc: load_doc() };
    let app = TestApp::spawn().await;
    let admin = app.seed_tenant("bergen").await;
    let session = app.login(&admin).await;
    let t = Some(session.token.as_str());

    // Sources: create (shared secret and public key), list, get, rotate, refusals.
    let r = app.post("/admin/sources", t, json!({"kind": "sas", "name": "Skoleadmin"})).await;
    assert_eq!(c.check("POST", "/admin/sources", &r), 201);
    let sas = tavle_tests::Source {
        id: r.json()["id"].as_str().unwrap().to_owned(),
        secret: r.json()["secret"].as_str().unwrap().to_owned(),
    };
    let publisher = app.create_source(&session, "publisher").await;
    let key = |seed: u8| {
        let kp = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([seed; 32]));
        format!("whpk_{}", base64::engine::general_purpose::STANDARD.encode(kp.pk.as_ref()))
    };
    let r = app.post("/admin/sources", t, json!({"kind": "publisher", "name": "Forlag", "public_key": key(1)})).await;
    assert_eq!(c.check("POST", "/admin/sources", &r), 201);
    let pk_source = r.json()["id"].as_str().unwrap().to_owned();
    for bad in [
        json!({"kind": "school", "name": "x"}),
        json!({"kind": "sas", "name": " "}),
        json!({"kind": "sas", "name": "x", "public_key": "whpk_nope"}),
        json!({"kind": "sas", "name": "x", "secret": "mine"}),
    ] {
        assert_eq!(c.check("POST", "/admin/sources", &app.post("/admin/sources", t, bad).await), 422);
    }
    for path in ["/admin/sources", "/admin/sources?limit=1"] {
        assert_eq!(c.check("GET", "/admin/sources", &app.get(path, &session.token).await), 200);
    }
    let cursor =
        app.get("/admin/sources?limit=1", &session.token).await.json()["next_cursor"].as_str().unwrap().to_owned();
    let r = app.get(&format!("/admin/sources?limit=1&cursor={cursor}"), &session.token).await;
    assert_eq!(c.check("GET", "/admin/sources", &r), 200);
    assert_eq!(c.check("GET", "/admin/sources", &app.get("/admin/sources?limit=0", &session.token).await), 400);
    assert_eq!(c.check("GET", "/admin/sources", &app.send(Method::GET, "/admin/sources", None, None).await), 401);
    let r = app.get(&format!("/admin/sources/{}", sas.id), &session.token).await;
    assert_eq!(c.check("GET", "/admin/sources/{id}", &r), 200);
    for id in [uuid::Uuid::new_v4().to_string(), "nope".to_owned()] {
        let r = app.get(&format!("/admin/sources/{id}"), &session.token).await;
        assert_eq!(c.check("GET", "/admin/sources/{id}", &r), 404);
    }
    let rotate = |id: &str| format!("/admin/sources/{id}/rotate");
    let r = app.send(Method::POST, &rotate(&publisher.id), t, None).await;
    assert_eq!(c.check("POST", "/admin/sources/{id}/rotate", &r), 200);
    let publisher = tavle_tests::Source { id: publisher.id, secret: r.json()["secret"].as_str().unwrap().to_owned() };
    let r = app.send(Method::POST, &rotate(&sas.id), t, Some(json!({"public_key": key(2)}))).await;
    assert_eq!(c.check("POST", "/admin/sources/{id}/rotate", &r), 422);
    let r = app.send(Method::POST, &rotate(&pk_source), t, None).await;
    assert_eq!(c.check("POST", "/admin/sources/{id}/rotate", &r), 422);
    let r = app.send(Method::POST, &rotate(&pk_source), t, Some(json!({"public_key": key(3)}))).await;
    assert_eq!(c.check("POST", "/admin/sources/{id}/rotate", &r), 200);
    let r = app
        .call(request(
            Method::POST,
            &rotate(&sas.id),
            &[("authorization", &format!("Bearer {}", session.token))],
            b"{}",
        ))
        .await;
    assert_eq!(c.check("POST", "/admin/sources/{id}/rotate", &r), 415);

    // A roster, its replay, and refusals.
    let pupils: Vec<Value> = (0..3)
        .map(|n| {
            json!({"identity_number": synthetic_id(n), "given_name": "Elev", "family_name": format!("Nr {n}"),
                         "year_level": 5, "gender": "unknown", "groups": ["5A"]})
        })
        .collect();
    let roster = json!({"school": {"external_id": "s1", "name": "Fjell skole"},
                        "groups": [{"external_id": "5A", "name": "5A", "year_level": 5}], "pupils": pupils,
                        "teachers": [{"feide_username": "ukjent@skole.example", "groups": ["5A"]}]});
    let r = app.deliver(&sas, "roster", "roster-1", &roster).await;
    assert_eq!(c.check("POST", "/ingest/{source}/roster", &r), 200);
    let r = app.deliver(&sas, "roster", "roster-1", &roster).await;
    assert_eq!(c.check("POST", "/ingest/{source}/roster", &r), 200);
    assert_eq!(r.header("webhook-replayed"), Some("true"));
    assert_eq!(
        c.check("POST", "/ingest/{source}/roster", &app.deliver(&publisher, "roster", "p-1", &roster).await),
        403
    );
    let mut bad = roster.clone();
    bad["pupils"][0]["year_level"] = json!(14);
    assert_eq!(c.check("POST", "/ingest/{source}/roster", &app.deliver(&sas, "roster", "roster-2", &bad).await), 422);

    // Results: stored and rejected rows; every way a delivery can fail.
    let results = json!({
    "assessment": {"external_id": "a1", "title": "Lesing", "subject": "norsk", "year_level": 5, "max_score": 40,
                   "administered_on": "2026-09-14"},
    "results": [
        {"external_id": "r1", "pupil": {"identity_number": synthetic_id(0)}, "score": 31.5, "status": "completed",
         "completed_at": "2026-09-14T09:41:00+02:00", "items": [{"item": "1a", "score": 1, "max_score": 1, "answer": "b"}]},
        {"external_id": "r2", "pupil": {"identity_number": synthetic_id(1)}, "status": "absent"},
        {"external_id": "r3", "pupil": {"feide_username": "ukjent@skole.example"}, "status": "exempt"}
    ]});
    let results_path = format!("/ingest/{}/results", publisher.id);
    let r = app.deliver(&publisher, "results", "res-1", &results).await;
    assert_eq!(c.check("POST", "/ingest/{source}/results", &r), 200);
    assert_eq!(r.json()["rejected"], 1, "{}", r.text());
    let mut bad = results.clone();
    bad["results"][0]["score"] = json!(41);
    bad["results"][1]["nickname"] = json!("x");
    assert_eq!(
        c.check("POST", "/ingest/{source}/results", &app.deliver(&publisher, "results", "res-2", &bad).await),
        422
    );
    let body = serde_json::to_vec(&results).unwrap();
    let now = unix_now();
    let wh = standardwebhooks::Webhook::new(&publisher.secret).unwrap();
    let sign = |id: &str, ts: i64, body: &[u8]| wh.sign(id, ts, body).unwrap();
    for (req, want) in [
        (delivery(&results_path, "application/json", Some("x-1"), now, Some("v1,AAAA"), &body), 401),
        (delivery(&results_path, "application/json", None, now, Some(&sign("x-2", now, &body)), &body), 401),
        (
            delivery(
                &results_path,
                "application/json",
                Some("x-3"),
                now - 600,
                Some(&sign("x-3", now - 600, &body)),
                &body,
            ),
            401,
        ),
        (delivery(&results_path, "text/plain", Some("x-4"), now, Some(&sign("x-4", now, &body)), &body), 415),
        (delivery(&results_path, "application/json", Some("x-5"), now, Some(&sign("x-5", now, b"{")), b"{"), 400),
        (
            delivery(
                &format!("/ingest/{}/results", uuid::Uuid::new_v4()),
                "application/json",
                Some("x-6"),
                now,
                Some(&sign("x-6", now, &body)),
                &body,
            ),
            404,
        ),
        (
            delivery(
                "/ingest/not-a-uuid/results",
                "application/json",
                Some("x-7"),
                now,
                Some(&sign("x-7", now, &body)),
                &body,
            ),
            404,
        ),
    ] {
        let r = app.call(req).await;
        assert_eq!(c.check("POST", "/ingest/{source}/results", &r), want, "{}", r.text());
    }
    let big = vec![b' '; 10 * 1024 * 1024 + 1];
    let r = app
        .call(delivery(&results_path, "application/json", Some("x-8"), now, Some(&sign("x-8", now, &big)), &big))
        .await;
    assert_eq!(c.check("POST", "/ingest/{source}/results", &r), 413);

    // Disabling: the source's deliveries are refused from then on.
    let r = app.send(Method::POST, &format!("/admin/sources/{}/disable", publisher.id), t, None).await;
    assert_eq!(c.check("POST", "/admin/sources/{id}/disable", &r), 200);
    let r = app.send(Method::POST, &format!("/admin/sources/{}/disable", uuid::Uuid::new_v4()), t, None).await;
    assert_eq!(c.check("POST", "/admin/sources/{id}/disable", &r), 404);
    let r = app.deliver(&publisher, "results", "res-3", &results).await;
    assert_eq!(c.check("POST", "/ingest/{source}/results", &r), 403);

    // Not for teachers.
    let (_, group) = app.seed_school(&admin.tenant_id, "Dal skole").await;
    let teacher = app.create_user(&session, &admin, "lise", json!([{"role": "teacher", "group_id": group}])).await;
    let ts = app.login(&teacher).await;
    assert_eq!(c.check("GET", "/admin/sources", &app.get("/admin/sources", &ts.token).await), 403);
    let r = app.post("/admin/sources", Some(&ts.token), json!({"kind": "sas", "name": "x"})).await;
    assert_eq!(c.check("POST", "/admin/sources", &r), 403);
}

#[tokio::test]
async fn pupil_lists_and_searches_answer_as_documented() {
    let c = Contract { doc: load_doc() };
    let app = TestApp::spawn().await;
    let admin = app.seed_tenant("oslo").await;
    let session = app.login(&admin).await;
    let sas = app.create_source(&session, "sas").await;
    let pupils: Vec<Value> = [(0, "Åse", "Ødegård"), (1, "Bjørn", "Berg"), (2, "Cecilie", "Berg")]
        .iter()
        .map(|(n, given, family)| {
            json!({"identity_number": synthetic_id(*n), "given_name": given, "family_name": family,
                   "year_level": 5, "groups": ["5A"]})
        })
        .collect();
    let roster = json!({"school": {"external_id": "s1", "name": "Fjell skole"},
                        "groups": [{"external_id": "5A", "name": "5A", "year_level": 5}], "pupils": pupils});
    assert_eq!(app.deliver(&sas, "roster", "roster-1", &roster).await.status, 200);
    let group: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM groups WHERE external_id = '5A'").fetch_one(&app.pool).await.unwrap();
    let group = group.to_string();
    let teacher = app.create_user(&session, &admin, "kari", json!([{"role": "teacher", "group_id": group}])).await;
    let kari = app.login(&teacher).await;
    let t = Some(kari.token.as_str());

    // The list: ids, year level and cursors; a name in the URL is a 400.
    for path in ["/pupils", "/pupils?limit=1", &format!("/pupils?group_id={group}&year_level=5")] {
        assert_eq!(c.check("GET", "/pupils", &app.get(path, &kari.token).await), 200, "{path}");
    }
    for path in ["/pupils?q=berg", &format!("/pupils?q={}", synthetic_id(0)), "/pupils?limit=0", "/pupils?cursor=x"] {
        assert_eq!(c.check("GET", "/pupils", &app.get(path, &kari.token).await), 400, "{path}");
    }
    assert_eq!(c.check("GET", "/pupils", &app.get("/pupils", &session.token).await), 403);

    // Searches: by identity number (one pupil at most), by name (a page).
    let search = |body: Value| app.post("/pupils/search", t, body);
    for body in [
        json!({"identity_number": synthetic_id(0)}),
        json!({"identity_number": synthetic_id(9)}),
        json!({"name": "berg"}),
        json!({"name": "zzz"}),
        json!({"name": "e", "group_id": group, "year_level": 5, "limit": 200}),
        json!({"name": "e", "school_id": null, "group_id": null, "year_level": null, "limit": null, "cursor": null}),
    ] {
        assert_eq!(c.check("POST", "/pupils/search", &search(body.clone()).await), 200, "{body}");
    }
    let first = search(json!({"name": "berg", "limit": 1})).await;
    assert_eq!(c.check("POST", "/pupils/search", &first), 200);
    let cursor = first.json()["next_cursor"].as_str().expect("two Bergs, pages of one").to_owned();
    let next = search(json!({"name": "berg", "limit": 1, "cursor": cursor})).await;
    assert_eq!(c.check("POST", "/pupils/search", &next), 200);
    for body in [
        json!({"identity_number": synthetic_id(0), "name": "berg"}),
        json!({}),
        json!({"name": synthetic_id(0)}),
        json!({"name": "berg", "q": "berg"}),
        json!({"identity_number": synthetic_id(0), "limit": 1}),
        json!({"name": "berg", "cursor": "x"}),
        json!({"name": " "}),
    ] {
        assert_eq!(c.check("POST", "/pupils/search", &search(body.clone()).await), 422, "{body}");
    }
    let auth = format!("Bearer {}", kari.token);
    for (content_type, body, want) in [("application/json", &b"{\"name\":"[..], 400), ("text/plain", b"{}", 415)] {
        let headers = [("authorization", auth.as_str()), ("content-type", content_type)];
        let r = app.call(request(Method::POST, "/pupils/search", &headers, body)).await;
        assert_eq!(c.check("POST", "/pupils/search", &r), want);
    }
    let r = app.post("/pupils/search", None, json!({"name": "berg"})).await;
    assert_eq!(c.check("POST", "/pupils/search", &r), 401);
    let r = app.post("/pupils/search", Some(&session.token), json!({"name": "berg"})).await;
    assert_eq!(c.check("POST", "/pupils/search", &r), 403);
}

#[tokio::test]
async fn subtests_flags_and_follow_up_lists_answer_as_documented() {
    let c = Contract { doc: load_doc() };
    let app = TestApp::spawn().await;
    let admin = app.seed_tenant("oslo").await;
    let session = app.login(&admin).await;
    let sas = app.create_source(&session, "sas").await;
    let publisher = app.create_source(&session, "publisher").await;
    let pupils: Vec<Value> = [(0, "Åse", "Ødegård"), (1, "Bjørn", "Berg"), (2, "Cecilie", "Berg")]
        .iter()
        .map(|(n, given, family)| {
            json!({"identity_number": synthetic_id(*n), "given_name": given, "family_name": family,
                   "year_level": 5, "groups": ["5A"]})
        })
        .collect();
    let roster = json!({"school": {"external_id": "s1", "name": "Fjell skole"},
                        "groups": [{"external_id": "5A", "name": "5A", "year_level": 5}], "pupils": pupils});
    assert_eq!(app.deliver(&sas, "roster", "roster-1", &roster).await.status, 200);
    let post = |external_id: &str, on: &str, threshold: f64| {
        json!({"assessment": {"external_id": external_id, "title": "Lesing", "subject": "norsk", "max_score": 40,
                              "administered_on": on, "family": "lesing", "threshold": threshold,
                              "subtests": [{"id": "ord", "title": "Ordlesing", "max_score": 20, "threshold": 8},
                                           {"id": "fors", "title": "Forståelse", "max_score": 20}]},
               "results": [
                   {"external_id": format!("{external_id}-0"), "pupil": {"identity_number": synthetic_id(0)},
                    "score": 10, "status": "completed",
                    "subtests": [{"id": "ord", "score": 4}, {"id": "fors", "score": 6}],
                    "items": [{"item": "q1", "score": 1, "subtest": "ord"}]},
                   {"external_id": format!("{external_id}-1"), "pupil": {"identity_number": synthetic_id(1)},
                    "status": "absent"}]})
    };
    for (id, on, threshold) in [("v26", "2026-03-01", 15.0), ("h26", "2026-09-01", 15.0), ("h26", "2026-09-01", 12.0)] {
        let r = app.deliver(&publisher, "results", &uuid::Uuid::new_v4().to_string(), &post(id, on, threshold)).await;
        assert_eq!(c.check("POST", "/ingest/{source}/results", &r), 200, "{}", r.text());
    }
    let group: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM groups WHERE external_id = '5A'").fetch_one(&app.pool).await.unwrap();
    let group = group.to_string();
    let assessment: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM assessments WHERE external_id = 'h26'").fetch_one(&app.pool).await.unwrap();
    let pupil: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM pupils WHERE given_name = 'Åse'").fetch_one(&app.pool).await.unwrap();
    let teacher = app.create_user(&session, &admin, "kari", json!([{"role": "teacher", "group_id": group}])).await;
    let kari = app.login(&teacher).await;
    let missing = uuid::Uuid::new_v4();

    let overview = format!("/groups/{group}/overview?assessment_id={assessment}");
    for (path, want) in [
        (overview.clone(), 200),
        (format!("{overview}&flagged_first=true"), 200),
        (format!("{overview}&flagged_first=1"), 400),
    ] {
        assert_eq!(c.check("GET", "/groups/{id}/overview", &app.get(&path, &kari.token).await), want, "{path}");
    }
    let r = app.get(&format!("/pupils/{pupil}"), &kari.token).await;
    assert_eq!(c.check("GET", "/pupils/{id}", &r), 200);
    assert!(!r.json()["results"][1]["since_last"].is_null(), "{}", r.text());
    for (path, want) in [
        ("/follow-up".to_owned(), 200),
        ("/follow-up?school_year=2026".to_owned(), 200),
        ("/follow-up?school_year=2025".to_owned(), 200),
        (format!("/follow-up?group_id={group}"), 200),
        (format!("/follow-up?group_id={missing}"), 404),
        (format!("/follow-up?school_id={missing}"), 404),
        ("/follow-up?school_year=x".to_owned(), 400),
        ("/follow-up?group_id=x".to_owned(), 400),
    ] {
        assert_eq!(c.check("GET", "/follow-up", &app.get(&path, &kari.token).await), want, "{path}");
    }
    let flagged = app.get("/follow-up?school_year=2026", &kari.token).await.json();
    assert_eq!(flagged["groups"][0]["pupils"].as_array().unwrap().len(), 1, "{flagged}");
    assert_eq!(c.check("GET", "/follow-up", &app.get("/follow-up", &session.token).await), 403);
    assert_eq!(c.check("GET", "/follow-up", &app.send(Method::GET, "/follow-up", None, None).await), 401);
    for (path, want) in [
        (format!("/assessments/{assessment}/follow-up"), 200),
        (format!("/assessments/{assessment}/follow-up?group_id={group}"), 200),
        (format!("/assessments/{missing}/follow-up"), 404),
        ("/assessments/x/follow-up".to_owned(), 404),
        (format!("/assessments/{assessment}/follow-up?school_id={missing}"), 404),
        (format!("/assessments/{assessment}/follow-up?school_id=x"), 400),
    ] {
        assert_eq!(c.check("GET", "/assessments/{id}/follow-up", &app.get(&path, &kari.token).await), want, "{path}");
    }
    let r = app.get(&format!("/assessments/{assessment}/follow-up"), &session.token).await;
    assert_eq!(c.check("GET", "/assessments/{id}/follow-up", &r), 403);

    // Assessments registered by the tenant admin, and their thresholds.
    let new = json!({"title": "Kommunens leseprøve", "subject": "norsk", "max_score": 30, "administered_on": "2026-10-05",
                     "threshold": 10, "subtests": [{"id": "a", "title": "Avkoding", "max_score": 15, "threshold": 5}]});
    let r = app.post("/assessments", Some(&session.token), new.clone()).await;
    assert_eq!(c.check("POST", "/assessments", &r), 201, "{}", r.text());
    let manual = r.json()["id"].as_str().unwrap().to_owned();
    let mut bad = new.clone();
    bad["threshold"] = json!(31);
    assert_eq!(c.check("POST", "/assessments", &app.post("/assessments", Some(&session.token), bad).await), 422);
    assert_eq!(c.check("POST", "/assessments", &app.post("/assessments", t_kari(&kari), new).await), 403);
    let put = |id: &str, body: Value| {
        let path = format!("/assessments/{id}/thresholds");
        let token = session.token.clone();
        let app = &app;
        async move { app.send(Method::PUT, &path, Some(&token), Some(body)).await }
    };
    let op = "/assessments/{id}/thresholds";
    assert_eq!(
        c.check("PUT", op, &put(&manual, json!({"threshold": 8, "subtests": [{"id": "a", "threshold": 4}]})).await),
        200
    );
    assert_eq!(c.check("PUT", op, &put(&manual, json!({"threshold": 40})).await), 422);
    assert_eq!(c.check("PUT", op, &put(&assessment.to_string(), json!({"threshold": 8})).await), 409);
    assert_eq!(c.check("PUT", op, &put(&missing.to_string(), json!({"threshold": 8})).await), 404);
}

fn t_kari(s: &tavle_tests::Session) -> Option<&str> {
    Some(s.token.as_str())
}

#[test]
fn subject_requests_answer_as_documented() {
    // One long tour: in debug builds the stack frame that polls it outgrows
    // a test thread's stack (2 MiB), so it runs on a thread of its own.
    let tour = std::thread::Builder::new()
        .name("subject_requests_tour".into())
        .stack_size(64 * 1024 * 1024)
        .spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
            rt.block_on(subject_requests_tour())
        })
        .expect("a thread for the tour");
    if let Err(panic) = tour.join() {
        std::panic::resume_unwind(panic);
    }
}

async fn subject_requests_tour() {
    let c = &Contract { doc: load_doc() };
    let w = tavle_tests::subjects::world().await;
    let app = &w.app;
    let t = Some(w.privacy.token.as_str());
    let kari = Some(w.kari_session.token.as_str());
    let bergen = Some(w.bergen_privacy.token.as_str());
    let missing = uuid::Uuid::new_v4().to_string();
    let id_of = |r: &TestResponse| r.json()["id"].as_str().unwrap_or_else(|| panic!("no id: {}", r.text())).to_owned();
    let step_path = |id: &str, step: &str| format!("/subject-requests/{id}/{step}");
    let list_op = "/subject-requests";
    let show_op = "/subject-requests/{id}";
    let (start_op, extend_op, reject_op, fulfil_op) = (
        "/subject-requests/{id}/start",
        "/subject-requests/{id}/extend",
        "/subject-requests/{id}/reject",
        "/subject-requests/{id}/fulfil",
    );
    let by_pupil = |kind: &str, pupil: &str| json!({"kind": kind, "subject": {"pupil_id": pupil}, "identity_verification": "BankID, mother"});
    let by_user =
        |kind: &str| json!({"kind": kind, "subject": {"user_id": w.kari.user_id}, "identity_verification": "HR"});
    let register = |body: Value| app.post("/subject-requests", t, body);
    let registered = |body: Value| async move {
        let r = register(body).await;
        assert_eq!(c.check("POST", list_op, &r), 201, "{}", r.text());
        id_of(&r)
    };
    let fulfilled = |id: String, body: Option<Value>| async move {
        let r = app.send(Method::POST, &step_path(&id, "fulfil"), t, body).await;
        assert_eq!(c.check("POST", fulfil_op, &r), 200, "{}", r.text());
        r.json()
    };

    // Registration: by pupil id, by identity number (in the body), of a staff user.
    let received: String = sqlx::query_scalar("SELECT (current_date - 45)::text").fetch_one(&app.pool).await.unwrap();
    let access = registered(by_pupil("access", &w.pupil)).await;
    let mut body = json!({"kind": "portability", "subject": {"identity_number": synthetic_id(0)},
                          "received_on": received, "identity_verification": "Passport at the school office"});
    let r = register(body.clone()).await;
    assert_eq!(c.check("POST", list_op, &r), 201, "{}", r.text());
    assert_eq!(r.json()["overdue"], true, "{}", r.text());
    let portability = id_of(&r);
    let objection = registered(by_pupil("objection", &w.other)).await;
    let user_objection = registered(by_user("objection")).await;
    // Refusals: wrong role, no token, malformed, wrong media type, the rules, unknown subjects.
    let r = app.post("/subject-requests", kari, by_pupil("access", &w.pupil)).await;
    assert_eq!(c.check("POST", list_op, &r), 403);
    let r = app.post("/subject-requests", None, by_pupil("access", &w.pupil)).await;
    assert_eq!(c.check("POST", list_op, &r), 401);
    let auth = format!("Bearer {}", w.privacy.token);
    for (content_type, raw, want) in [
        ("application/json", &b"{\"kind\":"[..], 400),
        ("text/plain", b"{}", 415),
        ("application/json", &[b' '; 17 * 1024][..], 413),
    ] {
        let headers = [("authorization", auth.as_str()), ("content-type", content_type)];
        let r = app.call(request(Method::POST, "/subject-requests", &headers, raw)).await;
        assert_eq!(c.check("POST", list_op, &r), want, "{content_type} {}", r.text());
    }
    body["received_on"] = json!("2999-01-01");
    for bad in [
        body,
        json!({"kind": "forget", "subject": {"pupil_id": w.pupil}, "identity_verification": "x"}),
        json!({"kind": "access", "subject": {"identity_number": "12345678901"}, "identity_verification": "x"}),
        json!({"kind": "access", "subject": {"pupil_id": w.pupil, "user_id": w.kari.user_id},
               "identity_verification": "x"}),
        json!({"kind": "access", "subject": {}, "identity_verification": "x"}),
        json!({"kind": "access", "subject": {"pupil_id": w.pupil}, "identity_verification": " "}),
        json!({"kind": "access", "subject": {"pupil_id": w.pupil}, "identity_verification": "x",
               "corrections": [{"field": "given_name", "value": "A"}]}),
        json!({"kind": "rectification", "subject": {"pupil_id": w.pupil}, "identity_verification": "x"}),
        json!({"kind": "rectification", "subject": {"pupil_id": w.pupil}, "identity_verification": "x",
               "corrections": [{"field": "email", "value": "a@b.no"}, {"field": "year_level", "value": 14}]}),
        json!({"kind": "restriction", "subject": {"user_id": w.kari.user_id}, "identity_verification": "x"}),
        json!({"kind": "access", "subject": {"pupil_id": w.pupil}, "identity_verification": "x", "extra": 1}),
        json!({"kind": "access", "subject": {"pupil_id": 7}, "identity_verification": "x"}),
    ] {
        assert_eq!(c.check("POST", list_op, &register(bad.clone()).await), 422, "{bad}");
    }
    for bad in [
        by_pupil("access", &missing),
        json!({"kind": "access", "subject": {"identity_number": synthetic_id(7)}, "identity_verification": "x"}),
        json!({"kind": "access", "subject": {"user_id": missing}, "identity_verification": "x"}),
    ] {
        assert_eq!(c.check("POST", list_op, &register(bad.clone()).await), 404, "{bad}");
    }
    let r = app.post("/subject-requests", bergen, by_pupil("access", &w.pupil)).await;
    assert_eq!(c.check("POST", list_op, &r), 404, "another tenant's pupil");

    // Lists: filters, pages, refusals.
    for path in [
        "/subject-requests".to_owned(),
        "/subject-requests?status=received&kind=access".to_owned(),
        "/subject-requests?overdue=true".to_owned(),
        "/subject-requests?overdue=false&limit=200".to_owned(),
        format!("/subject-requests?subject_id={}", w.pupil),
        format!("/subject-requests?subject_id={}", w.kari.user_id),
    ] {
        let r = app.get(&path, &w.privacy.token).await;
        assert_eq!(c.check("GET", list_op, &r), 200, "{path}");
        assert!(!r.json()["items"].as_array().unwrap().is_empty(), "{path}: {}", r.text());
    }
    let first = app.get("/subject-requests?limit=1", &w.privacy.token).await;
    assert_eq!(c.check("GET", list_op, &first), 200);
    let cursor = first.json()["next_cursor"].as_str().expect("four requests, pages of one").to_owned();
    let r = app.get(&format!("/subject-requests?limit=1&cursor={cursor}"), &w.privacy.token).await;
    assert_eq!(c.check("GET", list_op, &r), 200);
    for path in [
        "/subject-requests?status=done".to_owned(),
        "/subject-requests?kind=forget".to_owned(),
        "/subject-requests?subject_id=x".to_owned(),
        "/subject-requests?overdue=1".to_owned(),
        "/subject-requests?limit=0".to_owned(),
        "/subject-requests?cursor=x".to_owned(),
        format!("/subject-requests?limit=1&kind=access&cursor={cursor}"),
    ] {
        assert_eq!(c.check("GET", list_op, &app.get(&path, &w.privacy.token).await), 400, "{path}");
    }
    assert_eq!(c.check("GET", list_op, &app.get("/subject-requests", &w.kari_session.token).await), 403);
    assert_eq!(c.check("GET", list_op, &app.send(Method::GET, "/subject-requests", None, None).await), 401);

    // One request: a pupil's, a staff user's; refusals.
    for id in [&access, &user_objection] {
        let r = app.get(&format!("/subject-requests/{id}"), &w.privacy.token).await;
        assert_eq!(c.check("GET", show_op, &r), 200, "{}", r.text());
    }
    for id in [missing.as_str(), "not-a-uuid"] {
        assert_eq!(c.check("GET", show_op, &app.get(&format!("/subject-requests/{id}"), &w.privacy.token).await), 404);
    }
    let path = format!("/subject-requests/{access}");
    assert_eq!(c.check("GET", show_op, &app.get(&path, &w.bergen_privacy.token).await), 404);
    assert_eq!(c.check("GET", show_op, &app.get(&path, &w.kari_session.token).await), 403);
    assert_eq!(c.check("GET", show_op, &app.send(Method::GET, &path, None, None).await), 401);

    // Start (idempotent), extend once, reject; closed requests refuse steps.
    for _ in 0..2 {
        let r = app.send(Method::POST, &step_path(&portability, "start"), t, None).await;
        assert_eq!(c.check("POST", start_op, &r), 200, "{}", r.text());
        assert_eq!(r.json()["status"], "in_progress");
    }
    let extend = |id: &str, body: Value| {
        let path = step_path(id, "extend");
        async move { app.post(&path, t, body).await }
    };
    for bad in [
        json!({"months": 3, "reason": "many sources"}),
        json!({"months": 0, "reason": "x"}),
        json!({"months": 1, "reason": " "}),
        json!({"months": 1}),
        json!({"months": "1", "reason": "x"}),
    ] {
        assert_eq!(c.check("POST", extend_op, &extend(&portability, bad.clone()).await), 422, "{bad}");
    }
    // Received 45 days ago, so overdue: too late to extend (Art. 12(3)).
    let r = extend(&portability, json!({"months": 1, "reason": "late"})).await;
    assert_eq!(c.check("POST", extend_op, &r), 409, "an overdue request is not extended");
    let r = extend(&access, json!({"months": 2, "reason": "Results from three publishers to collect"})).await;
    assert_eq!(c.check("POST", extend_op, &r), 200, "{}", r.text());
    assert_eq!(r.json()["extension"]["months"], 2);
    let r = extend(&access, json!({"months": 1, "reason": "again"})).await;
    assert_eq!(c.check("POST", extend_op, &r), 409, "extended once only");
    for (content_type, raw, want) in [("application/json", &b"{\"months\":"[..], 400), ("text/plain", b"{}", 415)] {
        let headers = [("authorization", auth.as_str()), ("content-type", content_type)];
        let r = app.call(request(Method::POST, &step_path(&portability, "extend"), &headers, raw)).await;
        assert_eq!(c.check("POST", extend_op, &r), want, "{content_type}");
    }
    let r = extend(&missing, json!({"months": 1, "reason": "x"})).await;
    assert_eq!(c.check("POST", extend_op, &r), 404);
    let r = app.post(&step_path(&portability, "extend"), kari, json!({"months": 1, "reason": "x"})).await;
    assert_eq!(c.check("POST", extend_op, &r), 403);

    let reject = |id: &str, body: Value| {
        let path = step_path(id, "reject");
        async move { app.post(&path, t, body).await }
    };
    let rejected = registered(by_pupil("objection", &w.other)).await;
    assert_eq!(c.check("POST", reject_op, &reject(&rejected, json!({"reason": " "})).await), 422);
    let r = reject(&rejected, json!({"reason": "The requester is not the guardian"})).await;
    assert_eq!(c.check("POST", reject_op, &r), 200, "{}", r.text());
    assert_eq!(r.json()["status"], "rejected");
    assert_eq!(c.check("POST", reject_op, &reject(&rejected, json!({"reason": "again"})).await), 409);
    assert_eq!(c.check("POST", reject_op, &reject(&missing, json!({"reason": "x"})).await), 404);
    let r = app.send(Method::POST, &step_path(&rejected, "start"), t, None).await;
    assert_eq!(c.check("POST", start_op, &r), 409);
    let r = extend(&rejected, json!({"months": 1, "reason": "x"})).await;
    assert_eq!(c.check("POST", extend_op, &r), 409);
    let r = app.post(&step_path(&rejected, "fulfil"), t, json!({"decision": "upheld", "reason": "x"})).await;
    assert_eq!(c.check("POST", fulfil_op, &r), 409, "a rejected request is closed");
    for id in [missing.as_str(), "not-a-uuid"] {
        let r = app.send(Method::POST, &step_path(id, "start"), t, None).await;
        assert_eq!(c.check("POST", start_op, &r), 404);
        let r = app.send(Method::POST, &step_path(id, "fulfil"), t, None).await;
        assert_eq!(c.check("POST", fulfil_op, &r), 404);
    }
    let r = app.send(Method::POST, &step_path(&access, "start"), kari, None).await;
    assert_eq!(c.check("POST", start_op, &r), 403);
    let r = app.send(Method::POST, &step_path(&access, "start"), bergen, None).await;
    assert_eq!(c.check("POST", start_op, &r), 404);
    let r = app.send(Method::POST, &step_path(&access, "start"), None, None).await;
    assert_eq!(c.check("POST", start_op, &r), 401);

    // Fulfilment, kind by kind. Access (without a body) and portability: exports to download.
    let r = app.post(&step_path(&access, "fulfil"), t, json!({"decision": "upheld", "reason": "x"})).await;
    assert_eq!(c.check("POST", fulfil_op, &r), 422, "a decision is for objections only");
    let r = app.post(&step_path(&access, "fulfil"), kari, json!({})).await;
    assert_eq!(c.check("POST", fulfil_op, &r), 403);
    let r = app.post(&step_path(&access, "fulfil"), bergen, json!({})).await;
    assert_eq!(c.check("POST", fulfil_op, &r), 404);
    for (content_type, raw, want) in [("application/json", &b"{\"decision\":"[..], 400), ("text/plain", b"{}", 415)] {
        let headers = [("authorization", auth.as_str()), ("content-type", content_type)];
        let r = app.call(request(Method::POST, &step_path(&access, "fulfil"), &headers, raw)).await;
        assert_eq!(c.check("POST", fulfil_op, &r), want, "{content_type}");
    }
    let done = fulfilled(access.clone(), None).await;
    assert_eq!(done["outcome"]["exports"], json!(["json"]), "{done}");
    assert_eq!(fulfilled(access.clone(), Some(json!({}))).await, done, "fulfilling again: the same answer");
    let r = app.get(&step_path(&access, "export"), &w.privacy.token).await;
    assert_eq!(c.check("GET", "/subject-requests/{id}/export", &r), 200, "{}", r.text());
    let done = fulfilled(portability.clone(), Some(json!({}))).await;
    assert_eq!(done["outcome"]["exports"], json!(["json", "csv"]), "{done}");
    let r = app.get(&step_path(&portability, "export"), &w.privacy.token).await;
    assert_eq!(c.check("GET", "/subject-requests/{id}/export", &r), 200);
    let csv = app.get(&step_path(&portability, "export.csv"), &w.privacy.token).await;
    assert_eq!(csv.status, 200, "{}", csv.text());
    assert_eq!(csv.header("content-type"), Some("text/csv; charset=utf-8"));
    let r = app.get(&format!("/subject-requests/{portability}"), &w.privacy.token).await;
    assert_eq!(c.check("GET", show_op, &r), 200);
    assert_eq!(r.json()["exports"].as_array().unwrap().len(), 2, "{}", r.text());
    let r = app.get(&step_path(&access, "export.csv"), &w.privacy.token).await;
    assert_eq!(c.check("GET", "/subject-requests/{id}/export.csv", &r), 404, "no CSV for access");

    // Rectification, of a pupil and of a staff user.
    let mut rect = by_pupil("rectification", &w.pupil);
    rect["corrections"] = json!([{"field": "given_name", "value": "Åsa"}, {"field": "year_level", "value": 6},
                                 {"field": "gender", "value": null}]);
    let done = fulfilled(registered(rect).await, None).await;
    assert_eq!(done["outcome"]["fields"], json!(["given_name", "year_level", "gender"]), "{done}");
    // The school system sends the old values again: the corrections are kept, and its answer says so.
    let sorby = || tavle_tests::subjects::roster("sorby", "6A", &[(0, "Åse", "Ødegård")]);
    let r = app.deliver(&w.sas, "roster", "r-kept", &sorby()).await;
    assert_eq!(c.check("POST", "/ingest/{source}/roster", &r), 200);
    assert_eq!(r.json()["corrections_kept"].as_array().map(Vec::len), Some(3), "{}", r.text());
    let mut rect = by_user("rectification");
    rect["corrections"] = json!([{"field": "display_name", "value": "Kari L."}, {"field": "email", "value": null}]);
    let done = fulfilled(registered(rect).await, None).await;
    assert_eq!(done["outcome"]["recipients"], json!([]), "{done}");

    // Restriction and its lifting; objections (the decision is required).
    let done = fulfilled(registered(by_pupil("restriction", &w.other)).await, None).await;
    assert_eq!((done["outcome"]["restricted"].clone(), done["outcome"]["changed"].clone()), (json!(true), json!(true)));
    let done = fulfilled(registered(by_pupil("restriction_lifted", &w.other)).await, None).await;
    assert_eq!(done["outcome"]["restricted"], false, "{done}");
    for bad in
        [None, Some(json!({})), Some(json!({"decision": "maybe", "reason": "x"})), Some(json!({"decision": "upheld"}))]
    {
        let r = app.send(Method::POST, &step_path(&objection, "fulfil"), t, bad.clone()).await;
        assert_eq!(c.check("POST", fulfil_op, &r), 422, "{bad:?}");
    }
    let upheld = json!({"decision": "upheld", "reason": "Particular situation"});
    let done = fulfilled(objection.clone(), Some(upheld.clone())).await;
    assert_eq!(done["outcome"]["restricted"], true, "{done}");
    assert_eq!(done["decision"], upheld);
    let dismissed = json!({"decision": "dismissed", "reason": "Statutory duty"});
    assert_eq!(fulfilled(objection.clone(), Some(dismissed.clone())).await, done, "the recorded decision stays");
    let done = fulfilled(user_objection.clone(), Some(dismissed)).await;
    assert_eq!(done["outcome"], json!({"decision": "dismissed"}));

    // Erasure: a pupil (then her other request is a 409, a new one a 404), a staff user.
    let second = registered(by_pupil("erasure", &w.pupil)).await;
    let erasure = registered(by_pupil("erasure", &w.pupil)).await;
    let done = fulfilled(erasure.clone(), None).await;
    assert_eq!(done["outcome"]["results_anonymised"], 2, "{done}");
    let r = app.deliver(&w.sas, "roster", "r-erased", &sorby()).await;
    assert_eq!(c.check("POST", "/ingest/{source}/roster", &r), 200);
    assert_eq!(r.json()["erased_skipped"], json!([0]), "an erased pupil is not re-created: {}", r.text());
    let r = app.send(Method::POST, &step_path(&second, "fulfil"), t, None).await;
    assert_eq!(c.check("POST", fulfil_op, &r), 409, "the subject was erased");
    assert_eq!(c.check("POST", list_op, &register(by_pupil("access", &w.pupil)).await), 404);
    let r = app.get(&format!("/subject-requests/{erasure}"), &w.privacy.token).await;
    assert_eq!(c.check("GET", show_op, &r), 200);
    assert_eq!(r.json()["subject"]["erased"], true, "{}", r.text());
    assert_eq!(r.json()["subject"]["given_name"], Value::Null, "{}", r.text());
    let r = app.get(&format!("/subject-requests?subject_id={}", w.pupil), &w.privacy.token).await;
    assert_eq!(c.check("GET", list_op, &r), 200, "the requests stay as proof, by id");
    let staff = registered(by_user("erasure")).await;
    let late_access = registered(by_user("access")).await;
    let done = fulfilled(staff.clone(), None).await;
    assert_eq!(done["outcome"]["pseudonymised"], true, "{done}");
    let r = app.get(&format!("/subject-requests/{staff}"), &w.privacy.token).await;
    assert_eq!(c.check("GET", show_op, &r), 200);
    assert_eq!(r.json()["subject"]["erased"], true, "{}", r.text());
    let r = app.send(Method::POST, &step_path(&late_access, "fulfil"), t, None).await;
    assert_eq!(c.check("POST", fulfil_op, &r), 409, "a pseudonymised account has nothing left to export");
    let r = register(by_user("access")).await;
    assert_eq!(c.check("POST", list_op, &r), 404, "a pseudonymised account is no subject any more");
}

#[tokio::test]
async fn retention_answers_as_documented() {
    let c = &Contract { doc: load_doc() };
    let w = tavle_tests::subjects::world().await;
    let app = &w.app;
    let scheduler = app.variables["scheduler_token"].clone();
    let s = Some(scheduler.as_str());
    let (run_op, list_op, show_op) = ("/internal/retention/run", "/retention/runs", "/retention/runs/{id}");
    let pupils = "SELECT count(*) FROM pupils";
    // Something due: Bjørn left 100 days ago (the grace is 90), and a revoked session.
    // From year 10: he keeps a leavers' report.
    sqlx::query("UPDATE pupils SET left_at = current_date - 100, year_level = 10 WHERE id = $1::uuid")
        .bind(&w.other)
        .execute(&app.pool)
        .await
        .unwrap();
    let ended = app.login(&w.oslo).await;
    assert_eq!(app.send(Method::POST, "/auth/logout", Some(&ended.token), None).await.status, 204);
    let before = app.count(pupils).await;

    // The scheduler: a dry run changes nothing, a real run (manual) applies the policies.
    let r = app.send(Method::POST, "/internal/retention/run?dry_run=true", s, None).await;
    assert_eq!(c.check("POST", run_op, &r), 200, "{}", r.text());
    let dry = r.json();
    assert_eq!((&dry["dry_run"], &dry["status"], &dry["batches"]), (&json!(true), &json!("completed"), &json!(0)));
    assert_eq!(dry["counts"]["pupils_erased"], 1, "{dry}");
    assert_eq!(app.count(pupils).await, before, "a dry run changes nothing");
    let r = app.post("/internal/retention/run?dry_run=false", s, json!({"trigger": "manual"})).await;
    assert_eq!(c.check("POST", run_op, &r), 200, "{}", r.text());
    let real = r.json();
    assert_eq!(
        (&real["trigger"], &real["status"], &real["more_remaining"]),
        (&json!("manual"), &json!("completed"), &json!(false))
    );
    assert_eq!(real["counts"]["pupils_erased"], 1, "{real}");
    assert!(real["counts"]["sessions_deleted"].as_i64() >= Some(1), "{real}");
    assert_eq!(app.count(pupils).await, before - 1);
    let r = app.post(run_op, s, json!({})).await;
    assert_eq!(c.check("POST", run_op, &r), 200, "{}", r.text());
    assert_eq!(r.json()["trigger"], "schedule");

    // His leavers' report, for the privacy officer; not for a teacher.
    let reports_op = "/retention/leaver-reports";
    let r = app.get(reports_op, &w.privacy.token).await;
    assert_eq!(c.check("GET", reports_op, &r), 200, "{}", r.text());
    assert_eq!(r.json()["items"][0]["report"]["given_name"], "Bjørn", "{}", r.text());
    assert_eq!(c.check("GET", reports_op, &app.get(reports_op, &w.kari_session.token).await), 403);
    assert_eq!(
        c.check("GET", reports_op, &app.get("/retention/leaver-reports?school_id=x", &w.privacy.token).await),
        400
    );

    // Refusals: a wrong, missing or user's token; the query; the body.
    let wrong = format!("{scheduler}x");
    for token in [Some(wrong.as_str()), None, Some(w.privacy.token.as_str())] {
        let r = app.send(Method::POST, "/internal/retention/run?dry_run=yes", token, None).await;
        assert_eq!(c.check("POST", run_op, &r), 401, "the token before anything else");
    }
    let r = app.send(Method::POST, "/internal/retention/run?dry_run=yes", s, None).await;
    assert_eq!(c.check("POST", run_op, &r), 400);
    for bad in [json!({"trigger": "hourly"}), json!({"trigger": 1}), json!({"trigger": "manual", "dry_run": true})] {
        assert_eq!(c.check("POST", run_op, &app.post(run_op, s, bad.clone()).await), 422, "{bad}");
    }
    let auth = format!("Bearer {scheduler}");
    for (content_type, raw, want) in [
        ("application/json", &b"{\"trigger\":"[..], 400),
        ("text/plain", b"{}", 415),
        ("application/json", &[b' '; 2 * 1024][..], 413),
    ] {
        let headers = [("authorization", auth.as_str()), ("content-type", content_type)];
        let r = app.call(request(Method::POST, run_op, &headers, raw)).await;
        assert_eq!(c.check("POST", run_op, &r), want, "{content_type} {}", r.text());
    }
    assert_eq!(app.count(pupils).await, before - 1, "refused runs change nothing");

    // Privacy officers: the runs, newest first, with their own tenant's counts.
    let t = &w.privacy.token;
    let r = app.get(list_op, t).await;
    assert_eq!(c.check("GET", list_op, &r), 200);
    let items = r.json()["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 3, "{}", r.text());
    assert_eq!((&items[1]["id"], &items[1]["counts"]["pupils_erased"]), (&real["id"], &json!(1)));
    let r = app.get(&format!("/retention/runs/{}", real["id"].as_str().unwrap()), &w.bergen_privacy.token).await;
    assert_eq!(c.check("GET", show_op, &r), 200);
    assert_eq!(r.json()["counts"]["pupils_erased"].as_i64().unwrap_or(0), 0, "Bergen's counts: {}", r.text());
    let r = app.call(request(Method::GET, list_op, &[("cookie", &w.privacy.cookie)], b"")).await;
    assert_eq!(c.check("GET", list_op, &r), 200, "by the session cookie");
    let first = app.get("/retention/runs?limit=1", t).await;
    assert_eq!(c.check("GET", list_op, &first), 200);
    let cursor = first.json()["next_cursor"].as_str().expect("three runs, pages of one").to_owned();
    let r = app.get(&format!("/retention/runs?limit=1&cursor={cursor}"), t).await;
    assert_eq!(c.check("GET", list_op, &r), 200);
    assert_eq!(r.json()["items"][0]["id"], real["id"]);
    let missing = uuid::Uuid::new_v4().to_string();
    let r = app.get(&format!("/retention/runs?cursor={missing}"), t).await;
    assert_eq!(c.check("GET", list_op, &r), 200);
    assert_eq!(r.json()["items"], json!([]), "the id of no run: an empty page");
    for path in ["/retention/runs?limit=0", "/retention/runs?limit=201", "/retention/runs?cursor=x"] {
        assert_eq!(c.check("GET", list_op, &app.get(path, t).await), 400, "{path}");
    }
    assert_eq!(c.check("GET", list_op, &app.get(list_op, &w.kari_session.token).await), 403);
    assert_eq!(c.check("GET", list_op, &app.send(Method::GET, list_op, None, None).await), 401);
    assert_eq!(c.check("GET", list_op, &app.get(list_op, &scheduler).await), 401, "not a user's token");

    // One run; refusals.
    let path = format!("/retention/runs/{}", dry["id"].as_str().unwrap());
    let r = app.get(&path, t).await;
    assert_eq!(c.check("GET", show_op, &r), 200);
    assert_eq!(r.json()["dry_run"], true);
    for id in [missing.as_str(), "not-a-uuid"] {
        assert_eq!(c.check("GET", show_op, &app.get(&format!("/retention/runs/{id}"), t).await), 404, "{id}");
    }
    assert_eq!(c.check("GET", show_op, &app.get(&path, &w.kari_session.token).await), 403);
    assert_eq!(c.check("GET", show_op, &app.send(Method::GET, &path, None, None).await), 401);
}
