//! A leaky server for the integration tests: `leaky <ip> <port|0> [CLIENTS [CLIENT_PORT]]`
//! listens on that address, prints `ready <port>` once listening, accepts every
//! connection, reads each to the end of stream and never closes it, so that each sits in
//! CLOSE_WAIT once its client has closed.
//!
//! With CLIENTS, it is also its own client, so that it can leak inside a network namespace
//! no test process is in: it connects CLIENTS times (from CLIENT_PORT when given, for
//! 4-tuples the tests choose), closes each client, and prints `leak <client port> <fd>`
//! once the server side has read the end of stream (it is then in CLOSE_WAIT), then
//! `leaked`. It exits when its stdin closes, so it dies with the test that started it.

use std::{
    io::{self, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    process::ExitCode,
    sync::{mpsc, Arc, Mutex},
    thread,
};

use socket2::{Domain, Socket, Type};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match &args[..] {
        [ip, port, rest @ ..] if rest.len() <= 2 => (|| {
            let clients = rest.first().map_or(Ok(0), |c| c.parse::<usize>()).ok()?;
            let client_port = rest.get(1).map_or(Ok(0), |p| p.parse::<u16>()).ok()?;
            Some((
                ip.parse::<IpAddr>().ok()?,
                port.parse::<u16>().ok()?,
                clients,
                client_port,
            ))
        })(),
        _ => None,
    };
    let Some((ip, port, clients, client_port)) = parsed else {
        eprintln!("usage: leaky <ip> <port|0> [CLIENTS [CLIENT_PORT]]");
        return ExitCode::from(2);
    };
    let listener = match TcpListener::bind((ip, port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("leaky: cannot listen on {ip} port {port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(port);
    println!("ready {port}");
    if io::stdout().flush().is_err() {
        return ExitCode::FAILURE;
    }
    // The connections stay open until the process exits: that is the leak. Each one's
    // peer port and fd are announced once its end of stream has been read.
    let (read_eof, eofs) = mpsc::channel::<(u16, i32)>();
    let kept: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    thread::spawn(move || {
        for conn in listener.incoming().map_while(Result::ok) {
            let kept = Arc::clone(&kept);
            let read_eof = read_eof.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut reader = &conn;
                while reader.read(&mut buf).is_ok_and(|n| n > 0) {}
                let peer = conn.peer_addr().map_or(0, |a| a.port());
                let _ = read_eof.send((peer, conn.as_raw_fd()));
                kept.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
            });
        }
    });
    for _ in 0..clients {
        if let Err(e) = connect_and_close(SocketAddr::new(ip, port), client_port) {
            eprintln!("leaky: connecting to itself failed: {e}");
            return ExitCode::FAILURE;
        }
        let Ok((peer, fd)) = eofs.recv() else {
            return ExitCode::FAILURE;
        };
        println!("leak {peer} {fd}");
    }
    if clients > 0 {
        println!("leaked");
    }
    if io::stdout().flush().is_err() {
        return ExitCode::FAILURE;
    }
    // Until stdin closes (the test ended, or dropped us).
    let _ = io::copy(&mut io::stdin(), &mut io::sink());
    ExitCode::SUCCESS
}

/// One client that connects to `to` (from `from_port` unless 0) and closes at once.
fn connect_and_close(to: SocketAddr, from_port: u16) -> io::Result<()> {
    let client = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
    if from_port != 0 {
        client.set_reuse_address(true)?;
        client.bind(&SocketAddr::new(to.ip(), from_port).into())?;
    }
    client.connect(&to.into())
}
