//! The load generators, each run on a thread inside the client's namespace and pinned to
//! the client CPU, each bounded in count and time:
//! - connection rate: `concurrency` connections in flight on one event loop (like
//!   `wrk -t1 -c16`), each a new TCP connection with one request, until the deadline;
//! - latency: one connection at a time (socket, connect, request, read to EOF);
//! - throughput: one connection writing as fast as it can for the duration.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use kproxy_testbed::netns::NetNs;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::cpu;

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
const IO_TIMEOUT: Duration = Duration::from_secs(1);

/// What one connection-rate run did.
#[derive(Clone, Copy, Debug)]
pub struct RateRun {
    pub connections: u64,
    pub errors: u64,
    pub elapsed: Duration,
}

impl RateRun {
    pub fn per_second(&self) -> f64 {
        self.connections as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

fn check_response(response: &[u8]) -> anyhow::Result<()> {
    if !response.starts_with(b"HTTP/1.1 200") {
        bail!("unexpected response {:?}", String::from_utf8_lossy(response));
    }
    Ok(())
}

/// One blocking request on a new connection from the current thread's namespace.
fn request(target: SocketAddr) -> anyhow::Result<()> {
    let mut conn =
        TcpStream::connect_timeout(&target, IO_TIMEOUT).with_context(|| format!("connect {target}"))?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.write_all(REQUEST)?;
    let mut response = Vec::with_capacity(128);
    conn.read_to_end(&mut response)
        .with_context(|| format!("read from {target}"))?;
    check_response(&response)
}

/// One request to `target` from `ns`: the datapath works before it is measured.
pub fn probe(ns: &NetNs, target: SocketAddr) -> anyhow::Result<()> {
    ns.run(|| {
        // A few tries: the first SYN can race an interface the agent is still attaching.
        let mut last = Ok(());
        for _ in 0..3 {
            last = request(target);
            if last.is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        last
    })
}

/// New connections per second to `target` with `concurrency` in flight, for
/// `duration` or `max_connections`, whichever comes first.
pub fn conn_rate(
    ns: &NetNs,
    target: SocketAddr,
    concurrency: usize,
    duration: Duration,
    max_connections: u64,
) -> anyhow::Result<RateRun> {
    ns.run(|| {
        cpu::pin_current_thread(cpu::CLIENT_CPU);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("client runtime")?;
        let done = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let deadline = started + duration;
        runtime.block_on(async {
            let mut tasks = Vec::new();
            for _ in 0..concurrency {
                let (done, errors) = (done.clone(), errors.clone());
                tasks.push(tokio::spawn(async move {
                    while Instant::now() < deadline
                        && done.load(Ordering::Relaxed) < max_connections
                        && !crate::signals::interrupted()
                    {
                        match tokio::time::timeout(IO_TIMEOUT, async_request(target)).await {
                            Ok(Ok(())) => done.fetch_add(1, Ordering::Relaxed),
                            _ => errors.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                }));
            }
            for task in tasks {
                let _ = task.await;
            }
        });
        Ok(RateRun {
            connections: done.load(Ordering::Relaxed),
            errors: errors.load(Ordering::Relaxed),
            elapsed: started.elapsed(),
        })
    })
}

async fn async_request(target: SocketAddr) -> anyhow::Result<()> {
    let mut conn = tokio::net::TcpStream::connect(target).await?;
    conn.write_all(REQUEST).await?;
    let mut response = Vec::with_capacity(128);
    conn.read_to_end(&mut response).await?;
    check_response(&response)
}

/// Microseconds per whole connection (connect, request, response, close), one at a
/// time, after `warmup` unmeasured ones; at most `count` or `max_time`.
pub fn latencies(
    ns: &NetNs,
    target: SocketAddr,
    warmup: usize,
    count: usize,
    max_time: Duration,
) -> anyhow::Result<Vec<f64>> {
    ns.run(|| {
        cpu::pin_current_thread(cpu::CLIENT_CPU);
        let deadline = Instant::now() + max_time;
        for _ in 0..warmup {
            request(target)?;
        }
        let mut micros = Vec::with_capacity(count);
        while micros.len() < count && Instant::now() < deadline && !crate::signals::interrupted() {
            let started = Instant::now();
            request(target)?;
            micros.push(started.elapsed().as_secs_f64() * 1e6);
        }
        Ok(micros)
    })
}

/// Gbit/s one TCP connection to `target` carries for `duration`.
pub fn throughput(ns: &NetNs, target: SocketAddr, duration: Duration) -> anyhow::Result<f64> {
    ns.run(|| {
        cpu::pin_current_thread(cpu::CLIENT_CPU);
        let mut conn =
            TcpStream::connect_timeout(&target, IO_TIMEOUT).with_context(|| format!("connect {target}"))?;
        conn.set_write_timeout(Some(IO_TIMEOUT))?;
        let chunk = vec![0x5a_u8; 128 * 1024];
        let started = Instant::now();
        let mut bytes = 0u64;
        while started.elapsed() < duration && !crate::signals::interrupted() {
            conn.write_all(&chunk)
                .with_context(|| format!("send to {target}"))?;
            bytes += chunk.len() as u64;
        }
        let elapsed = started.elapsed().as_secs_f64();
        Ok(bytes as f64 * 8.0 / elapsed / 1e9)
    })
}
