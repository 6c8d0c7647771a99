//! Test workloads for the end-to-end harness. Every subcommand can first join a cgroup and a
//! network namespace (`--cgroup`, `--netns`), which is how a process becomes "a pod".
//!
//! - `pause`: sleeps until killed (a pod's sandbox process);
//! - `exec -- CMD...`: joins, then execs CMD (agents run this way, in a node's namespace);
//! - `echo-server --port P --name N`: greets each client with `N <client-ip>\n`, then echoes;
//! - `client --addr A --bytes B`: reads the greeting, streams B pattern bytes while reading the
//!   echo back, half-closes, checks every byte; prints `greeting=... echoed=B`;
//! - `conns --addr A --count C`: C concurrent connections, each one round trip; prints `ok=K`;
//! - `chat --addr A --rounds N --interval-ms M`: one long-lived connection, N round trips;
//! - `send --addr A --text T`: sends T, half-closes, prints what came back;
//! - `http-server --port P --size N`: keep-alive HTTP/1.1, N-byte responses (benchmarks);
//! - `hold-server --port P` / `hold --addr A --count N`: N idle connections (benchmarks); the
//!   server greets each with one byte, which the client reads before it reports, so a held
//!   connection is established end to end, not only accepted by a proxy on the way;
//! - `stall-server --port P`: a listener whose accept queue is full, so that connection
//!   attempts hang unanswered (connect timeouts);
//! - `relay --listen A --to B [--scheduling batch|normal]`: a plain TCP relay doing no work of
//!   its own (one thread, epoll, a copy each way): the benchmarks' floor for a proxy hop.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::Duration;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn join(args: &[String]) {
    if let Some(cg) = arg(args, "--cgroup") {
        std::fs::write(format!("{cg}/cgroup.procs"), std::process::id().to_string())
            .expect("joining cgroup");
    }
    if let Some(ns) = arg(args, "--netns") {
        let f = std::fs::File::open(&ns).expect("opening netns");
        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
    }
}

fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(2654435761) >> 13) as u8
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    join(&args);
    raise_fd_limit();
    let timeout = Duration::from_secs(arg(&args, "--timeout").map_or(30, |t| t.parse().unwrap()));
    match args.get(1).map(String::as_str) {
        Some("pause") => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        Some("exec") => {
            use std::os::unix::process::CommandExt;
            let i = args
                .iter()
                .position(|a| a == "--")
                .expect("exec needs -- CMD");
            let err = std::process::Command::new(&args[i + 1])
                .args(&args[i + 2..])
                .exec();
            panic!("exec {}: {err}", args[i + 1]);
        }
        Some("echo-server") => {
            let port: u16 = arg(&args, "--port").unwrap().parse().unwrap();
            let name = arg(&args, "--name").unwrap_or_else(|| "server".into());
            let l = TcpListener::bind(("0.0.0.0", port)).expect("bind");
            // std listens with a backlog of 128; servers use SOMAXCONN, as Go's net does.
            // SAFETY: re-listening on our own listening socket only changes its backlog.
            unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&l), 4096) };
            println!("listening");
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let name = name.clone();
                std::thread::spawn(move || {
                    let peer = s
                        .peer_addr()
                        .map(|p| p.ip().to_string())
                        .unwrap_or_default();
                    if s.write_all(format!("{name} {peer}\n").as_bytes()).is_err() {
                        return;
                    }
                    let mut buf = vec![0u8; 256 * 1024];
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = s.shutdown(Shutdown::Write);
                });
            }
        }
        Some("client") => {
            let addr: SocketAddr = arg(&args, "--addr").unwrap().parse().unwrap();
            let total: u64 = arg(&args, "--bytes").map_or(0, |b| b.parse().unwrap());
            let s = TcpStream::connect_timeout(&addr, timeout)
                .unwrap_or_else(|e| fail(&format!("connect: {e}")));
            s.set_read_timeout(Some(timeout)).unwrap();
            let mut reader = BufReader::with_capacity(256 * 1024, s.try_clone().unwrap());
            let mut greeting = String::new();
            reader
                .read_line(&mut greeting)
                .unwrap_or_else(|e| fail(&format!("greeting: {e}")));
            if greeting.is_empty() {
                fail("connection closed before the greeting");
            }
            let mut w = s.try_clone().unwrap();
            let writer = std::thread::spawn(move || {
                let mut buf = vec![0u8; 256 * 1024];
                let mut sent = 0u64;
                while sent < total {
                    let n = (total - sent).min(buf.len() as u64) as usize;
                    for (j, b) in buf[..n].iter_mut().enumerate() {
                        *b = pattern(sent + j as u64);
                    }
                    w.write_all(&buf[..n])
                        .unwrap_or_else(|e| fail(&format!("write: {e}")));
                    sent += n as u64;
                }
                w.shutdown(Shutdown::Write).unwrap();
            });
            let mut buf = vec![0u8; 256 * 1024];
            let mut got = 0u64;
            loop {
                let n = reader
                    .read(&mut buf)
                    .unwrap_or_else(|e| fail(&format!("read after {got} bytes: {e}")));
                if n == 0 {
                    break;
                }
                for (j, b) in buf[..n].iter().enumerate() {
                    if *b != pattern(got + j as u64) {
                        fail(&format!("byte {} differs", got + j as u64));
                    }
                }
                got += n as u64;
            }
            writer.join().unwrap();
            if got != total {
                fail(&format!("echoed {got} of {total} bytes"));
            }
            println!("greeting={} echoed={got}", greeting.trim());
        }
        Some("conns") => {
            let addr: SocketAddr = arg(&args, "--addr").unwrap().parse().unwrap();
            let count: usize = arg(&args, "--count").unwrap().parse().unwrap();
            // Open all first, then use all: every connection is concurrently established.
            let mut streams = Vec::with_capacity(count);
            for _ in 0..count {
                match TcpStream::connect_timeout(&addr, timeout) {
                    Ok(s) => streams.push(s),
                    Err(e) => eprintln!("connect: {e}"),
                }
            }
            let mut ok = 0;
            for s in &mut streams {
                s.set_read_timeout(Some(timeout)).unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                if r.read_line(&mut line).is_err() || line.is_empty() {
                    continue;
                }
                if s.write_all(b"ping\n").is_err() {
                    continue;
                }
                let mut echo = String::new();
                if r.read_line(&mut echo).is_ok() && echo == "ping\n" {
                    ok += 1;
                }
            }
            println!("ok={ok}");
        }
        Some("chat") => {
            // A long-lived connection: one round trip every interval.
            let addr: SocketAddr = arg(&args, "--addr").unwrap().parse().unwrap();
            let rounds: usize = arg(&args, "--rounds").unwrap().parse().unwrap();
            let interval = Duration::from_millis(
                arg(&args, "--interval-ms").map_or(100, |i| i.parse().unwrap()),
            );
            let mut s = TcpStream::connect_timeout(&addr, timeout)
                .unwrap_or_else(|e| fail(&format!("connect: {e}")));
            s.set_read_timeout(Some(timeout)).unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line)
                .unwrap_or_else(|e| fail(&format!("greeting: {e}")));
            println!("connected");
            for i in 0..rounds {
                s.write_all(format!("round {i}\n").as_bytes())
                    .unwrap_or_else(|e| fail(&format!("round {i}: {e}")));
                let mut echo = String::new();
                r.read_line(&mut echo)
                    .unwrap_or_else(|e| fail(&format!("round {i}: {e}")));
                if echo != format!("round {i}\n") {
                    fail(&format!("round {i}: got {echo:?}"));
                }
                std::thread::sleep(interval);
            }
            println!("rounds={rounds}");
        }
        Some("http-server") => {
            // Keep-alive HTTP/1.1: every request gets a body of --size bytes.
            let port: u16 = arg(&args, "--port").unwrap().parse().unwrap();
            let size: usize = arg(&args, "--size").map_or(1024, |s| s.parse().unwrap());
            let l = TcpListener::bind(("0.0.0.0", port)).expect("bind");
            // SAFETY: re-listening on our own listening socket only changes its backlog.
            unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&l), 4096) };
            let response: Vec<u8> = [
                format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n").into_bytes(),
                vec![b'x'; size],
            ]
            .concat();
            let response = std::sync::Arc::new(response);
            println!("listening");
            for s in l.incoming() {
                let Ok(s) = s else { continue };
                let response = response.clone();
                std::thread::spawn(move || serve_http(s, &response));
            }
        }
        Some("stall-server") => {
            // A backlog of 0 queues one connection; with it queued and never accepted, the
            // kernel drops every later SYN and the caller's connect waits, unanswered.
            let port: u16 = arg(&args, "--port").unwrap().parse().unwrap();
            let l = TcpListener::bind(("0.0.0.0", port)).expect("bind");
            // SAFETY: re-listening on our own listening socket only changes its backlog.
            unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&l), 0) };
            let _queued = TcpStream::connect(("127.0.0.1", port)).expect("filling the queue");
            println!("listening");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        Some("hold-server") => {
            // Accepts, greets and keeps every connection open, without a thread each.
            let port: u16 = arg(&args, "--port").unwrap().parse().unwrap();
            let l = TcpListener::bind(("0.0.0.0", port)).expect("bind");
            // SAFETY: as above.
            unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&l), 4096) };
            println!("listening");
            let mut held = Vec::new();
            for mut s in l.incoming().flatten() {
                if s.write_all(b"h").is_ok() {
                    held.push(s);
                }
            }
        }
        Some("hold") => {
            // Opens --count idle connections, reports, and keeps them until stdin closes.
            let addr: SocketAddr = arg(&args, "--addr").unwrap().parse().unwrap();
            let count: usize = arg(&args, "--count").unwrap().parse().unwrap();
            let mut held = Vec::with_capacity(count);
            for i in 0..count {
                match TcpStream::connect_timeout(&addr, timeout) {
                    Ok(s) => held.push(s),
                    Err(e) => fail(&format!("connection {i}: {e}")),
                }
            }
            // Connected only says the first hop accepted; the greeting says the server did.
            for (i, s) in held.iter_mut().enumerate() {
                s.set_read_timeout(Some(timeout)).unwrap();
                let mut greeting = [0u8; 1];
                if let Err(e) = s.read_exact(&mut greeting) {
                    fail(&format!("connection {i}: no greeting from the server: {e}"));
                }
            }
            println!("held={}", held.len());
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
        }
        Some("send") => {
            let addr: SocketAddr = arg(&args, "--addr").unwrap().parse().unwrap();
            let text = arg(&args, "--text").unwrap_or_default();
            let mut s = TcpStream::connect_timeout(&addr, timeout)
                .unwrap_or_else(|e| fail(&format!("connect: {e}")));
            s.set_read_timeout(Some(timeout)).unwrap();
            s.write_all(text.as_bytes())
                .unwrap_or_else(|e| fail(&format!("write: {e}")));
            s.shutdown(Shutdown::Write)
                .unwrap_or_else(|e| fail(&format!("shutdown: {e}")));
            let mut out = String::new();
            s.read_to_string(&mut out)
                .unwrap_or_else(|e| fail(&format!("read: {e}")));
            print!("{out}");
        }
        Some("relay") => relay(&args),
        _ => fail(
            "usage: e2e-tool pause|exec|echo-server|client|conns|send|relay [--cgroup CG] [--netns NS]",
        ),
    }
}

/// What the agent's data path costs at the least: its workers' design (one thread, epoll via
/// tokio, the same scheduling policy) with nothing between the two sockets but a copy.
fn relay(args: &[String]) {
    use lanyard_core::runtime::{set_thread_scheduling, Scheduling};
    let listen: SocketAddr = arg(args, "--listen").unwrap().parse().unwrap();
    let to: SocketAddr = arg(args, "--to").unwrap().parse().unwrap();
    let scheduling: Scheduling = arg(args, "--scheduling")
        .map_or(Ok(Scheduling::Batch), |s| s.parse())
        .unwrap_or_else(|e| fail(&e));
    set_thread_scheduling(scheduling).unwrap_or_else(|e| fail(&format!("scheduling: {e}")));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind(listen).await.expect("bind");
        println!("listening");
        loop {
            let Ok((mut client, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(to).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
}

fn serve_http(s: TcpStream, response: &[u8]) {
    let _ = s.set_nodelay(true);
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let mut w = s;
    let mut line = String::new();
    loop {
        // Read one request head (no request bodies in the benchmarks).
        let mut head_done = false;
        while !head_done {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => head_done = line == "\r\n",
            }
        }
        if w.write_all(response).is_err() {
            return;
        }
    }
}

fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("e2e-tool: {msg}");
    std::process::exit(1)
}
