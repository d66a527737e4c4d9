use std::process::ExitCode;

use tracer::cli::{Cli, Command};

fn main() -> ExitCode {
    // Usage errors print one line (plus clap's hint) and exit with status 2.
    let cli = Cli::try_parse_checked(std::env::args_os()).unwrap_or_else(|e| e.exit());
    if let Command::Doctor(args) = &cli.command {
        return match tracer::doctor::run(args, std::io::stdout().lock()) {
            Ok(code) => ExitCode::from(code),
            Err(e) => fail(anyhow::Error::new(e).context("writing the report failed")),
        };
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
            Command::Doctor(_) => unreachable!("run above, without the runtime"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("tracer: error: {}", tracer::cli::error_line(&e));
    ExitCode::FAILURE
}
