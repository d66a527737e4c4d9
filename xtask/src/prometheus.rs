//! The Prometheus alert rules in `deploy/prometheus/`, checked in the host part of
//! `cargo xtask test`: `promtool check rules` (syntax, PromQL) and `promtool test rules`
//! (their unit tests beside them). Under a second once promtool is there; Debian's
//! `prometheus` package brings it (and the server the metrics tests scrape with).

use std::process::Command;

use anyhow::bail;

use crate::{run_step, setup, workspace};

/// The rules and their tests, relative to the workspace.
const RULES: &str = "deploy/prometheus/tracer.rules.yml";
const RULE_TESTS: &str = "deploy/prometheus/tracer.rules.test.yml";
const PROMTOOL: &str = "/usr/bin/promtool";

/// Checks the rules and runs their unit tests, installing promtool when missing.
pub fn check(apt: &mut setup::Apt) -> anyhow::Result<()> {
    ensure(apt)?;
    let root = workspace();
    run_step(
        Command::new(PROMTOOL)
            .args(["check", "rules"])
            .arg(root.join(RULES)),
    )?;
    run_step(
        Command::new(PROMTOOL)
            .args(["test", "rules"])
            .arg(root.join(RULE_TESTS)),
    )
}

/// Installs Debian's `prometheus` (promtool, and the server the metrics tests run) when
/// missing.
pub fn ensure(apt: &mut setup::Apt) -> anyhow::Result<()> {
    if std::path::Path::new(PROMTOOL).exists()
        && std::path::Path::new("/usr/bin/prometheus").exists()
    {
        return Ok(());
    }
    if !setup::has_apt() {
        bail!("checking the alert rules needs promtool and the metrics tests prometheus: install Prometheus 2.x");
    }
    apt.install(
        "Prometheus (promtool checks deploy/prometheus/; the metrics tests scrape with the server)",
        &["prometheus".into()],
    )
}
