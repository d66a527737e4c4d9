//! A leaky server for the integration tests: `leaky <ip> <port|0>` listens on that
//! address, prints `ready <port>` once listening, accepts every connection, reads each to
//! the end of stream and never closes it, so that each sits in CLOSE_WAIT once its client
//! has closed. It exits when its stdin closes, so it dies with the test that started it.

use std::{
    io::{self, Read, Write},
    net::{IpAddr, TcpListener, TcpStream},
    process::ExitCode,
    sync::{Arc, Mutex},
    thread,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (ip, port) = match &args[..] {
        [ip, port] => match (ip.parse::<IpAddr>(), port.parse::<u16>()) {
            (Ok(ip), Ok(port)) => (ip, port),
            _ => return usage(),
        },
        _ => return usage(),
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
    // The connections stay open until the process exits: that is the leak.
    let kept: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    thread::spawn(move || {
        for conn in listener.incoming().map_while(Result::ok) {
            let kept = Arc::clone(&kept);
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut reader = &conn;
                while reader.read(&mut buf).is_ok_and(|n| n > 0) {}
                kept.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
            });
        }
    });
    // Until stdin closes (the test ended, or dropped us).
    let _ = io::copy(&mut io::stdin(), &mut io::sink());
    ExitCode::SUCCESS
}

fn usage() -> ExitCode {
    eprintln!("usage: leaky <ip> <port|0>");
    ExitCode::from(2)
}
