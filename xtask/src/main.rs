//! `cargo xtask`: everything a fresh machine needs, behind a few commands.

mod bench;
#[path = "../../tracer/build/bpf_toolchain.rs"]
#[allow(dead_code)] // build.rs uses the part that builds the probe
mod bpf_toolchain;
mod deploy;
mod kernel;
mod package;
mod prometheus;
mod scale;
mod setup;
mod suite;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context as _};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    about = "Set-up, build, run, test and benchmark the tracer"
)]
enum Task {
    /// Install the BPF toolchain if it is missing (as root on Debian; says what it installs).
    Setup,
    /// Set up, then build target/release/tracer with its probe embedded.
    Build,
    /// Set up, build, and run `tracer ARGS...` (through sudo when not root).
    Run {
        /// Arguments for tracer, e.g. `watch --events`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then run every check: format, lints, unit tests, the systemd unit and
    /// Kubernetes manifests in deploy/, and the privileged integration tests that load the
    /// real probe (those need root; CI fails without it),
    /// on this host's kernel and/or on Debian's 6.1 and 6.12 kernels under QEMU.
    Test {
        /// Where the privileged tests run: `host` (this kernel, after format, lints and
        /// unit tests), `6.1` or `6.12` (only the privileged tests, in a guest of that
        /// kernel; root; installs QEMU and downloads the kernel the first time), or `all`
        /// (host, then 6.1, then 6.12).
        #[arg(long, value_enum, default_value_t = Kernels::Host)]
        kernel: Kernels,
    },
    /// Set up, build, and make the Debian package (cargo-deb, installed if missing):
    /// target/debian/tracer_VERSION_ARCH.deb, whose path it prints.
    Package,
    /// Set up, build, and measure the tracer's cost on loopback connection churn.
    Bench(bench::BenchArgs),
    /// Hold loopback connections open for `bench --scale` (it runs this binary again).
    #[command(hide = true)]
    Hold(scale::HoldArgs),
}

/// The kernels `cargo xtask test` runs the privileged tests on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Kernels {
    /// This machine's kernel.
    Host,
    /// Debian's 6.1 cloud kernel under QEMU.
    #[value(name = "6.1")]
    V6_1,
    /// Debian's 6.12 cloud kernel under QEMU.
    #[value(name = "6.12")]
    V6_12,
    /// Host, then 6.1, then 6.12.
    All,
}

impl Kernels {
    fn host(self) -> bool {
        matches!(self, Kernels::Host | Kernels::All)
    }

    fn guests(self) -> Vec<kernel::Series> {
        match self {
            Kernels::Host => vec![],
            Kernels::V6_1 => vec![kernel::Series::V6_1],
            Kernels::V6_12 => vec![kernel::Series::V6_12],
            Kernels::All => vec![kernel::Series::V6_1, kernel::Series::V6_12],
        }
    }
}

fn main() -> ExitCode {
    match run(Task::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> anyhow::Result<ExitCode> {
    match task {
        Task::Setup => {
            setup::ensure()?;
        }
        Task::Build => {
            build()?;
        }
        Task::Run { args } => {
            let tracer = build()?;
            let mut cmd = if setup::is_root() {
                Command::new(&tracer)
            } else {
                eprintln!("xtask: tracer needs root to load its probe; running it through sudo");
                let mut cmd = Command::new("sudo");
                cmd.arg(&tracer);
                cmd
            };
            let status = cmd
                .args(&args)
                .status()
                .with_context(|| format!("cannot run {}", tracer.display()))?;
            return Ok(ExitCode::from(status.code().unwrap_or(1) as u8));
        }
        Task::Package => {
            let deb = package::build(&build()?, &mut setup::Apt::default())?;
            println!("{}", deb.display());
        }
        Task::Test { kernel } => return test(kernel),
        Task::Bench(args) => {
            if !setup::is_root() {
                bail!("the benchmark attaches the probe: run it as root");
            }
            bench::run(&build()?, &args)?;
        }
        Task::Hold(args) => scale::hold(&args)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The workspace root (xtask sits one level below it).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_owned()
}

/// A cargo command in the workspace that must embed the probe rather than build without it.
fn cargo(args: &[&str]) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace())
        .args(args)
        .env("TRACER_REQUIRE_PROBE", "1");
    cmd
}

/// Runs `cmd`, echoing it, and fails if it fails.
pub fn run_step(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: $ {}", shown(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {}", shown(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", shown(cmd));
    }
    Ok(())
}

/// `cmd` as a shell line, for messages.
fn shown(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Sets up and builds the release binary; returns its path.
fn build() -> anyhow::Result<PathBuf> {
    setup::ensure()?;
    build_release()
}

/// Builds the release binary with its probe; returns its path.
fn build_release() -> anyhow::Result<PathBuf> {
    run_step(&mut cargo(&[
        "build",
        "--release",
        "--locked",
        "--package",
        "tracer",
    ]))?;
    Ok(workspace().join("target/release/tracer"))
}

/// Whether this runs under CI (`CI` set), where tests that cannot run are failures.
fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false")
}

/// `cargo xtask test --kernel KERNELS`: fails if any check or suite run failed.
fn test(kernels: Kernels) -> anyhow::Result<ExitCode> {
    let guests = kernels.guests();
    let privileged = setup::is_root();
    if !guests.is_empty() && !privileged {
        bail!("the kernel suites boot Debian kernels under QEMU and install what they need with apt-get: run them as root");
    }
    setup::ensure()?;
    if kernels.host() {
        run_step(&mut cargo(&["fmt", "--all", "--check"]))?;
        run_step(&mut cargo(&[
            "clippy",
            "--locked",
            "--workspace",
            "--exclude",
            "tracer-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
        run_step(&mut cargo(&["test", "--locked"]))?;
    }
    let tracer = build_release()?;
    let mut apt = setup::Apt::default();
    if kernels.host() {
        let deb = package::build(&tracer, &mut apt)?;
        package::check(&deb, &tracer, &mut apt)?;
        deploy::check(&tracer, &mut apt)?;
        prometheus::check(&mut apt)?;
    }
    if !privileged {
        if in_ci() {
            bail!("CI must run the privileged integration tests, but this is not root");
        }
        eprintln!("xtask: SKIPPING the privileged integration tests: they load the BPF probe and need root (run `sudo cargo xtask test`)");
        return Ok(ExitCode::SUCCESS);
    }
    setup::ensure_test_tools(&mut apt)?;
    prometheus::ensure(&mut apt)?;
    let tests = suite::build()?;
    let mut suites = Vec::new();
    if kernels.host() {
        suites.push(suite::run_on_host(&tests, &tracer));
    }
    for series in guests {
        suites.push(kernel::run(series, &mut apt, &tests, &tracer, in_ci()));
    }
    suite::print_table(&suites);
    if !suites.iter().all(suite::Suite::ok) {
        return Ok(ExitCode::FAILURE);
    }
    if suites.iter().all(|s| s.outcome == suite::Outcome::Passed) {
        eprintln!("xtask: all checks passed");
    } else {
        eprintln!("xtask: no check failed, but not every suite ran (see SKIPPED above)");
    }
    Ok(ExitCode::SUCCESS)
}
