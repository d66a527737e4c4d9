//! Makes sure a BPF toolchain is present, installing what is missing on Debian as root.
//! A machine that already has one (a rustup nightly with rust-src and bpf-linker, or an
//! earlier run of this) installs nothing.

use std::{path::Path, process::Command};

use anyhow::{bail, Context as _};

use crate::{bpf_toolchain, run_step};

/// bpf-linker release known to work with aya 0.14 and LLVM 21-23.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// LLVM majors bpf-linker 0.13 has a feature for.
const BPF_LINKER_LLVM: [u32; 3] = [21, 22, 23];

/// Returns a working BPF toolchain, installing one first if needed.
pub fn ensure() -> anyhow::Result<bpf_toolchain::BpfToolchain> {
    let missing = match bpf_toolchain::detect() {
        Ok(toolchain) => {
            eprintln!(
                "xtask: BPF toolchain: {} (nothing to install)",
                toolchain.describe()
            );
            return Ok(toolchain);
        }
        Err(missing) => missing,
    };
    if !is_root() || !has_apt() {
        bail!("{missing}; run `cargo xtask setup` as root on Debian to install them, or install them yourself");
    }
    eprintln!("xtask: {missing}");
    eprintln!("xtask: installing the BPF toolchain once (later runs find it and install nothing)");
    let mut apt = Apt::default();

    let compiler = match bpf_toolchain::find_compiler() {
        Some(compiler) => compiler,
        None => {
            apt.install(
                "Debian's Rust 1.96 compiler with its library source (builds `core` for the BPF target)",
                &["rustc-web".into(), "rust-web-src".into()],
            )?;
            bpf_toolchain::bootstrapped(Path::new(bpf_toolchain::DEBIAN_RUSTC)).with_context(
                || {
                    format!(
                        "{} has no library source after installing rust-web-src",
                        bpf_toolchain::DEBIAN_RUSTC
                    )
                },
            )?
        }
    };

    if bpf_toolchain::find_program("bpf-linker").is_none() {
        let major = bpf_toolchain::llvm_major(&mut compiler.rustc_command())
            .context("cannot tell which LLVM the BPF rustc uses")?;
        if !BPF_LINKER_LLVM.contains(&major) {
            bail!("the BPF rustc uses LLVM {major}; bpf-linker {BPF_LINKER_VERSION} supports LLVM {BPF_LINKER_LLVM:?}");
        }
        let prefix = format!("/usr/lib/llvm-{major}");
        apt.install(
            &format!("LLVM {major} development files (bpf-linker links against the rustc's LLVM)"),
            &[
                format!("llvm-{major}-dev"),
                format!("libpolly-{major}-dev"),
                "libzstd-dev".into(),
                "zlib1g-dev".into(),
            ],
        )?;
        eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against LLVM {major} (takes 3-5 minutes, once)");
        run_step(
            Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args([
                    "install",
                    "bpf-linker",
                    "--version",
                    BPF_LINKER_VERSION,
                    "--locked",
                    "--no-default-features",
                ])
                .args(["--features", &format!("llvm-{major}")])
                .env("LLVM_PREFIX", &prefix),
        )?;
    }

    let toolchain = bpf_toolchain::detect()
        .map_err(|m| anyhow::anyhow!("still missing after installing: {m}"))?;
    eprintln!("xtask: BPF toolchain ready: {}", toolchain.describe());
    Ok(toolchain)
}

/// Debian's package manager, refreshing its package lists at most once per run.
#[derive(Debug, Default)]
pub struct Apt {
    updated: bool,
}

impl Apt {
    /// Refreshes the package lists, the first time only.
    pub fn update(&mut self) -> anyhow::Result<()> {
        if !self.updated {
            run_step(Command::new("apt-get").args(["update", "-q"]))?;
            self.updated = true;
        }
        Ok(())
    }

    /// Installs `packages`, saying on stderr what for (`what`).
    pub fn install(&mut self, what: &str, packages: &[String]) -> anyhow::Result<()> {
        eprintln!(
            "xtask: installing {what} with apt-get: {}",
            packages.join(" ")
        );
        self.update()?;
        run_step(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                // A machine shared with other work may hold the lock for a while.
                .args(["-o", "DPkg::Lock::Timeout=300"])
                .args(packages)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    }
}

/// Whether this machine has Debian's package manager.
pub fn has_apt() -> bool {
    Path::new("/usr/bin/apt-get").exists()
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Installs what the privileged tests run beside tracer, when missing: `setcap`
/// (libcap2-bin) gives the capability tests' copy of tracer its file capabilities;
/// `strace` and `systemd-analyze` (systemd) check the unit's filters against what it does.
pub fn ensure_test_tools(apt: &mut Apt) -> anyhow::Result<()> {
    let tools = [
        ("setcap", "libcap2-bin"),
        ("strace", "strace"),
        ("systemd-analyze", "systemd"),
    ];
    let missing: Vec<String> = tools
        .iter()
        .filter(|(tool, _)| bpf_toolchain::find_program(tool).is_none())
        .map(|(_, package)| (*package).to_owned())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !has_apt() {
        bail!(
            "the capability tests need setcap, strace and systemd-analyze: install {}",
            missing.join(" ")
        );
    }
    apt.install(
        "what the capability tests run (setcap, strace, systemd-analyze)",
        &missing,
    )
}
