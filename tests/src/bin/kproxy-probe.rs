//! The test bed's socket client, run as a child process inside a test cgroup and
//! namespace (cgroup v2 moves whole processes): one line per answer on stdout.
//!
//! - `tcp-get ADDR [N]`: N HTTP GETs to the hello-app: `name=<Hostname> peer=<getpeername>`;
//! - `udp-ask ADDR [N]`: N datagrams from N unconnected sockets (sendto/recvfrom):
//!   `name=<answer> from=<reply source>`;
//! - `connect ADDR`: one TCP connect: `ok peer=<getpeername>`, or
//!   `error=<ErrorKind> ms=<elapsed>`.
//!
//! Every call is bounded by a timeout.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    process::ExitCode,
    time::{Duration, Instant},
};

const TIMEOUT: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(cmd), Some(addr)) = (args.first(), args.get(1)) else {
        eprintln!("usage: kproxy-probe tcp-get|udp-ask|connect ADDR [N]");
        return ExitCode::from(2);
    };
    let Ok(addr) = addr.parse::<SocketAddr>() else {
        eprintln!("bad address {addr}");
        return ExitCode::from(2);
    };
    let n: usize = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(1);
    let result = match cmd.as_str() {
        "tcp-get" => (0..n).try_for_each(|_| tcp_get(addr)),
        "udp-ask" => udp_ask(addr, n),
        "connect" => {
            connect(addr);
            Ok(())
        }
        other => Err(format!("unknown command {other}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn tcp_get(addr: SocketAddr) -> Result<(), String> {
    let mut conn = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("connect {addr}: {e}"))?;
    let peer = conn.peer_addr().map_err(|e| format!("getpeername: {e}"))?;
    conn.set_read_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    conn.write_all(format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut response = String::new();
    conn.read_to_string(&mut response)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let name = response
        .lines()
        .find_map(|l| l.strip_prefix("Hostname: "))
        .ok_or_else(|| format!("no Hostname from {addr}: {response:?}"))?;
    println!("name={name} peer={peer}");
    Ok(())
}

fn udp_ask(addr: SocketAddr, n: usize) -> Result<(), String> {
    // All bound until the last answer: each exchange has its own socket and port.
    let sockets = (0..n)
        .map(|_| UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("bind: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    for socket in &sockets {
        socket
            .set_read_timeout(Some(TIMEOUT))
            .map_err(|e| e.to_string())?;
        socket
            .send_to(b"who?", addr)
            .map_err(|e| format!("send to {addr}: {e}"))?;
        let mut buf = [0u8; 1500];
        let (len, from) = socket
            .recv_from(&mut buf)
            .map_err(|e| format!("no UDP answer from {addr}: {e}"))?;
        println!("name={} from={from}", String::from_utf8_lossy(&buf[..len]));
    }
    Ok(())
}

fn connect(addr: SocketAddr) {
    let start = Instant::now();
    match TcpStream::connect_timeout(&addr, TIMEOUT) {
        Ok(conn) => match conn.peer_addr() {
            Ok(peer) => println!("ok peer={peer}"),
            Err(e) => println!("ok peer-error={:?}", e.kind()),
        },
        Err(e) => println!("error={:?} ms={}", e.kind(), start.elapsed().as_millis()),
    }
}
