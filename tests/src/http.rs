//! An HTTP/1 GET from inside a namespace (hyper's client on a runtime of its own), for
//! the agent's health servers: the status, the headers and the body as text.

use std::net::SocketAddr;

use http_body_util::{BodyExt, Empty};
use hyper::{HeaderMap, Request, body::Bytes, header::HOST};
use hyper_util::rt::TokioIo;

use crate::{hello::IO_TIMEOUT, netns::NetNs};

/// What a server answered.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl HttpAnswer {
    /// The header `name` as text (empty when missing).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

/// `GET path` to `target` from inside `ns`, within [`IO_TIMEOUT`] per step.
pub fn http_get(ns: &NetNs, target: SocketAddr, path: &str) -> Result<HttpAnswer, String> {
    ns.run(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        runtime.block_on(get(target, path))
    })
}

async fn get(target: SocketAddr, path: &str) -> Result<HttpAnswer, String> {
    let step = |what: &str, e: &dyn std::fmt::Display| format!("{what} http://{target}{path}: {e}");
    let stream = tokio::time::timeout(IO_TIMEOUT, tokio::net::TcpStream::connect(target))
        .await
        .map_err(|e| step("connect", &e))?
        .map_err(|e| step("connect", &e))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| step("handshake", &e))?;
    tokio::spawn(connection);
    let request = Request::get(path)
        .header(HOST, target.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| step("build request", &e))?;
    let response = tokio::time::timeout(IO_TIMEOUT, sender.send_request(request))
        .await
        .map_err(|e| step("send", &e))?
        .map_err(|e| step("send", &e))?;
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(IO_TIMEOUT, body.collect())
        .await
        .map_err(|e| step("read", &e))?
        .map_err(|e| step("read", &e))?
        .to_bytes();
    Ok(HttpAnswer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
