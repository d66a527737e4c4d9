//! `cargo xtask package`: the Debian package. The release binary writes its manual page and
//! completion scripts into target/release/assets/, then cargo-deb (installed the first
//! time) packs them with the binary and the systemd unit as tracer/Cargo.toml's
//! `[package.metadata.deb]` lists them. [`check`] is what CI verifies of the result.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, ensure, Context as _};

use crate::{bpf_toolchain::find_program, cargo, run_step, setup, shown, workspace};

/// cargo-deb release installed when cargo has none (it needs Rust 1.85).
const CARGO_DEB_VERSION: &str = "3.8.0";

/// Every file the package holds, with its mode, as `dpkg -c` lists them.
const CONTENTS: [(&str, &str); 8] = [
    ("./usr/bin/tracer", "-rwxr-xr-x"),
    ("./usr/lib/systemd/system/tracer.service", "-rw-r--r--"),
    ("./usr/share/man/man1/tracer.1.gz", "-rw-r--r--"),
    (
        "./usr/share/bash-completion/completions/tracer",
        "-rw-r--r--",
    ),
    ("./usr/share/zsh/vendor-completions/_tracer", "-rw-r--r--"),
    (
        "./usr/share/fish/vendor_completions.d/tracer.fish",
        "-rw-r--r--",
    ),
    ("./usr/share/doc/tracer/README.md.gz", "-rw-r--r--"),
    ("./usr/share/doc/tracer/copyright", "-rw-r--r--"),
];

/// The completion scripts the package installs: shell, and file name under assets/.
const COMPLETIONS: [(&str, &str); 3] = [
    ("bash", "tracer.bash"),
    ("zsh", "_tracer"),
    ("fish", "tracer.fish"),
];

/// Builds the package around the release binary `tracer`; returns the .deb's path.
pub fn build(tracer: &Path, apt: &mut setup::Apt) -> anyhow::Result<PathBuf> {
    ensure_cargo_deb()?;
    // cargo-deb reads the binary's library dependencies (the package's Depends) with it.
    ensure_program(apt, "dpkg-shlibdeps", "dpkg-dev")?;

    let assets = tracer
        .parent()
        .context("the binary has no directory")?
        .join("assets");
    fs::create_dir_all(&assets).with_context(|| format!("cannot create {}", assets.display()))?;
    let epoch = source_date_epoch();
    let mut man = Command::new(tracer);
    man.arg("man");
    if let Some(epoch) = &epoch {
        man.env("SOURCE_DATE_EPOCH", epoch);
    }
    write(&assets.join("tracer.1"), &output(&mut man)?)?;
    gzip(&assets.join("tracer.1"))?;
    for (shell, file) in COMPLETIONS {
        let script = output(Command::new(tracer).args(["completions", shell]))?;
        write(&assets.join(file), &script)?;
    }
    let readme = assets.join("README.md");
    fs::copy(workspace().join("README.md"), &readme).context("cannot copy README.md")?;
    gzip(&readme)?;

    // The binary is built (with its probe) already: cargo-deb only packs and strips it.
    let mut deb = cargo(&["deb", "--package", "tracer", "--no-build", "--locked"]);
    if let Some(epoch) = &epoch {
        // Dates inside the archive, so that the same commit gives the same package.
        deb.env("SOURCE_DATE_EPOCH", epoch);
    }
    eprintln!("xtask: $ {}", shown(&deb));
    let printed = String::from_utf8(output(&mut deb)?).context("cargo deb printed non-UTF-8")?;
    let path = printed
        .lines()
        .last()
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .with_context(|| format!("cargo deb did not print the package's path: {printed:?}"))?;
    Ok(path)
}

/// What CI checks of the package at `deb`: it holds exactly [`CONTENTS`], depends on libc,
/// neither enables nor starts the service, and its own files work once extracted (the
/// binary runs and, as root, loads its probe; the completions are that binary's; the
/// manual page renders without a warning).
pub fn check(deb: &Path, tracer: &Path, apt: &mut setup::Apt) -> anyhow::Result<()> {
    // groff is what `man` renders pages with.
    ensure_program(apt, "groff", "groff-base")?;
    let listing = String::from_utf8(output(Command::new("dpkg").arg("-c").arg(deb))?)?;
    let mut files: Vec<(&str, &str)> = listing
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| Some((l.split_whitespace().last()?, l.split_whitespace().next()?)))
        .collect();
    files.sort();
    let mut expected = CONTENTS.to_vec();
    expected.sort();
    ensure!(
        files == expected,
        "{} holds {files:?}, expected {expected:?}",
        deb.display()
    );
    let depends = output(
        Command::new("dpkg-deb")
            .args(["-f"])
            .arg(deb)
            .arg("Depends"),
    )?;
    ensure!(
        String::from_utf8_lossy(&depends).contains("libc6"),
        "the package does not depend on libc6: {}",
        String::from_utf8_lossy(&depends).trim()
    );

    let dir = workspace().join("target/package-check");
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    run_step(
        Command::new("dpkg-deb")
            .arg("-e")
            .arg(deb)
            .arg(dir.join("control")),
    )?;
    let postinst = fs::read_to_string(dir.join("control/postinst")).context("no postinst")?;
    // The service is enabled again only where it was enabled before, never on a first
    // install; it is restarted on upgrade only when it runs, and never started.
    ensure!(
        postinst.contains("deb-systemd-helper debian-installed")
            && postinst.contains("try-restart tracer.service")
            && !postinst.contains("deb-systemd-invoke start"),
        "postinst would enable or start tracer.service:\n{postinst}"
    );
    let prerm = fs::read_to_string(dir.join("control/prerm")).context("no prerm")?;
    ensure!(
        prerm.contains("deb-systemd-invoke stop tracer.service"),
        "prerm does not stop tracer.service on removal:\n{prerm}"
    );

    let root = dir.join("root");
    run_step(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root))?;
    let packaged = root.join("usr/bin/tracer");
    let version = output(Command::new(&packaged).arg("--version"))?;
    ensure!(
        version == output(Command::new(tracer).arg("--version"))?,
        "the packaged tracer says {:?}",
        String::from_utf8_lossy(&version)
    );
    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/tracer"),
        ("zsh", "usr/share/zsh/vendor-completions/_tracer"),
        ("fish", "usr/share/fish/vendor_completions.d/tracer.fish"),
    ] {
        let script = output(Command::new(&packaged).args(["completions", shell]))?;
        ensure!(
            fs::read(root.join(path))? == script,
            "{path} is not what the packaged tracer prints for `completions {shell}`"
        );
    }
    run_step(
        Command::new("bash")
            .arg("-n")
            .arg(root.join("usr/share/bash-completion/completions/tracer")),
    )?;

    let page = output(
        Command::new("gzip")
            .arg("-dc")
            .arg(root.join("usr/share/man/man1/tracer.1.gz")),
    )?;
    let page_file = dir.join("tracer.1");
    write(&page_file, &page)?;
    // -ww: every warning; -z: no output, only the diagnostics.
    let rendered = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .arg(&page_file)
        .output()
        .context("cannot run groff")?;
    let warnings = String::from_utf8_lossy(&rendered.stderr);
    ensure!(
        rendered.status.success() && warnings.is_empty(),
        "the manual page does not render cleanly ({}):\n{warnings}",
        rendered.status
    );

    let probe = if setup::is_root() {
        let doctor = Command::new(&packaged)
            .args(["doctor", "--format", "json"])
            .stderr(Stdio::inherit())
            .output()
            .context("cannot run the packaged tracer doctor")?;
        let report: serde_json::Value = serde_json::from_slice(&doctor.stdout)
            .context("the packaged tracer doctor printed no JSON")?;
        let probe = report["checks"]
            .as_array()
            .and_then(|checks| checks.iter().find(|c| c["name"] == "probe"));
        ensure!(
            probe.is_some_and(|c| c["status"] == "ok"),
            "the packaged tracer cannot load its probe: {probe:?}"
        );
        "loads its probe"
    } else {
        "not tried with its probe (that needs root)"
    };
    fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    eprintln!(
        "xtask: package {} ({} KiB): the {} files expected; the extracted tracer runs ({}), {probe}; its completion scripts are in place, its manual page renders without warnings",
        deb.display(),
        fs::metadata(deb)?.len() / 1024,
        CONTENTS.len(),
        String::from_utf8_lossy(&version).trim(),
    );
    Ok(())
}

/// Installs cargo-deb with `cargo install` unless cargo already has it.
fn ensure_cargo_deb() -> anyhow::Result<()> {
    let present = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["deb", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    eprintln!("xtask: cargo-deb is missing: installing cargo-deb {CARGO_DEB_VERSION} with `cargo install` (about 1.5 minutes on 2 cores, once)");
    run_step(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args([
            "install",
            "cargo-deb",
            "--version",
            CARGO_DEB_VERSION,
            "--locked",
        ]),
    )
}

/// Makes sure `program` is on PATH, installing Debian's `package` as root when it is not.
fn ensure_program(apt: &mut setup::Apt, program: &str, package: &str) -> anyhow::Result<()> {
    if find_program(program).is_some() {
        return Ok(());
    }
    if !setup::is_root() || !setup::has_apt() {
        bail!("{program} is missing: install Debian's {package} (`apt-get install {package}` as root)");
    }
    apt.install(
        &format!("{program}, which the package needs"),
        &[package.into()],
    )
}

/// The last commit's time, for `SOURCE_DATE_EPOCH`; none outside a git checkout.
fn source_date_epoch() -> Option<String> {
    let out = Command::new("git")
        .args(["log", "-1", "--format=%ct"])
        .current_dir(workspace())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let epoch = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !epoch.is_empty()).then_some(epoch)
}

/// Replaces `path` by `path`.gz, compressed as Debian wants documentation: `gzip -9n` (no
/// name, no time, so that the same input gives the same bytes).
fn gzip(path: &Path) -> anyhow::Result<()> {
    run_step(Command::new("gzip").arg("-9nf").arg(path))
}

/// What `cmd` prints on stdout; it must succeed (its stderr passes through).
fn output(cmd: &mut Command) -> anyhow::Result<Vec<u8>> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", shown(cmd)))?;
    if !out.status.success() {
        bail!("`{}` failed ({})", shown(cmd), out.status);
    }
    Ok(out.stdout)
}

/// Writes `bytes` to `path`.
fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}
