//! Spin's incoming request as an `http::Request`, read the way the native
//! host reads it.
//!
//! Written here rather than taken from the SDK's conversion for two reasons:
//! the SDK reads the whole body into memory before the handler runs (so a
//! limit could only be checked afterwards, by which time an unauthenticated
//! client has made the component hold whatever it sent), and it collects
//! headers into a map that keeps one value per name, where a request may
//! carry several `Cookie` or `X-Forwarded-For` fields. Here every header
//! value is kept, in order, and the body is read as a stream under the
//! component's limit (`web::BodyReader`).

use crate::vars::Variables;
use crate::web::{self, Body, BodyReader, RequestMeta};
use crate::Problem;
use futures::StreamExt;
use http::{HeaderName, HeaderValue, Request, Response};
use spin_sdk::http::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

/// The request with its whole body, or the finished error response (413 for
/// a body over `limit(path)`, 400 for a broken one).
pub async fn read_request(
    incoming: IncomingRequest,
    vars: &impl Variables,
    limit: fn(&str) -> usize,
) -> Result<Request<Body>, Response<Body>> {
    let method: http::Method = incoming.method().into();
    let mut builder = Request::builder().method(method).uri(incoming.path_with_query().unwrap_or_else(|| "/".into()));
    for (name, value) in incoming.headers().entries() {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            builder = builder.header(name, value);
        }
    }
    let head = builder.body(Vec::new()).map_err(|_| {
        let mut refused = Response::new(Vec::new());
        *refused.status_mut() = http::StatusCode::BAD_REQUEST;
        refused
    })?;
    let refuse = async |head: Request<Body>, problem: Problem| {
        Err(web::serve(head, vars, async |_, _: RequestMeta| Err(problem)).await)
    };
    let mut reader = match BodyReader::new(head.headers(), limit(head.uri().path())) {
        Ok(reader) => reader,
        Err(problem) => return refuse(head, problem).await,
    };
    let mut stream = incoming.into_body_stream();
    while let Some(chunk) = stream.next().await {
        let pushed = match chunk {
            Ok(bytes) => reader.push(&bytes),
            Err(_) => Err(Problem::malformed("the request body could not be read")),
        };
        if let Err(problem) = pushed {
            return refuse(head, problem).await;
        }
    }
    let (parts, _) = head.into_parts();
    Ok(Request::from_parts(parts, reader.finish()))
}

/// Hands the response to Spin in one piece: its `Content-Length` set, and
/// as much of the body as the stream takes already written when the head is
/// handed over, then the rest.
///
/// Spin 4.0.x does not set `TCP_NODELAY` on the connections it accepts. When
/// the head leaves before the body is there (the SDK sets the response, then
/// writes the body; without a length the body is also chunked, with a final
/// empty chunk of its own), the body's small segment waits under Nagle's
/// algorithm for the client to acknowledge the head, which a client in
/// delayed-ACK mode does after about 40 ms: measured as 40 ms added to many
/// answers on keep-alive connections. Either half alone was not enough; both
/// together make Spin's server write head and body in one segment
/// (`tests/benches/spin.rs`, "answers over 35 ms").
pub fn respond(response: Response<Body>, out: ResponseOutparam) {
    let (parts, body) = response.into_parts();
    let mut headers: Vec<(String, Vec<u8>)> = parts
        .headers
        .iter()
        .filter(|(k, _)| *k != http::header::CONTENT_LENGTH)
        .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect();
    // None on a 204, nor on the answer to a HEAD, whose body is gone (RFC 9110 8.6).
    if parts.status != http::StatusCode::NO_CONTENT && parts.extensions.get::<crate::web::HeadResponse>().is_none() {
        headers.push(("content-length".to_owned(), body.len().to_string().into_bytes()));
    }
    let Ok(fields) = Fields::from_list(&headers) else {
        eprintln!("error: response headers refused by the host");
        return;
    };
    let outgoing = OutgoingResponse::new(fields);
    if outgoing.set_status_code(parts.status.as_u16()).is_err() {
        eprintln!("error: response status refused by the host");
        return;
    }
    let Ok(out_body) = outgoing.body() else { return };
    let Ok(stream) = out_body.write() else { return };
    let first = stream.check_write().map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX).min(body.len()));
    let first = if first > 0 && stream.write(&body[..first]).is_ok() { first } else { 0 };
    out.set(outgoing);
    // blocking-write-and-flush takes at most 4096 bytes per call.
    for chunk in body[first..].chunks(4096) {
        if stream.blocking_write_and_flush(chunk).is_err() {
            return;
        }
    }
    let _ = stream.blocking_flush();
    drop(stream);
    let _ = OutgoingBody::finish(out_body, None);
}
