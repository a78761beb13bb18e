//! HTTP plumbing shared by every component: request ids, JSON bodies with
//! limits and pointer-addressed errors, problem+json responses, cookies and
//! the client address. Handlers are plain async functions over `http` types.

use crate::cursor::{Cursors, SealedCursor};
use crate::problem::{field, FieldError, Problem};
use crate::vars::Variables;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::net::IpAddr;

pub type Body = Vec<u8>;
pub type HttpResult = Result<Response<Body>, Problem>;

pub const REQUEST_ID: &str = "x-request-id";
/// The peer's address (`ip:port`), set by Spin and by the native host. Spin
/// appends its own value after any the client sent, so the last one counts.
pub const CLIENT_ADDR: &str = "spin-client-addr";
pub const FORWARDED_FOR: &str = "x-forwarded-for";

/// Per-request facts every handler and the audit log need.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    pub request_id: String,
    pub client_ip: Option<String>,
    pub method: Method,
    pub path: String,
}

impl RequestMeta {
    pub fn of<B>(req: &Request<B>, proxies: &TrustedProxies) -> Self {
        RequestMeta {
            request_id: request_id(req),
            client_ip: client_ip(req, proxies).map(|ip| ip.to_string()),
            method: req.method().clone(),
            path: redact_digit_runs(req.uri().path()),
        }
    }
}

/// Networks of the reverse proxies (ingress) whose `X-Forwarded-For` is
/// believed: the `trusted_proxies` variable, comma-separated CIDRs or
/// addresses. Empty (the default) believes no one: the client address is
/// then the TCP peer.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<ipnet::IpNet>);

impl TrustedProxies {
    pub fn parse(list: &str) -> Result<Self, String> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<ipnet::IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(ipnet::IpNet::from))
                    .map(canonical_net)
                    .map_err(|_| format!("`{s}` is not an IP network (CIDR) or address"))
            })
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }

    pub fn from_vars(vars: &impl Variables) -> Result<Self, Problem> {
        Self::parse(&vars.get("trusted_proxies").unwrap_or_default()).map_err(|e| {
            eprintln!("error: configuration variable `trusted_proxies`: {e}");
            Problem::internal()
        })
    }

    fn trusts(&self, ip: &IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// An IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) as the IPv4 network it
/// is, since addresses are compared in their canonical form.
fn canonical_net(net: ipnet::IpNet) -> ipnet::IpNet {
    match net {
        ipnet::IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map(ipnet::IpNet::V4).unwrap_or(net),
            None => net,
        },
        other => other,
    }
}

/// One entry of `X-Forwarded-For`: a bare address, or `ip:port` / `[v6]:port`
/// as some proxies write it.
fn forwarded_ip(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry.parse::<IpAddr>().ok().or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
}

/// The client's address: the TCP peer, unless the peer is a trusted proxy;
/// then `X-Forwarded-For` is read from the right (the hop nearest to us),
/// past every trusted proxy, to the first address that is not one. Every
/// `X-Forwarded-For` field counts, in order (RFC 9110 5.3): a client cannot
/// hide an entry by sending a second header. An unparsable entry ends the
/// walk at the last address that was vouched for.
fn client_ip<B>(req: &Request<B>, proxies: &TrustedProxies) -> Option<IpAddr> {
    let peer = req.headers().get_all(CLIENT_ADDR).iter().next_back()?.to_str().ok()?;
    let peer = peer.parse::<std::net::SocketAddr>().ok()?.ip().to_canonical();
    if !proxies.trusts(&peer) {
        return Some(peer);
    }
    // Entries are split as bytes and decoded one by one: a field whose other
    // entries are not ASCII (sent by the client, then appended to by the
    // proxy) still has readable entries on its right.
    let fields: Vec<&[u8]> = req.headers().get_all(FORWARDED_FOR).iter().map(|v| v.as_bytes()).collect();
    let mut client = peer;
    for entry in fields.iter().rev().flat_map(|f| f.rsplit(|b| *b == b',')) {
        let Some(ip) = std::str::from_utf8(entry).ok().and_then(forwarded_ip) else { break };
        client = ip.to_canonical();
        if !proxies.trusts(&client) {
            break;
        }
    }
    Some(client)
}

/// The path as logged and echoed (`instance`): eleven or more digits in a
/// row, the shape of an identity number a client put where an id belongs,
/// are replaced, so they never reach a log line or an error body.
fn redact_digit_runs(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut run = String::new();
    for c in path.chars().chain(std::iter::once('/')) {
        if c.is_ascii_digit() {
            run.push(c);
            continue;
        }
        if run.len() >= 11 {
            out.push_str("[digits]");
        } else {
            out.push_str(&run);
        }
        run.clear();
        out.push(c);
    }
    out.pop();
    out
}

/// An identifier a client chose (`x-request-id`, `webhook-id`) in a form
/// that may be echoed, logged and kept in append-only tables: a UUID
/// (hyphenated, as sent), or 1 to 64 characters of `[A-Za-z0-9._-]` without
/// a run of 11 or more digits. That run is the shape of an identity number,
/// which must never land where it cannot be erased. UUIDs are exempt because
/// their last group holds 11 digits in a row in about one of 130 random ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientId(String);

impl ClientId {
    pub const MAX_LEN: usize = 64;
    /// The rule as the client is told it.
    pub const RULE: &str = "a UUID, or 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' and '-' \
         without 11 or more digits in a row";

    pub fn parse(value: &str) -> Option<ClientId> {
        let hyphenated_uuid = value.len() == 36 && uuid::Uuid::try_parse(value).is_ok();
        let narrow = (1..=Self::MAX_LEN).contains(&value.len())
            && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            && longest_digit_run(value) < 11;
        (hyphenated_uuid || narrow).then(|| ClientId(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// Reads as the text it is (e.g. `Option<ClientId>::as_deref`).
impl std::ops::Deref for ClientId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

fn longest_digit_run(value: &str) -> usize {
    value.split(|c: char| !c.is_ascii_digit()).map(str::len).max().unwrap_or(0)
}

/// Echo a client's request id that passes [`ClientId`], otherwise mint one:
/// it goes into every log line and the append-only audit and access logs.
fn request_id<B>(req: &Request<B>) -> String {
    req.headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .and_then(ClientId::parse)
        .map(ClientId::into_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// Marks the answer to a HEAD request: its body is gone, so the Spin
/// adapter must not declare a `Content-Length` of 0 for it (RFC 9110 8.6).
#[derive(Debug, Clone, Copy)]
pub struct HeadResponse;

/// Wraps a handler: request id on every response, problems rendered as
/// problem+json, defensive headers, one log line without query strings.
pub async fn serve<F>(mut req: Request<Body>, vars: &impl Variables, handler: F) -> Response<Body>
where
    F: AsyncFnOnce(Request<Body>, RequestMeta) -> HttpResult,
{
    // HEAD is GET without the body (RFC 9110 9.3.2).
    let head = req.method() == Method::HEAD;
    if head {
        *req.method_mut() = Method::GET;
    }
    let proxies = TrustedProxies::from_vars(vars);
    let meta = RequestMeta::of(&req, proxies.as_ref().unwrap_or(&TrustedProxies::default()));
    let started = std::time::Instant::now();
    let outcome = match proxies {
        Ok(_) => handler(req, meta.clone()).await,
        Err(p) => Err(p),
    };
    let mut response = match outcome {
        Ok(r) => r,
        Err(p) => problem_response(&p, &meta),
    };
    if head {
        response.body_mut().clear();
        response.extensions_mut().insert(HeadResponse);
    }
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&meta.request_id) {
        h.insert(REQUEST_ID, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    eprintln!(
        "request id={} method={} path={} status={} ms={}",
        meta.request_id,
        meta.method,
        meta.path,
        response.status().as_u16(),
        started.elapsed().as_millis()
    );
    response
}

pub fn problem_response(p: &Problem, meta: &RequestMeta) -> Response<Body> {
    let body = serde_json::to_vec(&p.to_json(Some(&meta.path))).unwrap_or_default();
    let mut r = Response::builder()
        .status(p.status)
        .header(header::CONTENT_TYPE, "application/problem+json")
        .body(body)
        .expect("static response parts are valid");
    if let Some(secs) = p.retry_after {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if let Some(allow) = p.allow {
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    // Bearer challenges only where a bearer token is the answer (not webhooks).
    if p.status == StatusCode::UNAUTHORIZED && matches!(p.slug, "unauthenticated" | "invalid-credentials") {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

pub fn json<T: Serialize>(status: StatusCode, value: &T) -> HttpResult {
    let body = serde_json::to_vec(value).map_err(|_| Problem::internal())?;
    Ok(Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .expect("static response parts are valid"))
}

pub fn no_content() -> HttpResult {
    Ok(Response::builder().status(StatusCode::NO_CONTENT).body(Vec::new()).expect("static response parts are valid"))
}

/// Reads a request body under a limit while it arrives, so that no more than
/// `limit` bytes are ever held: a `Content-Length` over the limit is refused
/// before reading, a body that grows past it as soon as it does (413). Both
/// hosts read bodies through this; handlers see only bodies within limits.
pub struct BodyReader {
    limit: usize,
    body: Vec<u8>,
}

impl BodyReader {
    pub fn new(headers: &HeaderMap, limit: usize) -> Result<Self, Problem> {
        let mut declared = None;
        for v in headers.get_all(header::CONTENT_LENGTH) {
            let n = v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok());
            match (n, declared) {
                (None, _) => return Err(Problem::malformed("invalid Content-Length")),
                (Some(n), Some(d)) if n != d => return Err(Problem::malformed("conflicting Content-Length")),
                (Some(n), _) => declared = Some(n),
            }
        }
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(Problem::too_large(limit));
        }
        // No more than a small buffer up front, whatever a client declares.
        let capacity = declared.map_or(0, |n| n as usize).min(limit).min(64 * 1024);
        Ok(BodyReader { limit, body: Vec::with_capacity(capacity) })
    }

    pub fn push(&mut self, chunk: &[u8]) -> Result<(), Problem> {
        if self.body.len() + chunk.len() > self.limit {
            return Err(Problem::too_large(self.limit));
        }
        // Grow by doubling, but never past the limit.
        if self.body.capacity() < self.body.len() + chunk.len() {
            let wanted = (self.body.len() + chunk.len()).max(self.body.capacity() * 2).min(self.limit);
            self.body.reserve_exact(wanted - self.body.len());
        }
        self.body.extend_from_slice(chunk);
        Ok(())
    }

    pub fn finish(self) -> Body {
        self.body
    }
}

/// Parses a JSON body: 415 unless `application/json`, 413 over `limit`,
/// 400 for syntax errors, 422 with a pointer for missing fields, wrong types
/// and unknown fields. Error texts never quote the client's values, because
/// those may be passwords or identity numbers.
pub fn read_json<T: DeserializeOwned>(req: &Request<Body>, limit: usize) -> Result<T, Problem> {
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(Problem::unsupported_media_type());
    }
    let body = req.body();
    if body.len() > limit {
        return Err(Problem::too_large(limit));
    }
    // Fast path: straight into the typed value. A NUL can only arrive as the
    // escape `\u0000`; bodies that might hold one take the checked path.
    let might_hold_nul = body.windows(6).any(|w| w.eq_ignore_ascii_case(b"\\u0000"));
    if !might_hold_nul {
        let mut de = serde_json::Deserializer::from_slice(body);
        let parsed: Result<T, _> = serde_path_to_error::deserialize(&mut de);
        return match parsed {
            Ok(v) => de.end().map(|_| v).map_err(|e| malformed_json(&e)),
            Err(e) if e.inner().classify() == serde_json::error::Category::Data => Err(path_error(&e)),
            Err(e) => Err(malformed_json(e.inner())),
        };
    }
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| malformed_json(&e))?;
    let mut nul = Vec::new();
    find_nul(&value, &mut String::new(), &mut nul);
    if !nul.is_empty() {
        return Err(Problem::validation(nul));
    }
    from_value(value)
}

/// PostgreSQL text cannot hold U+0000, and no field of ours needs it:
/// such strings are refused up front rather than failing in the database.
fn find_nul(value: &serde_json::Value, pointer: &mut String, out: &mut Vec<FieldError>) {
    match value {
        serde_json::Value::String(s) if s.contains('\0') => {
            out.push(field(pointer.clone(), "must not contain NUL characters"))
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                let len = pointer.len();
                pointer.push_str(&format!("/{i}"));
                find_nul(v, pointer, out);
                pointer.truncate(len);
            }
        }
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&k.replace('~', "~0").replace('/', "~1"));
                if k.contains('\0') {
                    out.push(field(pointer.clone(), "must not contain NUL characters"));
                }
                find_nul(v, pointer, out);
                pointer.truncate(len);
            }
        }
        _ => {}
    }
}

fn malformed_json(e: &serde_json::Error) -> Problem {
    Problem::malformed(format!("invalid JSON at line {} column {}", e.line(), e.column()))
}

/// 422 for a type or shape error at a path; the message never quotes values
/// (or unknown keys), which may be personal data sent in the wrong field.
fn path_error<E: std::fmt::Display>(e: &serde_path_to_error::Error<E>) -> Problem {
    let message = e.inner().to_string();
    let mut segments: Vec<_> = e.path().iter().collect();
    if message.starts_with("unknown field") {
        // The path may end in the unknown key itself: point at its object.
        if let Some(serde_path_to_error::Segment::Map { .. }) = segments.last() {
            segments.pop();
        }
    }
    let mut pointer = to_pointer(segments);
    if let Some(name) = missing_field(&message) {
        pointer = format!("{}/{}", pointer.trim_end_matches('/'), name);
    }
    Problem::validation(vec![field(pointer, describe(&message))])
}

/// Deserializes an already-parsed JSON value with pointer-addressed errors.
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, Problem> {
    serde_path_to_error::deserialize(value).map_err(|e| path_error(&e))
}

fn to_pointer<'a>(segments: impl IntoIterator<Item = &'a serde_path_to_error::Segment>) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in segments {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("/{index}")),
            Segment::Map { key } => {
                out.push('/');
                out.push_str(&key.replace('~', "~0").replace('/', "~1"));
            }
            Segment::Enum { variant } => out.push_str(&format!("/{variant}")),
            Segment::Unknown => {}
        }
    }
    out
}

fn missing_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split('`').next()
}

/// A fixed description per kind of serde error. Serde quotes offending
/// values in double quotes or backticks (`integer `12345678901``,
/// `unknown field `x``), so only what follows ", expected" (our own type
/// descriptions) is kept; anything else is reduced to its category.
fn describe(message: &str) -> String {
    // The last one: a quoted value may itself contain ", expected ".
    let expected = message.rsplit_once(", expected ").map(|(_, e)| e);
    let with_expected = |what: &str| match expected {
        Some(e) => format!("{what}; expected {e}"),
        None => what.to_owned(),
    };
    if message.starts_with("missing field") {
        "is required".to_owned()
    } else if message.starts_with("unknown field") {
        with_expected("unknown field")
    } else if message.starts_with("unknown variant") {
        with_expected("unknown value")
    } else if message.starts_with("invalid type") {
        with_expected("has the wrong type")
    } else if message.starts_with("invalid value") {
        with_expected("has an invalid value")
    } else if message.starts_with("invalid length") {
        with_expected("has the wrong length")
    } else if message.starts_with("duplicate field") {
        "appears more than once".to_owned()
    } else {
        // Our own parse errors (domain types) never contain the input, but
        // strip anything quoted all the same.
        redact(message)
    }
}

/// Drops anything between double quotes or backticks.
fn redact(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quote = None;
    for c in message.chars() {
        match quote {
            None if c == '"' || c == '`' => {
                out.push('…');
                quote = Some(c);
            }
            None => out.push(c),
            Some(q) if c == q => quote = None,
            Some(_) => {}
        }
    }
    out
}

/// One query-string parameter, percent-decoded.
pub fn query_param(req: &Request<Body>, name: &str) -> Result<Option<String>, Problem> {
    let Some(q) = req.uri().query() else { return Ok(None) };
    for pair in q.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == name {
            return percent_decode(v)
                .filter(|v| !v.contains('\0'))
                .map(Some)
                .ok_or_else(|| Problem::bad_query(vec![field(format!("/query/{name}"), "invalid percent-encoding")]));
        }
    }
    Ok(None)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Page size from `?limit=`: default 50, 1..=200, otherwise 400.
pub fn page_limit(req: &Request<Body>) -> Result<i64, Problem> {
    limit_param(req, 50, 200)
}

/// The `limit` query parameter of a list whose pages hold 1 to `max` items
/// (`default` without it); anything else is a 400 with pointer `/query/limit`.
pub fn limit_param(req: &Request<Body>, default: i64, max: i64) -> Result<i64, Problem> {
    match query_param(req, "limit")? {
        None => Ok(default),
        Some(v) => match v.parse::<i64>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(Problem::bad_query(vec![field("/query/limit", format!("must be an integer from 1 to {max}"))])),
        },
    }
}

/// A path segment that must be an id: anything but a uuid names nothing
/// visible, so it is a 404 like an unknown id.
pub fn path_id(segment: &str) -> Result<String, Problem> {
    uuid::Uuid::parse_str(segment).map(|u| u.to_string()).map_err(|_| Problem::not_found())
}

/// A cursor page from `limit + 1` fetched rows: the items, and the cursor of
/// the last item shown, sealed by `cursors`, when more rows follow.
pub fn page(
    rows: &[crate::db::Row],
    limit: i64,
    cursors: &Cursors,
    view: impl Fn(&crate::db::Row) -> Result<serde_json::Value, Problem>,
    cursor_of: impl Fn(&crate::db::Row) -> Result<serde_json::Value, Problem>,
) -> HttpResult {
    let shown = &rows[..rows.len().min(limit as usize)];
    let items = shown.iter().map(view).collect::<Result<Vec<_>, _>>()?;
    let next_cursor = match (rows.len() > shown.len(), shown.last()) {
        (true, Some(last)) => Some(cursors.seal(&cursor_of(last)?)),
        _ => None,
    };
    json(StatusCode::OK, &serde_json::json!({"items": items, "next_cursor": next_cursor}))
}

/// The answer of a newest-first page read without a look-ahead row: `items`
/// (one per row of `rows`, newest first), and a cursor before the last row's
/// `id` when the first row's `more` says that older ones follow.
pub fn newest_first_page(rows: &[crate::db::Row], items: Vec<serde_json::Value>, cursors: &Cursors) -> HttpResult {
    let more = match rows.first() {
        Some(r) => r.bool("more")?,
        None => false,
    };
    let next_cursor = match (more, rows.last()) {
        (true, Some(last)) => Some(cursors.seal(&serde_json::json!({"before": last.int("id")?}))),
        _ => None,
    };
    json(StatusCode::OK, &serde_json::json!({"items": items, "next_cursor": next_cursor}))
}

/// 400 for a cursor that is not one this API handed out to this caller for
/// this list with these filters (see [`crate::cursor`]): one answer for
/// every such cursor, whatever is wrong with it.
pub fn malformed_cursor() -> Problem {
    Problem::bad_query(vec![field("/query/cursor", "malformed cursor")])
}

/// The `cursor` query parameter, if it has the form of a cursor; anything
/// else is the malformed-cursor 400. Checked with the other parameters,
/// before the caller is known; [`open_cursor`] opens it once they are.
pub fn cursor_param(req: &Request<Body>) -> Result<Option<SealedCursor>, Problem> {
    let Some(raw) = query_param(req, "cursor")? else { return Ok(None) };
    SealedCursor::parse(&raw).map(Some).ok_or_else(malformed_cursor)
}

/// The position of a query cursor that `cursors` sealed, `None` on the first
/// page; any other cursor is the malformed-cursor 400.
pub fn open_cursor<T: DeserializeOwned>(
    cursors: &Cursors,
    cursor: Option<&SealedCursor>,
) -> Result<Option<T>, Problem> {
    match cursor {
        None => Ok(None),
        Some(c) => cursors.open(c).map(Some).ok_or_else(malformed_cursor),
    }
}

/// The `before` of a newest-first page's cursor (`{"before": id}`, id > 0),
/// `None` on the first page; anything else is the malformed-cursor 400.
pub fn before_cursor(cursors: &Cursors, cursor: Option<&SealedCursor>) -> Result<Option<i64>, Problem> {
    #[derive(serde::Deserialize)]
    struct Before {
        before: i64,
    }
    match open_cursor::<Before>(cursors, cursor)? {
        Some(c) if c.before > 0 => Ok(Some(c.before)),
        Some(_) => Err(malformed_cursor()),
        None => Ok(None),
    }
}

pub fn cookie(req: &Request<Body>, name: &str) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// Whole-path matcher for routes with `{param}` segments.
pub fn match_path<'a>(pattern: &str, path: &'a str) -> Option<Vec<&'a str>> {
    let mut params = Vec::new();
    let mut pat = pattern.trim_end_matches('/').split('/');
    let mut got = path.trim_end_matches('/').split('/');
    loop {
        match (pat.next(), got.next()) {
            (None, None) => return Some(params),
            (Some(p), Some(g)) if p.starts_with('{') && !g.is_empty() => params.push(g),
            (Some(p), Some(g)) if p == g => {}
            _ => return None,
        }
    }
}

/// Validation helper: collects field errors, then fails with 422 if any.
#[derive(Default)]
pub struct Checks(pub Vec<FieldError>);

impl Checks {
    pub fn fail(&mut self, pointer: &str, message: impl Into<String>) {
        self.0.push(field(pointer, message));
    }
    pub fn finish(self) -> Result<(), Problem> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Problem::validation(self.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_never_carry_values_or_unknown_keys() {
        assert_eq!(describe("invalid type: string \"12345678901\", expected u32"), "has the wrong type; expected u32");
        assert_eq!(
            describe("invalid type: integer `12345678901`, expected a string"),
            "has the wrong type; expected a string"
        );
        assert_eq!(
            describe("unknown field `01017012345`, expected one of `tenant`, `username`"),
            "unknown field; expected one of `tenant`, `username`"
        );
        assert_eq!(describe("missing field `name`"), "is required");
        assert_eq!(
            describe("invalid type: string \"x, expected 01017012345\", expected f64"),
            "has the wrong type; expected f64"
        );
        assert_eq!(redact("bad `secret` and \"other\" value"), "bad … and … value");
    }

    #[test]
    fn identity_number_shaped_digits_never_reach_logged_paths() {
        assert_eq!(redact_digit_runs("/pupils/01017012345"), "/pupils/[digits]");
        assert_eq!(redact_digit_runs("/pupils/x010170123456y/results"), "/pupils/x[digits]y/results");
        assert_eq!(redact_digit_runs("/groups/1234567890/overview"), "/groups/1234567890/overview");
        assert_eq!(redact_digit_runs("/"), "/");
    }

    #[test]
    fn client_ids_are_uuids_or_narrow_tokens_without_identity_numbers() {
        let accepted = [
            "client-abc-123",
            "trace-42",
            "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
            "a.b_c-D",
            "1234567890",
            "x1234567890y1234567890",
            "0",
            "550e8400-e29b-41d4-a716-446655440000",
            "550E8400-E29B-41D4-A716-446655440000",
            // A UUID may hold 12 digits in a row; it is still a UUID.
            "01234567-0123-4012-8123-012345678901",
        ];
        for id in accepted.iter().map(|s| s.to_string()).chain(["a".repeat(64)]) {
            assert_eq!(ClientId::parse(&id).map(ClientId::into_string), Some(id.clone()), "{id}");
        }
        let refused = [
            "",
            "01017012345",
            "req-01017012345",
            "x010170123456y",
            "has spaces",
            "trace:42",
            "a/b",
            "ø",
            "{550e8400-e29b-41d4-a716-446655440000}",
            "urn:uuid:550e8400-e29b-41d4-a716-446655440000",
            // Simple (unhyphenated) UUIDs follow the narrow rule, digits included.
            "01017012345e29b41d4a716446655440",
        ];
        for id in refused.iter().map(|s| s.to_string()).chain(["a".repeat(65)]) {
            assert_eq!(ClientId::parse(&id), None, "{id}");
        }
        assert!(ClientId::parse("550e8400e29b41d4a716f466554f0000").is_some(), "no 11 digits in a row");
    }

    #[test]
    fn request_ids_pass_the_client_id_rule_or_are_replaced() {
        let meta = |id: &str| {
            let req = Request::builder().uri("/x").header(REQUEST_ID, id).body(()).unwrap();
            RequestMeta::of(&req, &TrustedProxies::default()).request_id
        };
        assert_eq!(meta("trace-42"), "trace-42");
        for hostile in ["01017012345", "req-01017012345", &"a".repeat(65), "a:b"] {
            let got = meta(hostile);
            assert_ne!(got, hostile);
            assert!(uuid::Uuid::parse_str(&got).is_ok() && got.len() == 36, "{got}");
        }
    }

    #[test]
    fn path_matching() {
        assert_eq!(match_path("/admin/users/{id}", "/admin/users/abc"), Some(vec!["abc"]));
        assert_eq!(match_path("/admin/users/{id}", "/admin/users/"), None);
        assert_eq!(match_path("/admin/users", "/admin/users/"), Some(vec![]));
        assert_eq!(match_path("/admin/users/{id}/roles", "/admin/users/x/roles"), Some(vec!["x"]));
        assert_eq!(match_path("/admin/users/{id}", "/admin/users/x/y"), None);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("%C3%A6+b").as_deref(), Some("æ b"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%"), None);
    }
}
