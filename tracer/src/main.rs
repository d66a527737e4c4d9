use std::process::ExitCode;

use tracer::cli::{Cli, Command};

fn main() -> ExitCode {
    // Usage errors print one line (plus clap's hint) and exit with status 2.
    let cli = Cli::try_parse_checked(std::env::args_os()).unwrap_or_else(|e| e.exit());
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(anyhow::Error::new(e).context("cannot start the async runtime")),
    };
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Watch(args) => tracer::watch::run(args, std::io::stdout().lock()).await,
            Command::Report(args) => {
                tracer::report::run(args, std::io::stdout().lock(), std::io::stderr())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("tracer: error: {e:#}");
    ExitCode::FAILURE
}
