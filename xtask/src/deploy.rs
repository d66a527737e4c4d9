//! Checks of what `deploy/` ships, in the host part of `cargo xtask test`: the systemd unit
//! (`systemd-analyze verify`, its ExecStart pointed at the built binary, warnings being
//! failures), the Kubernetes manifests (`kubernetes-validate --strict`, whose schemas are
//! bundled: offline), and that both grant the same capabilities. Under a second each once
//! the tools are there; installing them (said on stderr) is once per machine.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

use crate::{run_step, setup, shown, workspace};

/// The unit, relative to the workspace.
const UNIT: &str = "deploy/systemd/tracer.service";
/// The manifests, relative to the workspace.
const DAEMONSET: &str = "deploy/kubernetes/tracer-daemonset.yaml";
/// Where the package installs tracer, as the unit's ExecStart says.
const INSTALLED: &str = "/usr/bin/tracer";
const SYSTEMD_ANALYZE: &str = "/usr/bin/systemd-analyze";
/// kubernetes-validate's release: its schemas go up to Kubernetes 1.37.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
/// Kubernetes versions the manifests must be valid for: the oldest with
/// `securityContext.appArmorProfile`, and the newest the schemas know.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

/// Runs every check; `tracer` is the built binary.
pub fn check(tracer: &Path, apt: &mut setup::Apt) -> anyhow::Result<()> {
    let root = workspace();
    let unit =
        fs::read_to_string(root.join(UNIT)).with_context(|| format!("cannot read {UNIT}"))?;
    let daemonset = fs::read_to_string(root.join(DAEMONSET))
        .with_context(|| format!("cannot read {DAEMONSET}"))?;
    same_capabilities(&unit, &daemonset)?;
    verify_unit(&unit, tracer, apt)?;
    validate_manifests(&root.join(DAEMONSET), apt)?;
    eprintln!("xtask: {UNIT} and {DAEMONSET} check out");
    Ok(())
}

/// Where these checks keep their files (the unit's copy, the validator's venv).
fn work_dir() -> PathBuf {
    workspace().join("target/deploy-check")
}

/// The capabilities a `[Service]` key lists (`KEY=CAP_A CAP_B`), if it is set.
fn unit_capabilities(unit: &str, key: &str) -> Option<BTreeSet<String>> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .next_back()
        .map(|v| v.split_whitespace().map(str::to_owned).collect())
}

/// The capabilities the manifests add (`add: ["BPF", ...]`), `CAP_` prefixed.
fn added_capabilities(manifest: &str) -> Option<BTreeSet<String>> {
    let list = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("add:"))?
        .trim()
        .strip_prefix('[')?
        .strip_suffix(']')?;
    Some(
        list.split(',')
            .map(|c| format!("CAP_{}", c.trim().trim_matches('"')))
            .collect(),
    )
}

/// The unit's ambient and bounding sets and the DaemonSet's added capabilities agree.
fn same_capabilities(unit: &str, daemonset: &str) -> anyhow::Result<()> {
    let ambient = unit_capabilities(unit, "AmbientCapabilities")
        .context("the unit sets no AmbientCapabilities")?;
    let bounding = unit_capabilities(unit, "CapabilityBoundingSet")
        .context("the unit sets no CapabilityBoundingSet")?;
    let added = added_capabilities(daemonset)
        .context("the DaemonSet adds no capabilities (`add: [...]` on one line)")?;
    if ambient != bounding {
        bail!("{UNIT}: AmbientCapabilities {ambient:?} differ from CapabilityBoundingSet {bounding:?}");
    }
    if ambient != added {
        bail!("{UNIT} grants {ambient:?} but {DAEMONSET} adds {added:?}: give both the same set");
    }
    Ok(())
}

/// `unit` with its ExecStart's binary replaced by `tracer`.
fn pointed_at(unit: &str, tracer: &Path) -> anyhow::Result<String> {
    let exec = format!("ExecStart={INSTALLED} ");
    if !unit.lines().any(|l| l.starts_with(&exec)) {
        bail!("{UNIT}: no `{exec}...` line");
    }
    Ok(unit.replace(&exec, &format!("ExecStart={} ", tracer.display())))
}

/// `systemd-analyze verify` on a copy of the unit whose ExecStart is the built binary (it
/// checks that the binary exists); any warning it prints fails the check, as it exits 0
/// on unknown keys or system calls.
fn verify_unit(unit: &str, tracer: &Path, apt: &mut setup::Apt) -> anyhow::Result<()> {
    if !Path::new(SYSTEMD_ANALYZE).exists() {
        install(
            apt,
            "systemd (its systemd-analyze verifies the unit)",
            &["systemd"],
        )?;
    }
    let dir = work_dir();
    fs::create_dir_all(&dir)?;
    let copy = dir.join("tracer.service");
    fs::write(&copy, pointed_at(unit, tracer)?)?;
    let mut cmd = Command::new(SYSTEMD_ANALYZE);
    // The man page comes with the package, not with a checkout.
    cmd.args(["verify", "--man=no"]).arg(&copy);
    eprintln!("xtask: $ {}", shown(&cmd));
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {}", shown(&cmd)))?;
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !said.trim().is_empty() {
        bail!("{UNIT} does not verify ({}):\n{said}", out.status);
    }
    Ok(())
}

/// `kubernetes-validate --strict` (unknown fields are errors) on the manifests, for each
/// of [`KUBERNETES_VERSIONS`], from a virtualenv of its own under target/.
fn validate_manifests(manifest: &Path, apt: &mut setup::Apt) -> anyhow::Result<()> {
    let venv = work_dir().join("venv");
    let validator = venv.join("bin/kubernetes-validate");
    if !validator.exists() {
        make_venv(&venv, apt)?;
        eprintln!(
            "xtask: installing {KUBERNETES_VALIDATE} (Kubernetes' JSON schemas, to validate {DAEMONSET} offline) with pip into {}",
            venv.display()
        );
        run_step(
            Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "--disable-pip-version-check"])
                .arg(KUBERNETES_VALIDATE),
        )?;
    }
    for version in KUBERNETES_VERSIONS {
        run_step(
            Command::new(&validator)
                .args(["--strict", "--quiet", "--kubernetes-version", version])
                .arg(manifest),
        )?;
    }
    Ok(())
}

/// A Python virtualenv at `venv`, installing Debian's python3-venv first when needed.
fn make_venv(venv: &Path, apt: &mut setup::Apt) -> anyhow::Result<()> {
    let make = || {
        Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(venv)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if make() {
        return Ok(());
    }
    install(
        apt,
        "Python's venv module (a virtualenv for kubernetes-validate)",
        &["python3", "python3-venv"],
    )?;
    if !make() {
        bail!(
            "`python3 -m venv {}` failed after installing python3-venv",
            venv.display()
        );
    }
    Ok(())
}

/// Installs `packages` with apt-get as root, or says what to install.
fn install(apt: &mut setup::Apt, what: &str, packages: &[&str]) -> anyhow::Result<()> {
    if !setup::is_root() || !setup::has_apt() {
        bail!(
            "the deploy/ checks need {what}: install {} (as root on Debian, `cargo xtask test` does)",
            packages.join(" ")
        );
    }
    let packages: Vec<String> = packages.iter().map(|p| (*p).to_owned()).collect();
    apt.install(what, &packages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_capability_lists() {
        let unit = "[Service]\nAmbientCapabilities=CAP_BPF CAP_PERFMON\n# AmbientCapabilities=x\n";
        assert_eq!(
            unit_capabilities(unit, "AmbientCapabilities"),
            Some(BTreeSet::from(["CAP_BPF".into(), "CAP_PERFMON".into()]))
        );
        assert_eq!(unit_capabilities(unit, "CapabilityBoundingSet"), None);
        let manifest = "  capabilities:\n    drop: [\"ALL\"]\n    add: [\"BPF\", \"PERFMON\"]\n";
        assert_eq!(
            added_capabilities(manifest),
            Some(BTreeSet::from(["CAP_BPF".into(), "CAP_PERFMON".into()]))
        );
    }

    #[test]
    fn the_unit_and_the_daemonset_must_agree() {
        let unit = |set: &str| {
            format!("AmbientCapabilities={set}\nCapabilityBoundingSet=CAP_BPF CAP_PERFMON\n")
        };
        let ds = "add: [\"BPF\", \"PERFMON\"]";
        assert!(same_capabilities(&unit("CAP_PERFMON CAP_BPF"), ds).is_ok());
        assert!(same_capabilities(&unit("CAP_BPF"), ds).is_err());
        assert!(same_capabilities(&unit("CAP_BPF CAP_PERFMON"), "add: [\"BPF\"]").is_err());
    }

    #[test]
    fn the_shipped_files_agree() {
        let read = |p: &str| fs::read_to_string(workspace().join(p)).unwrap();
        same_capabilities(&read(UNIT), &read(DAEMONSET)).unwrap();
        let pointed = pointed_at(&read(UNIT), Path::new("/x/tracer")).unwrap();
        assert!(
            pointed.contains("\nExecStart=/x/tracer watch "),
            "{pointed}"
        );
    }
}
