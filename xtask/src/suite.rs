//! The privileged integration tests as one suite of test executables: built once, run on
//! this host's kernel or inside a guest kernel (see `kernel.rs`), and totalled from
//! libtest's own `test result:` lines.

use std::{
    fmt,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{cargo, shown, workspace};

/// libtest's arguments for every test executable. Kernel state (the tracepoint, loopback)
/// is shared, so one test at a time; no colours, so that the output parses the same on a
/// terminal, a pipe or a serial console.
pub const LIBTEST_ARGS: [&str; 3] = ["--test-threads=1", "--color", "never"];

/// The integration tests' executables.
#[derive(Debug)]
pub struct TestBinaries {
    /// Their working directory, the one `cargo test` would give them (the crate's).
    pub dir: PathBuf,
    /// One executable per file in tests/tests/.
    pub paths: Vec<PathBuf>,
}

/// Builds the integration tests without running them; returns their executables.
pub fn build() -> anyhow::Result<TestBinaries> {
    let mut cmd = cargo(&[
        "test",
        "--locked",
        "--package",
        "integration-tests",
        "--no-run",
        "--message-format=json",
    ]);
    eprintln!("xtask: $ {}", shown(&cmd));
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", shown(&cmd)))?;
    if !out.status.success() {
        bail!("`{}` failed ({})", shown(&cmd), out.status);
    }
    let mut paths = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] == "compiler-artifact" && message["profile"]["test"] == true {
            if let Some(path) = message["executable"].as_str() {
                paths.push(PathBuf::from(path));
            }
        }
    }
    if paths.is_empty() {
        bail!("`{}` named no test executable", shown(&cmd));
    }
    // Cargo names them in the order they were built: run them in a fixed one.
    paths.sort_by_key(|p| p.file_name().map(|n| n.to_owned()));
    Ok(TestBinaries {
        dir: workspace().join("tests"),
        paths,
    })
}

/// Totals of libtest's `test result:` lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Tests that passed.
    pub passed: u32,
    /// Tests that failed.
    pub failed: u32,
    /// Tests marked `#[ignore]`.
    pub ignored: u32,
    /// Test executables that printed a result line (one that crashed or hung prints none).
    pub reports: usize,
}

impl Counts {
    /// Sums every `test result:` line in `output`, e.g.
    /// `test result: FAILED. 5 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; ...`.
    pub fn parse(output: &str) -> Counts {
        let mut counts = Counts::default();
        for line in output.lines() {
            let Some((_, result)) = line.split_once("test result: ") else {
                continue;
            };
            counts.reports += 1;
            let totals = result.split_once(". ").map_or("", |(_, totals)| totals);
            for total in totals.split(';') {
                let Some((n, what)) = total.trim().split_once(' ') else {
                    continue;
                };
                let Ok(n) = n.parse::<u32>() else { continue };
                match what {
                    "passed" => counts.passed += n,
                    "failed" => counts.failed += n,
                    "ignored" => counts.ignored += n,
                    _ => {}
                }
            }
        }
        counts
    }
}

/// How a suite run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every test executable ran to its end and no test failed.
    Passed,
    /// Something failed: why, in a few words.
    Failed(String),
    /// It could not run, and that is allowed here (outside CI): why.
    Skipped(String),
}

/// One run of the suite on one kernel.
#[derive(Debug)]
pub struct Suite {
    /// Which run: `host`, `6.1`, `6.12`.
    pub name: String,
    /// The kernel it ran on, as far as known.
    pub kernel: String,
    /// How it ended.
    pub outcome: Outcome,
    /// libtest's totals.
    pub counts: Counts,
    /// Wall time of the run (for a guest: from boot to power-off).
    pub wall: Duration,
}

impl Suite {
    /// Judges a finished run: `exited_ok` when every executable (or the guest's job) exited
    /// with success; `output` holds all of libtest's output; `executables` were run.
    pub fn judge(
        name: &str,
        kernel: String,
        exited_ok: bool,
        output: &str,
        executables: usize,
        wall: Duration,
    ) -> Suite {
        let counts = Counts::parse(output);
        let outcome = if counts.failed > 0 {
            Outcome::Failed(format!("{} test(s) failed", counts.failed))
        } else if counts.reports < executables {
            Outcome::Failed(format!(
                "{} of {executables} test executables reported no result (crashed or killed)",
                executables - counts.reports
            ))
        } else if !exited_ok {
            Outcome::Failed("a test executable exited with failure".into())
        } else {
            Outcome::Passed
        };
        Suite {
            name: name.into(),
            kernel,
            outcome,
            counts,
            wall,
        }
    }

    /// A run that did not happen or did not get as far as the tests.
    pub fn not_run(name: &str, kernel: String, outcome: Outcome) -> Suite {
        Suite {
            name: name.into(),
            kernel,
            outcome,
            counts: Counts::default(),
            wall: Duration::ZERO,
        }
    }

    /// Whether this run lets the whole test task succeed.
    pub fn ok(&self) -> bool {
        !matches!(self.outcome, Outcome::Failed(_))
    }
}

impl fmt::Display for Suite {
    /// One line: which run, the verdict, the totals, the wall time, the kernel, and why it
    /// failed or was skipped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        let (verdict, why) = match &self.outcome {
            Outcome::Passed => ("passed", String::new()),
            Outcome::Failed(why) => ("FAILED", format!(": {why}")),
            Outcome::Skipped(why) => ("SKIPPED", format!(": {why}")),
        };
        write!(
            f,
            "{:<5} {verdict:<7} {:>3} passed {:>3} failed {:>3} ignored {:>7}  {}{why}",
            self.name,
            c.passed,
            c.failed,
            c.ignored,
            minutes(self.wall),
            self.kernel,
        )
    }
}

/// `3m07s`.
fn minutes(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}m{:02}s", s / 60, s % 60)
}

/// Prints the final table, one line per suite run.
pub fn print_table(suites: &[Suite]) {
    eprintln!("xtask: privileged suite per kernel:");
    for suite in suites {
        eprintln!("xtask:   {suite}");
    }
}

/// The failing tests' reports in libtest `output`: each executable's `failures:` section
/// through its `test result:` line.
pub fn failures(output: &str) -> Vec<&str> {
    let mut reports = Vec::new();
    let mut start = None;
    let mut offset = 0;
    for line in output.split_inclusive('\n') {
        let text = line.trim_end();
        if text == "failures:" && start.is_none() {
            start = Some(offset);
        }
        offset += line.len();
        if text.contains("test result: ") {
            if let Some(from) = start.take() {
                reports.push(&output[from..offset]);
            }
        }
    }
    reports
}

/// The kernel this process runs on, e.g. `Linux 6.18.44`.
pub fn host_kernel() -> String {
    match std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        Ok(release) => format!("Linux {}", release.trim()),
        Err(_) => "this machine's kernel".into(),
    }
}

/// Runs the suite on this machine's kernel, echoing libtest's output as it comes.
pub fn run_on_host(tests: &TestBinaries, tracer: &Path) -> Suite {
    let started = Instant::now();
    let mut output = String::new();
    let mut exited_ok = true;
    for exe in &tests.paths {
        let mut cmd = Command::new(exe);
        cmd.args(LIBTEST_ARGS)
            .current_dir(&tests.dir)
            .env("TRACER_BIN", tracer)
            .stdout(Stdio::piped());
        eprintln!("xtask: $ TRACER_BIN={} {}", tracer.display(), shown(&cmd));
        match run_echoed(&mut cmd, &mut output) {
            Ok(success) => exited_ok &= success,
            Err(e) => {
                eprintln!("xtask: {e:#}");
                exited_ok = false;
            }
        }
    }
    Suite::judge(
        "host",
        host_kernel(),
        exited_ok,
        &output,
        tests.paths.len(),
        started.elapsed(),
    )
}

/// Runs `cmd`, copying its stdout to ours and appending it to `output`; returns whether it
/// exited with success.
fn run_echoed(cmd: &mut Command, output: &mut String) -> anyhow::Result<bool> {
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run {}", shown(cmd)))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    for line in BufReader::new(stdout).lines() {
        let line = line.with_context(|| format!("reading the output of {}", shown(cmd)))?;
        println!("{line}");
        output.push_str(&line);
        output.push('\n');
    }
    Ok(child.wait()?.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "\
running 2 tests
test a ... ok
test b ... FAILED

failures:

---- b stdout ----
thread 'b' panicked

failures:
    b

test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.02s

running 3 tests
test result: ok. 2 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.50s
";

    #[test]
    fn counts_sum_every_result_line() {
        assert_eq!(
            Counts::parse(OUTPUT),
            Counts {
                passed: 3,
                failed: 1,
                ignored: 1,
                reports: 2
            }
        );
    }

    #[test]
    fn failures_are_the_failing_executables_reports() {
        let reports = failures(OUTPUT);
        assert_eq!(reports.len(), 1);
        assert!(reports[0].starts_with("failures:\n\n---- b stdout"));
        assert!(reports[0].trim_end().ends_with("finished in 1.02s"));
    }

    #[test]
    fn a_missing_result_line_is_a_failure() {
        let suite = Suite::judge("6.1", "k".into(), true, OUTPUT, 3, Duration::ZERO);
        assert!(matches!(suite.outcome, Outcome::Failed(_)));
        let ok = "test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\n";
        let suite = Suite::judge("6.1", "k".into(), true, ok, 1, Duration::ZERO);
        assert_eq!(suite.outcome, Outcome::Passed);
    }
}
