//! Finds a toolchain that compiles the Rust probe to BPF, and builds the probe with it.
//!
//! Shared by `tracer/build.rs` (which embeds the probe) and `xtask` (which installs what is
//! missing), so both agree on what "a working BPF toolchain" means.
//!
//! Two kinds are accepted, in this order:
//! 1. a rustup `nightly` toolchain with the `rust-src` component (the usual developer set-up);
//! 2. a stable rustc whose sysroot holds the library source, e.g. Debian's `rustc-web` with
//!    `rust-web-src` at `/usr/bin/rustc`, driven with `RUSTC_BOOTSTRAP=1` so that
//!    `-Z build-std=core` is allowed (what the Linux kernel's own Rust build does).
//!
//! Either needs `bpf-linker` built against the same LLVM major as that rustc.
//!
//! Why not aya-build 0.2.0 (pinned in the workspace only for aya-ebpf's build script):
//! - with rustup on PATH it reaches a compiler only through `rustup run <toolchain> cargo`
//!   and removes `RUSTC`, so Debian's `/usr/bin/rustc` would have to be a rustup toolchain.
//!   `rustc-web` ships no cargo and rustup 1.29 refuses `cargo` in a linked toolchain without
//!   one, so setup would have to assemble a directory pairing Debian's rustc with another
//!   toolchain's cargo and `rustup toolchain link` it into the user's `~/.rustup` (a build
//!   script must not), and it breaks when that other toolchain is removed or updated.
//! - it builds into `OUT_DIR`, one per profile: `core` and the probe would be compiled for
//!   debug (clippy, unit tests) and again for release, 1-3 minutes each on 2 cores, where
//!   the code below shares one `target/bpf`.
//!
//! A rustup nightly with rust-src would work with it as is; that case is handled here the
//! same way (`rustup run nightly cargo`).

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

/// Target triple of the probe on little-endian machines.
pub const BPF_TARGET: &str = "bpfel-unknown-none";
/// Where Debian's `rustc-web` installs its compiler.
pub const DEBIAN_RUSTC: &str = "/usr/bin/rustc";

/// How the probe's compiler is invoked.
#[derive(Debug, Clone)]
pub enum Compiler {
    /// `rustup run nightly cargo ...`, with rustup at this path.
    RustupNightly { rustup: PathBuf },
    /// `cargo` with `RUSTC=<path>` and `RUSTC_BOOTSTRAP=1`.
    Bootstrapped { rustc: PathBuf },
}

/// A compiler and linker able to build the probe.
#[derive(Debug, Clone)]
pub struct BpfToolchain {
    pub compiler: Compiler,
    /// Directory holding `bpf-linker`; put first on PATH for the build.
    pub linker_dir: PathBuf,
}

/// What is missing for a BPF build, in words a user can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// No nightly with rust-src and no rustc with library source was found.
    pub compiler: bool,
    /// `bpf-linker` is not on PATH nor in `$CARGO_HOME/bin`.
    pub linker: bool,
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if self.compiler {
            parts.push(
                "a Rust compiler with library source for -Z build-std (rustup: `rustup toolchain \
                 install nightly --component rust-src`; Debian: `apt-get install rustc-web \
                 rust-web-src`)",
            );
        }
        if self.linker {
            parts.push("bpf-linker (`cargo install bpf-linker`)");
        }
        write!(
            f,
            "no BPF toolchain: missing {}; `cargo xtask setup` installs them",
            parts.join(" and ")
        )
    }
}

fn cargo_home() -> Option<PathBuf> {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
}

/// Finds `name` on PATH, then in `$CARGO_HOME/bin`.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(cargo_home().map(|h| h.join("bin")))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn has_library_source(sysroot: &Path) -> bool {
    sysroot
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .is_file()
}

fn output_of(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A rustup nightly toolchain that has `rust-src`, if there is one.
fn rustup_nightly() -> Option<Compiler> {
    let rustup = find_program("rustup")?;
    let sysroot = output_of(
        Command::new(&rustup)
            .args(["run", "nightly", "rustc", "--print", "sysroot"])
            .env_remove("RUSTUP_TOOLCHAIN"),
    )?;
    has_library_source(Path::new(&sysroot)).then_some(Compiler::RustupNightly { rustup })
}

/// A rustc at `rustc` whose sysroot has the library source, if it is one.
pub fn bootstrapped(rustc: &Path) -> Option<Compiler> {
    let sysroot = output_of(Command::new(rustc).args(["--print", "sysroot"]))?;
    has_library_source(Path::new(&sysroot)).then(|| Compiler::Bootstrapped {
        rustc: rustc.to_owned(),
    })
}

/// The first usable compiler: a rustup nightly with rust-src, else Debian's rustc-web.
pub fn find_compiler() -> Option<Compiler> {
    rustup_nightly().or_else(|| bootstrapped(Path::new(DEBIAN_RUSTC)))
}

/// Finds a complete BPF toolchain, or says what is missing.
pub fn detect() -> Result<BpfToolchain, Missing> {
    let compiler = find_compiler();
    let linker_dir = find_program("bpf-linker").and_then(|p| p.parent().map(Path::to_owned));
    match (compiler, linker_dir) {
        (Some(compiler), Some(linker_dir)) => Ok(BpfToolchain {
            compiler,
            linker_dir,
        }),
        (compiler, linker) => Err(Missing {
            compiler: compiler.is_none(),
            linker: linker.is_none(),
        }),
    }
}

/// The LLVM major version a rustc was built with (`rustc -vV`), which bpf-linker must match.
pub fn llvm_major(rustc: &mut Command) -> Option<u32> {
    let text = output_of(rustc.arg("-vV"))?;
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))?;
    version.split('.').next()?.parse().ok()
}

impl Compiler {
    /// A command running this compiler's rustc (for `rustc -vV` and the like).
    pub fn rustc_command(&self) -> Command {
        match self {
            Compiler::RustupNightly { rustup } => {
                let mut cmd = Command::new(rustup);
                cmd.args(["run", "nightly", "rustc"])
                    .env_remove("RUSTUP_TOOLCHAIN");
                cmd
            }
            Compiler::Bootstrapped { rustc } => Command::new(rustc),
        }
    }
}

impl BpfToolchain {
    /// One line naming the compiler and linker, for logs.
    pub fn describe(&self) -> String {
        let compiler = match &self.compiler {
            Compiler::RustupNightly { .. } => "rustup nightly with rust-src".to_owned(),
            Compiler::Bootstrapped { rustc } => {
                format!("{} with RUSTC_BOOTSTRAP=1", rustc.display())
            }
        };
        format!("{compiler}, bpf-linker in {}", self.linker_dir.display())
    }

    /// Builds the probe crate at `workspace` into `target_dir` and returns the object's path.
    /// `cargo` is the cargo to drive a bootstrapped rustc with.
    pub fn build_probe(
        &self,
        workspace: &Path,
        cargo: &Path,
        target_dir: &Path,
    ) -> Result<PathBuf, String> {
        let mut cmd = match &self.compiler {
            Compiler::RustupNightly { rustup } => {
                let mut cmd = Command::new(rustup);
                cmd.args(["run", "nightly", "cargo"]);
                cmd
            }
            Compiler::Bootstrapped { rustc } => {
                let mut cmd = Command::new(cargo);
                cmd.env("RUSTC", rustc).env("RUSTC_BOOTSTRAP", "1");
                cmd
            }
        };
        cmd.current_dir(workspace)
            .args([
                "build",
                "--package",
                "tracer-ebpf",
                "--bins",
                "--release",
                "--target",
                BPF_TARGET,
            ])
            .args(["-Z", "build-std=core", "--target-dir"])
            .arg(target_dir)
            // BTF in the object, as aya-build does; debug info feeds it.
            .env(
                "CARGO_ENCODED_RUSTFLAGS",
                "-Cdebuginfo=2\x1f-Clink-arg=--btf",
            );
        // What an outer cargo or rustup set for the host build must not leak into this one.
        for key in [
            "RUSTUP_TOOLCHAIN",
            "RUSTC_WRAPPER",
            "RUSTC_WORKSPACE_WRAPPER",
            "RUSTFLAGS",
            "CARGO_BUILD_RUSTFLAGS",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_TARGET",
        ] {
            cmd.env_remove(key);
        }
        if let Compiler::RustupNightly { .. } = self.compiler {
            cmd.env_remove("RUSTC");
        }
        let mut path = OsString::from(&self.linker_dir);
        if let Some(old) = env::var_os("PATH") {
            path.push(":");
            path.push(old);
        }
        cmd.env("PATH", path);
        // A build script's stdout is read by cargo as directives: keep the nested cargo off it.
        cmd.stdout(std::process::Stdio::from(std::io::stderr()));
        let status = cmd
            .status()
            .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
        if !status.success() {
            return Err(format!(
                "building the BPF probe failed ({status}) with {}",
                self.describe()
            ));
        }
        Ok(target_dir
            .join(BPF_TARGET)
            .join("release")
            .join("tracer-probe"))
    }
}
