use std::{
    io::{ErrorKind, Write},
    process::ExitCode,
};

use tracer::cli::{Cli, Command};

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().collect();
    let cli = match Cli::try_parse_checked(&args) {
        Ok(cli) => cli,
        // A usage error is one line and exit status 2; help and version print as clap
        // has them (with no subcommand, the help goes to stderr with status 2).
        Err(e)
            if e.use_stderr()
                && e.kind() != clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            eprintln!("{}", tracer::cli::usage_error_line(&e, &args));
            return ExitCode::from(2);
        }
        Err(e) => e.exit(),
    };
    match &cli.command {
        Command::Doctor(args) => {
            return match tracer::doctor::run(args, std::io::stdout().lock()) {
                Ok(code) => ExitCode::from(code),
                Err(e) => fail(anyhow::Error::new(e).context("writing the report failed")),
            };
        }
        Command::Completions(args) => {
            return print(
                &tracer::completions::script(args.shell),
                "completion script",
            )
        }
        Command::Man => return print(&tracer::manpage::render(), "manual page"),
        Command::Watch(_) | Command::Report(_) => {}
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(anyhow::Error::new(e).context("cannot start the async runtime")),
    };
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Watch(args) => tracer::watch::run(args, std::io::stdout()).await,
            Command::Report(args) => {
                tracer::report::run(args, std::io::stdout().lock(), std::io::stderr())
            }
            _ => unreachable!("run above, without the runtime"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// Writes `bytes` (a `what`) to stdout; a reader that went away early (`| head`) is no error.
fn print(bytes: &[u8], what: &str) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != ErrorKind::BrokenPipe => {
            fail(anyhow::Error::new(e).context(format!("writing the {what} to stdout failed")))
        }
        _ => ExitCode::SUCCESS,
    }
}

fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("tracer: error: {}", tracer::cli::error_line(&e));
    ExitCode::FAILURE
}
