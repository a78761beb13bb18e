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
use spin_sdk::http::IncomingRequest;

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
    let head = builder.body(Vec::new()).map_err(|_| Response::new(Vec::new()))?;
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
