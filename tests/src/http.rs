//! Real HTTP to a running host: the native host's server on a loopback port,
//! or `spin up` (see `crate::spin`). Both are driven through [`crate::Api`],
//! like the in-process host, so the same scenario runs against each.

use crate::{Api, TestResponse};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::time::Duration;
use tavle_host::host::HostConfig;
use tavle_host::manifest::Manifest;
use tokio::sync::Mutex;

/// A keep-alive HTTP/1.1 client of one server (one request at a time per
/// client), optionally from a chosen loopback address (`127.0.0.2`, …) to
/// test how client addresses are taken.
pub struct HttpClient {
    server: SocketAddr,
    local: Option<IpAddr>,
    sender: Mutex<Option<SendRequest<Full<Bytes>>>>,
}

impl HttpClient {
    pub fn new(server: SocketAddr) -> HttpClient {
        HttpClient { server, local: None, sender: Mutex::new(None) }
    }

    /// A client whose connections come from `local` (any 127.x address).
    pub fn from_address(server: SocketAddr, local: IpAddr) -> HttpClient {
        HttpClient { server, local: Some(local), sender: Mutex::new(None) }
    }

    async fn connect(&self) -> std::io::Result<SendRequest<Full<Bytes>>> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        if let Some(local) = self.local {
            socket.bind(SocketAddr::new(local, 0))?;
        }
        let stream = socket.connect(self.server).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// Sends one request; a connection the server closed is reopened once.
    pub async fn exchange(&self, req: Request<Vec<u8>>) -> TestResponse {
        self.try_send(req, Duration::from_secs(60)).await.unwrap_or_else(|e| panic!("HTTP to {}: {e}", self.server))
    }

    /// Sends one request, failing after `timeout` (a server that never
    /// answers is an error, not a hung test).
    pub async fn try_send(&self, req: Request<Vec<u8>>, timeout: Duration) -> Result<TestResponse, String> {
        let (parts, body) = req.into_parts();
        let mut guard = self.sender.lock().await;
        for attempt in 0..2 {
            let usable = guard.as_mut().is_some_and(|s| !s.is_closed());
            if !usable {
                *guard = Some(self.connect().await.map_err(|e| format!("connect: {e}"))?);
            }
            let sender = guard.as_mut().expect("connected");
            if sender.ready().await.is_err() {
                *guard = None;
                continue;
            }
            let mut request = Request::from_parts(parts.clone(), Full::new(Bytes::from(body.clone())));
            if request.headers().get(http::header::HOST).is_none() {
                let host = http::HeaderValue::from_str(&self.server.to_string()).expect("an address is a valid host");
                request.headers_mut().insert(http::header::HOST, host);
            }
            let answer = match tokio::time::timeout(timeout, sender.send_request(request)).await {
                Err(_) => {
                    *guard = None;
                    return Err(format!("no answer within {timeout:?}"));
                }
                // Only a request that was never sent is sent again.
                Ok(Err(e)) if attempt == 0 && e.is_canceled() => {
                    *guard = None;
                    continue;
                }
                Ok(Err(e)) => return Err(e.to_string()),
                Ok(Ok(answer)) => answer,
            };
            let (parts, body) = answer.into_parts();
            let body = tokio::time::timeout(timeout, body.collect())
                .await
                .map_err(|_| format!("no whole body within {timeout:?}"))?
                .map_err(|e| e.to_string())?
                .to_bytes()
                .to_vec();
            // A server that answered before reading the whole request (a 413)
            // or whose component trapped closes the connection, not always
            // saying so: the next request goes on a new one, as a browser's would.
            if parts.status == http::StatusCode::PAYLOAD_TOO_LARGE || parts.status.is_server_error() {
                *guard = None;
            }
            return Ok(TestResponse { status: parts.status.as_u16(), headers: parts.headers, body });
        }
        Err("the connection closed twice".into())
    }
}

impl Api for HttpClient {
    async fn call(&self, req: Request<Vec<u8>>) -> TestResponse {
        self.exchange(req).await
    }
}

/// The native host on an ephemeral loopback port, configured from spin.toml
/// and `variables`, serving on `workers` threads for the rest of the process.
pub fn start_native(variables: &HashMap<String, String>, workers: usize) -> SocketAddr {
    start_native_on(&crate::project_root().join("spin.toml"), variables, workers)
}

/// The native host serving another manifest (e.g. `spin::manifest_with_probe`).
pub fn start_native_on(manifest: &std::path::Path, variables: &HashMap<String, String>, workers: usize) -> SocketAddr {
    let manifest = Manifest::load(manifest).expect("the manifest loads");
    let config = HostConfig::new(manifest, variables).expect("host config from spin.toml");
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let addr = listener.local_addr().expect("bound");
    std::thread::Builder::new()
        .name("native-host".into())
        .spawn(move || tavle_host::server::serve(listener, config, workers).expect("the native host serves"))
        .expect("a thread");
    addr
}
