//! Idle connections for the integration tests: `idle <connections>` opens that many
//! loopback connections to itself (two sockets each, both ESTABLISHED), prints `ready`,
//! and holds them until its stdin closes, so that it dies with the test that started it.
//! It first raises its soft descriptor limit to the hard one.

use std::{
    io::{self, Write},
    net::{TcpListener, TcpStream},
    process::ExitCode,
};

fn main() -> ExitCode {
    let Some(n) = std::env::args()
        .nth(1)
        .and_then(|n| n.parse::<usize>().ok())
    else {
        eprintln!("usage: idle <connections>");
        return ExitCode::from(2);
    };
    match hold(n) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("idle: {e}");
            ExitCode::FAILURE
        }
    }
}

fn hold(n: usize) -> io::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write only the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let client = TcpStream::connect(addr)?;
        held.push((client, listener.accept()?.0));
    }
    println!("ready");
    io::stdout().flush()?;
    io::copy(&mut io::stdin(), &mut io::sink())?;
    Ok(())
}
