//! The backends: one event-loop thread (pinned to the server CPU) serving every backend
//! pod's listener. A connection whose first bytes are `GET ` gets a fixed `200 OK` and
//! the server closes first (as the baseline's `srv.c`); any other connection is a
//! throughput sink read to EOF. The thread stops when dropped.

use std::{net::SocketAddr, thread::JoinHandle};

use anyhow::Context as _;
use kproxy_testbed::netns::NetNs;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::oneshot,
};

use crate::cpu;

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";

pub struct Backends {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Backends {
    /// Listens on each `(namespace, address)` and serves until dropped.
    pub fn start(listen: &[(&NetNs, SocketAddr)]) -> anyhow::Result<Self> {
        let mut listeners = Vec::new();
        for (ns, addr) in listen {
            // The socket lives in the namespace it was created in, whichever thread serves it.
            let listener = ns
                .run(|| bind(*addr))
                .with_context(|| format!("listen on {addr}"))?;
            listeners.push(listener);
        }
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("bench-servers".into())
            .spawn(move || serve(listeners, stopped))
            .context("spawn server thread")?;
        Ok(Backends {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    // std listens with the kernel's maximum backlog (somaxconn) on Linux.
    std::net::TcpListener::bind(addr)
}

fn serve(listeners: Vec<std::net::TcpListener>, stopped: oneshot::Receiver<()>) {
    cpu::pin_current_thread(cpu::SERVER_CPU);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("bench servers: no runtime: {err}");
            return;
        }
    };
    runtime.block_on(async move {
        for listener in listeners {
            if listener.set_nonblocking(true).is_err() {
                continue;
            }
            let Ok(listener) = TcpListener::from_std(listener) else {
                continue;
            };
            tokio::spawn(accept_loop(listener));
        }
        let _ = stopped.await;
    });
}

async fn accept_loop(listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((conn, _)) => {
                tokio::spawn(handle(conn));
            }
            // Out of file descriptors or similar: back off briefly instead of spinning.
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(1)).await,
        }
    }
}

async fn handle(mut conn: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    let Ok(n) = conn.read(&mut buf).await else {
        return;
    };
    if buf[..n].starts_with(b"GET ") {
        let _ = conn.write_all(RESPONSE).await;
        return; // dropping closes: the server closes first
    }
    while let Ok(n) = conn.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}
