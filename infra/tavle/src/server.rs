//! HTTP/1.1 server for the native host. Handlers are not `Send` (like Spin
//! components they run one request on one thread), so each worker thread
//! runs its own single-threaded runtime. One acceptor hands connections to
//! the workers in turn, so that two clients never pile onto one core.

use crate::host::{Host, HostConfig};
use anyhow::Result;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use tokio::sync::mpsc;

/// Bodies above this never reach a handler; components set lower limits.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

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

async fn respond(host: &Host, req: hyper::Request<Incoming>, peer: SocketAddr) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes().to_vec(),
        Err(_) => {
            let req = http::Request::from_parts(parts, Vec::new());
            let response =
                tavle_core::web::serve(req, async |_, _| Err(tavle_core::Problem::too_large(MAX_BODY))).await;
            return response.map(|b| Full::new(Bytes::from(b)));
        }
    };
    let req = http::Request::from_parts(parts, body);
    host.handle(req, Some(peer)).await.map(|b| Full::new(Bytes::from(b)))
}
