//! HTTP/1.1 server for the native host. Handlers are not `Send` (like Spin
//! components they run one request on one thread), so each worker thread
//! runs its own single-threaded runtime. One acceptor hands connections to
//! the workers in turn, so that two clients never pile onto one core.

use crate::host::{refused, Host, HostConfig};
use anyhow::Result;
use futures::FutureExt;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use tavle_core::web::BodyReader;
use tavle_core::Problem;
use tokio::sync::mpsc;

/// Serves until the process ends. Returns only on setup errors.
pub fn serve(listener: TcpListener, config: HostConfig, workers: usize) -> Result<()> {
    let mut queues = Vec::new();
    let mut threads = Vec::new();
    for i in 0..workers.max(1) {
        let (tx, rx) = mpsc::unbounded_channel::<(TcpStream, SocketAddr)>();
        queues.push(tx);
        let config = config.clone();
        threads.push(std::thread::Builder::new().name(format!("tavle-worker-{i}")).spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, worker(rx, config))
        })?);
    }
    let mut next = 0;
    loop {
        match listener.accept() {
            Ok(conn) => {
                if queues[next].send(conn).is_err() {
                    break;
                }
                next = (next + 1) % queues.len();
            }
            Err(e) => eprintln!("accept failed: {e}"),
        }
    }
    drop(queues);
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
    }
    Ok(())
}

async fn worker(mut connections: mpsc::UnboundedReceiver<(TcpStream, SocketAddr)>, config: HostConfig) -> Result<()> {
    let host = Rc::new(Host::new(&config)?);
    while let Some((stream, peer)) = connections.recv().await {
        stream.set_nonblocking(true)?;
        let stream = tokio::net::TcpStream::from_std(stream)?;
        let _ = stream.set_nodelay(true);
        let host = host.clone();
        tokio::task::spawn_local(async move {
            let service = service_fn(move |req| {
                let host = host.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(&host, req, peer).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
    Ok(())
}

/// Reads the body under the serving component's limit while it arrives,
/// as the Spin adapter does (`tavle_core::spin_http`), then serves it.
async fn respond(host: &Host, req: hyper::Request<Incoming>, peer: SocketAddr) -> hyper::Response<Full<Bytes>> {
    let (parts, mut body) = req.into_parts();
    let refuse = async |parts, problem| refused(parts, problem).await.map(|b| Full::new(Bytes::from(b)));
    let mut reader = match BodyReader::new(&parts.headers, host.body_limit(parts.uri.path())) {
        Ok(reader) => reader,
        Err(problem) => return refuse(parts, problem).await,
    };
    while let Some(frame) = body.frame().await {
        let pushed = match frame {
            Ok(frame) => frame.data_ref().map_or(Ok(()), |data| reader.push(data)),
            Err(_) => Err(Problem::malformed("the request body could not be read")),
        };
        if let Err(problem) = pushed {
            return refuse(parts, problem).await;
        }
    }
    let req = http::Request::from_parts(parts, reader.finish());
    // A handler that panics answers as a trapped component does on Spin: an
    // empty 500 (and the connection it held is closed, see `SqlxDb`).
    match AssertUnwindSafe(host.handle(req, Some(peer))).catch_unwind().await {
        Ok(response) => response.map(|b| Full::new(Bytes::from(b))),
        Err(_) => {
            let mut response = hyper::Response::new(Full::new(Bytes::new()));
            *response.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
            response
        }
    }
}
