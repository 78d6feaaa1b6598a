//! The hello-app of the seed article, in process: a TCP server that answers an HTTP
//! request with its pod name, and a UDP server that echoes its name; plus the clients.
//! Sockets are created on a thread inside the pod's namespace, so they live there.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::netns::NetNs;

/// How long any client call may block.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// HTTP (TCP) and UDP servers answering with `name`, stopped when dropped.
pub struct HelloServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl HelloServer {
    /// Starts both servers on `addr` inside `ns`.
    pub fn start(ns: &NetNs, addr: SocketAddr, name: &str) -> Self {
        let (tcp, udp) = ns.run(|| {
            let tcp = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind tcp {addr}: {e}"));
            let udp = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind udp {addr}: {e}"));
            (tcp, udp)
        });
        tcp.set_nonblocking(true).expect("nonblocking listener");
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("udp timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let body = format!("Hello, world!\nVersion: 1.0.0\nHostname: {name}\n");
        let tcp_thread = {
            let stop = stop.clone();
            thread::spawn(move || serve_http(tcp, &body, &stop))
        };
        let udp_thread = {
            let (stop, name) = (stop.clone(), name.to_string());
            thread::spawn(move || serve_udp(udp, &name, &stop))
        };
        HelloServer {
            stop,
            threads: vec![tcp_thread, udp_thread],
        }
    }
}

impl Drop for HelloServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn serve_http(listener: TcpListener, body: &str, stop: &Arc<AtomicBool>) {
    let name = body
        .lines()
        .find_map(|l| l.strip_prefix("Hostname: "))
        .unwrap_or_default()
        .to_string();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((conn, peer)) => {
                // The page ends with the client address this pod saw (after any SNAT).
                let body = format!("{body}Peer: {peer}\n");
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let (name, stop) = (name.clone(), stop.clone());
                thread::spawn(move || serve_connection(conn, &response, &name, &stop));
            }
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// An HTTP GET gets the hello-app page and the connection closes; anything else is a
/// long-lived line protocol: every line is answered with the pod name, until EOF.
fn serve_connection(mut conn: TcpStream, response: &str, name: &str, stop: &AtomicBool) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 1024];
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(n) if first && buf[..n].starts_with(b"GET ") => {
                let _ = conn.write_all(response.as_bytes());
                let _ = conn.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                first = false;
                let lines = buf[..n].iter().filter(|&&b| b == b'\n').count();
                for _ in 0..lines {
                    if conn.write_all(format!("{name}\n").as_bytes()).is_err() {
                        return;
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// A datagram starting with this is echoed (see [`udp_echo`]); any other is answered
/// with the pod name alone.
pub const UDP_ECHO: &[u8] = b"echo\n";

fn serve_udp(socket: UdpSocket, name: &str, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, peer)) = socket.recv_from(&mut buf) {
            let answer = match buf[..n].strip_prefix(UDP_ECHO) {
                Some(rest) => [name.as_bytes(), b"\n", rest].concat(),
                None => name.as_bytes().to_vec(),
            };
            let _ = socket.send_to(&answer, peer);
        }
    }
}

/// Sends `payload` to be echoed on the connected UDP `socket` (one datagram, fragmented
/// by the kernel if larger than the MTU): the name of the pod that echoed it and the
/// bytes echoed.
pub fn udp_echo(socket: &UdpSocket, payload: &[u8]) -> Result<(String, Vec<u8>), String> {
    socket
        .send(&[UDP_ECHO, payload].concat())
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = vec![0u8; 65_536];
    let n = socket.recv(&mut buf).map_err(|e| format!("no echo: {e}"))?;
    let (name, echoed) = buf[..n].split_at(
        buf[..n]
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("no name in the echo")?,
    );
    Ok((String::from_utf8_lossy(name).into_owned(), echoed[1..].to_vec()))
}

/// An HTTP GET of `path` at `target` from inside `ns`: the status code and the body.
pub fn http_get(ns: &NetNs, target: SocketAddr, path: &str) -> Result<(u16, String), String> {
    ns.run(|| {
        let mut conn =
            TcpStream::connect_timeout(&target, IO_TIMEOUT).map_err(|e| format!("connect {target}: {e}"))?;
        conn.set_read_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        conn.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .map_err(|e| format!("send to {target}: {e}"))?;
        let mut response = String::new();
        conn.read_to_string(&mut response)
            .map_err(|e| format!("read from {target}: {e}"))?;
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("no status line from {target}: {response:?}"))?;
        let body = response
            .split_once("\r\n\r\n")
            .map_or("", |(_, body)| body)
            .to_string();
        Ok((status, body))
    })
}

/// The `Hostname:` an HTTP GET to `target` from inside `ns` answers with.
pub fn http_get_hostname(ns: &NetNs, target: SocketAddr) -> Result<String, String> {
    http_get_hostname_and_peer(ns, target).map(|(name, _)| name)
}

/// Steady load for churn scenarios: from each (namespace, target) pair in parallel, one
/// HTTP GET after another, 10 ms apart, until `duration` has passed since `start` (at
/// most 2500 each), every one answered by hello-a or hello-b; a client stops at its first
/// failure. Returns the failures and the number of requests answered in all.
pub fn requests_during(
    clients: &[(&NetNs, SocketAddr)],
    start: Instant,
    duration: Duration,
) -> (Vec<String>, usize) {
    thread::scope(|scope| {
        let handles: Vec<_> = clients
            .iter()
            .map(|&(ns, target)| {
                scope.spawn(move || {
                    let mut done = 0;
                    while start.elapsed() < duration && done < 2500 {
                        match http_get_hostname(ns, target) {
                            Ok(name) if name == "hello-a" || name == "hello-b" => done += 1,
                            other => return (Some(format!("request {done} to {target}: {other:?}")), done),
                        }
                        thread::sleep(Duration::from_millis(10));
                    }
                    (None, done)
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().expect("client")).collect();
        let requests = results.iter().map(|(_, n)| n).sum();
        (results.into_iter().filter_map(|(f, _)| f).collect(), requests)
    })
}

/// The pod that answered an HTTP GET to `target` from inside `ns`, and the client
/// address it saw (`Peer:`).
pub fn http_get_hostname_and_peer(ns: &NetNs, target: SocketAddr) -> Result<(String, SocketAddr), String> {
    let (_, body) = http_get(ns, target, "/")?;
    let field = |name: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
            .ok_or_else(|| format!("no {name} in response from {target}: {body:?}"))
    };
    let peer = field("Peer")?;
    let peer = peer
        .parse()
        .map_err(|e| format!("peer {peer:?} from {target}: {e}"))?;
    Ok((field("Hostname")?.to_string(), peer))
}

/// Sends one datagram from `socket` to `target` and returns the answer and the
/// address it came from.
pub fn udp_ask(socket: &UdpSocket, target: SocketAddr) -> Result<(String, SocketAddr), String> {
    socket
        .send_to(b"who?", target)
        .map_err(|e| format!("send to {target}: {e}"))?;
    let mut buf = [0u8; 1500];
    let (n, from) = socket
        .recv_from(&mut buf)
        .map_err(|e| format!("no UDP answer from {target}: {e}"))?;
    Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
}

/// A UDP socket bound inside `ns` (to `local`), with the client timeout.
pub fn udp_socket(ns: &NetNs, local: SocketAddr) -> UdpSocket {
    let socket = ns.run(|| UdpSocket::bind(local).unwrap_or_else(|e| panic!("bind udp {local}: {e}")));
    socket.set_read_timeout(Some(IO_TIMEOUT)).expect("udp timeout");
    socket
}

/// How a TCP connect from inside `ns` to `target` fails, and how long it took
/// (None: it succeeded).
pub fn tcp_connect_failure(ns: &NetNs, target: SocketAddr) -> Option<(std::io::ErrorKind, Duration)> {
    ns.run(|| {
        let start = Instant::now();
        TcpStream::connect_timeout(&target, IO_TIMEOUT)
            .err()
            .map(|e| (e.kind(), start.elapsed()))
    })
}

/// How a UDP exchange from `local` inside `ns` with `target` fails: one datagram sent
/// on a connected socket, then a receive (an ICMP error surfaces there), and how long
/// it took (None: an answer came).
pub fn udp_exchange_failure(
    ns: &NetNs,
    local: SocketAddr,
    target: SocketAddr,
) -> Option<(std::io::ErrorKind, Duration)> {
    let socket = udp_socket(ns, local);
    let start = Instant::now();
    let result = socket.connect(target).and_then(|()| {
        socket.send(b"who?")?;
        socket.recv(&mut [0u8; 1500])
    });
    result.err().map(|e| (e.kind(), start.elapsed()))
}

/// A long-lived TCP connection from inside `ns` speaking the line protocol.
pub struct LineClient {
    conn: TcpStream,
    reader: std::io::BufReader<TcpStream>,
}

impl LineClient {
    pub fn connect(ns: &NetNs, target: SocketAddr) -> Result<Self, String> {
        let conn = ns
            .run(|| TcpStream::connect_timeout(&target, IO_TIMEOUT))
            .map_err(|e| format!("connect {target}: {e}"))?;
        conn.set_read_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let reader = std::io::BufReader::new(conn.try_clone().map_err(|e| e.to_string())?);
        Ok(LineClient { conn, reader })
    }

    /// Asks once; the answer is the name of the pod serving this connection.
    pub fn ask(&mut self) -> Result<String, String> {
        use std::io::BufRead as _;
        self.conn.write_all(b"who?\n").map_err(|e| format!("send: {e}"))?;
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .map_err(|e| format!("read: {e}"))?;
        if line.is_empty() {
            return Err("connection closed".into());
        }
        Ok(line.trim_end().to_string())
    }
}
