//! `cargo xtask test --kernel 6.1|6.12`: the privileged suite inside Debian's cloud kernel
//! of that series, booted under QEMU.
//!
//! The guest shares this machine's root read-only over virtiofs, so the host's release
//! binary and test executables run in it as they are; its init (guest/init.sh) mounts
//! what the tests need, runs them, and prints their exit status on the serial console.
//! KVM is unusable on these machines (nested and paravirtual), so QEMU emulates the CPU
//! (TCG): 11-13 minutes per kernel for 75 tests. Kernels come from Debian's archive as
//! packages, extracted into target/kernels/ (kept for later runs), never installed into /boot.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader, Write},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{
    run_step, setup, shown,
    suite::{self, Outcome, Suite, TestBinaries, LIBTEST_ARGS},
    workspace,
};

/// A Debian cloud kernel series the privileged suite can run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Series {
    /// Linux 6.1 (Debian 12's own kernel).
    V6_1,
    /// Linux 6.12 (Debian 12's newer kernel, Debian 13's own).
    V6_12,
}

impl Series {
    /// `6.1` or `6.12`.
    pub fn name(self) -> &'static str {
        match self {
            Series::V6_1 => "6.1",
            Series::V6_12 => "6.12",
        }
    }
}

/// Debian packages the guests need on the host: QEMU (with virtiofsd), a static busybox
/// for the initramfs and the guest init, cpio to pack the initramfs, xz to unpack modules,
/// kmod's depmod to tell their dependencies (a kernel package leaves that to its
/// post-install script, which extracting it does not run).
const TOOLS: [&str; 5] = [
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "xz-utils",
    "kmod",
];
const QEMU: &str = "/usr/bin/qemu-system-x86_64";
const VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";
const BUSYBOX: &str = "/bin/busybox";

/// How long a guest may take from boot to power-off before it is killed. Measured: 11-13
/// minutes per kernel under TCG with 75 tests, boot included, on a quiet 2-core machine;
/// 15 minutes killed a 6.1 run that shared the machine with a benchmark.
const GUEST_DEADLINE: Duration = Duration::from_secs(25 * 60);
/// What the guest init prints before the job's exit status.
const EXIT_MARKER: &str = "@@xtask-guest-exit-status@@ ";
/// Modules the guest loads for sock_diag (attribution): the host's root has no module
/// tree for the guest's kernel.
const GUEST_MODULES: [&str; 2] = ["inet_diag", "tcp_diag"];
/// Modules that must be loaded before the root can be mounted over virtiofs.
const ROOT_MODULES: [&str; 2] = ["virtio_pci", "virtiofs"];

const GUEST_INIT: &str = include_str!("guest/init.sh");
const INITRAMFS_INIT: &str = include_str!("guest/initramfs-init.sh");

/// A Debian kernel package, extracted and ready to boot.
#[derive(Debug)]
struct Kernel {
    /// The package, e.g. `linux-image-6.1.0-56-cloud-amd64`.
    package: String,
    /// Its Debian version, e.g. `6.1.170-1`.
    version: String,
    vmlinuz: PathBuf,
    /// For kernels that need modules loaded to mount the root.
    initramfs: Option<PathBuf>,
    /// Modules for the guest init to load, in name order.
    guest_modules: PathBuf,
}

impl Kernel {
    fn describe(&self) -> String {
        format!("Linux {} ({})", self.version, self.package)
    }
}

/// Makes sure the guests can run: root (checked by the caller), QEMU and the rest of
/// [`TOOLS`] installed, else installs them.
fn ensure_tools(apt: &mut setup::Apt) -> anyhow::Result<()> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${db:Status-Abbrev}\n"])
        .args(TOOLS)
        .stderr(Stdio::null())
        .output()
        .context("cannot run dpkg-query: booting test kernels needs Debian's packages")?;
    let listed = String::from_utf8_lossy(&out.stdout);
    let missing: Vec<String> = TOOLS
        .iter()
        .filter(|tool| {
            !listed.lines().any(|l| {
                l.split_once(' ')
                    .is_some_and(|(name, status)| name == **tool && status.starts_with("ii"))
            })
        })
        .map(|tool| tool.to_string())
        .collect();
    if !missing.is_empty() {
        if !setup::has_apt() {
            bail!(
                "missing {}, and this is not Debian (no apt-get): install them",
                missing.join(" ")
            );
        }
        apt.install(
            "what boots the test kernels (QEMU with virtiofsd, a static busybox, cpio, xz, depmod), once",
            &missing,
        )?;
    }
    for path in [QEMU, VIRTIOFSD, BUSYBOX] {
        if !Path::new(path).exists() {
            bail!("no {path} although {} are installed", TOOLS.join(" "));
        }
    }
    Ok(())
}

/// Runs the suite in a guest of `series`. A guest that cannot be prepared (no QEMU, no
/// kernel) is skipped with the reason, or fails under CI (`must_run`).
pub fn run(
    series: Series,
    apt: &mut setup::Apt,
    tests: &TestBinaries,
    tracer: &Path,
    must_run: bool,
) -> Suite {
    let name = series.name();
    let kernel = match ensure_tools(apt).and_then(|()| fetch(series, apt)) {
        Ok(kernel) => kernel,
        Err(e) => {
            let why = format!("cannot prepare a {name} guest: {e:#}");
            eprintln!("xtask: {why}");
            let outcome = if must_run {
                Outcome::Failed(why)
            } else {
                eprintln!("xtask: SKIPPING the suite on {name} (CI would fail here)");
                Outcome::Skipped(why)
            };
            return Suite::not_run(name, format!("Linux {name}"), outcome);
        }
    };
    let run_dir = kernels_dir().join(format!("run-{name}"));
    let suite = match boot(&kernel, &run_dir, tests, tracer) {
        Ok(guest) => {
            let suite = Suite::judge(
                name,
                kernel.describe(),
                guest.status == Some(0),
                &guest.output,
                tests.paths.len(),
                guest.wall,
            );
            if let Outcome::Failed(why) = &suite.outcome {
                report_failure(&guest, why, &run_dir);
            }
            suite
        }
        Err(e) => Suite::not_run(
            name,
            kernel.describe(),
            Outcome::Failed(format!("the guest did not run: {e:#}")),
        ),
    };
    eprintln!("xtask: {suite}");
    suite
}

/// The cache of extracted kernels and the guests' run directories.
fn kernels_dir() -> PathBuf {
    workspace().join("target/kernels")
}

/// The newest package of `series` that Debian's package lists name, if any:
/// `linux-image-<series>.<more>-cloud-amd64`, e.g. `linux-image-6.1.0-56-cloud-amd64` or
/// `linux-image-6.12.117+deb12-cloud-amd64` (not the meta-package `...-6.12-cloud-amd64`).
fn newest_package(series: Series) -> anyhow::Result<Option<String>> {
    let prefix = format!("linux-image-{}.", series.name());
    let out = Command::new("apt-cache")
        .args(["pkgnames", &prefix])
        .output()
        .context("cannot run apt-cache")?;
    let newest = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|name| {
            let version = name.strip_prefix(&prefix)?.strip_suffix("-cloud-amd64")?;
            // The numbers in the name, e.g. 0-56 -> [0, 56], order the releases.
            let key: Vec<u64> = version
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse().ok())
                .collect();
            Some((key, name.to_string()))
        })
        .max();
    Ok(newest.map(|(_, name)| name))
}

/// The newest kernel of `series`, downloaded and extracted the first time.
fn fetch(series: Series, apt: &mut setup::Apt) -> anyhow::Result<Kernel> {
    let mut package = newest_package(series)?;
    let cached = |package: &Option<String>| {
        package
            .as_ref()
            .is_some_and(|p| kernels_dir().join(p).join("version").exists())
    };
    if !cached(&package) {
        // Stale or empty package lists name a kernel the archive no longer has, or none.
        apt.update()?;
        package = newest_package(series)?;
    }
    let package = package.with_context(|| {
        format!(
            "Debian's package lists name no linux-image-{}.*-cloud-amd64",
            series.name()
        )
    })?;
    let dir = kernels_dir().join(&package);
    if !dir.join("version").exists() {
        eprintln!(
            "xtask: downloading the Linux {} cloud kernel {package} from Debian (about 30 MB, once) into {}",
            series.name(),
            dir.display()
        );
        extract(&package, &dir)?;
    }
    let version = fs::read_to_string(dir.join("version"))?.trim().to_string();
    let initramfs = dir.join("initramfs.cpio");
    Ok(Kernel {
        vmlinuz: dir.join("vmlinuz"),
        initramfs: initramfs.exists().then_some(initramfs),
        guest_modules: dir.join("guest-modules"),
        package,
        version,
    })
}

/// Downloads `package` and prepares everything a guest needs in `dir`; writes `dir/version`
/// last, so that an interrupted run starts over.
fn extract(package: &str, dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    fs::create_dir_all(dir)?;
    run_step(
        Command::new("apt-get")
            // apt's download user may not write into the cache: it is root's anyway.
            .args(["download", "-q", "-o", "APT::Sandbox::User=root", package])
            .current_dir(dir),
    )?;
    let deb = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", dir.display()))?;
    let root = dir.join("root");
    run_step(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    let version = Command::new("dpkg-deb")
        .args(["--field"])
        .arg(&deb)
        .arg("Version")
        .output()?;
    let version = String::from_utf8(version.stdout)?;
    fs::remove_file(&deb)?;

    let modules_root = root.join("lib/modules");
    let release = fs::read_dir(&modules_root)
        .with_context(|| format!("{package} has no {}", modules_root.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .with_context(|| format!("{package} has no module tree"))?;
    run_step(Command::new("depmod").arg("-b").arg(&root).arg(&release))?;
    let modules = Modules::read(&modules_root.join(&release))?;
    fs::rename(
        root.join(format!("boot/vmlinuz-{release}")),
        dir.join("vmlinuz"),
    )
    .with_context(|| format!("{package} has no boot/vmlinuz-{release}"))?;
    modules.stage(&GUEST_MODULES, &dir.join("guest-modules"))?;
    let staging = dir.join("initramfs");
    if modules.stage(&ROOT_MODULES, &staging.join("modules"))? > 0 {
        build_initramfs(&staging, &dir.join("initramfs.cpio"))?;
    }
    fs::remove_dir_all(&staging)?;
    fs::remove_dir_all(&root)?;
    fs::write(dir.join("version"), version)?;
    Ok(())
}

/// An extracted kernel's module tree: what is built in, and each module's file and
/// dependencies (from `modules.builtin` and `modules.dep`).
struct Modules {
    dir: PathBuf,
    builtin: Vec<String>,
    /// Name -> (file relative to `dir`, files it depends on in `modules.dep` order).
    loadable: BTreeMap<String, (String, Vec<String>)>,
}

/// `kernel/net/ipv4/tcp_diag.ko.xz` -> `tcp_diag` (file names may use `-` for `_`).
fn module_name(file: &str) -> String {
    let base = file.rsplit('/').next().unwrap_or(file);
    base.split(".ko").next().unwrap_or(base).replace('-', "_")
}

impl Modules {
    fn read(dir: &Path) -> anyhow::Result<Modules> {
        let read = |name: &str| {
            fs::read_to_string(dir.join(name))
                .with_context(|| format!("cannot read {}", dir.join(name).display()))
        };
        let builtin = read("modules.builtin")?.lines().map(module_name).collect();
        let loadable = read("modules.dep")?
            .lines()
            .filter_map(|line| {
                let (file, deps) = line.split_once(':')?;
                let deps = deps.split_whitespace().map(str::to_string).collect();
                Some((module_name(file), (file.to_string(), deps)))
            })
            .collect();
        Ok(Modules {
            dir: dir.to_owned(),
            builtin,
            loadable,
        })
    }

    /// Copies the modules `names` and what they depend on into `dest`, uncompressed and
    /// named so that name order is load order; leaves out what is built in. Returns how
    /// many it copied.
    fn stage(&self, names: &[&str], dest: &Path) -> anyhow::Result<usize> {
        let mut files: Vec<&str> = Vec::new();
        for name in names {
            if self.builtin.iter().any(|b| b == name) {
                continue;
            }
            let (file, deps) = self.loadable.get(*name).with_context(|| {
                format!(
                    "module {name} is neither built into the kernel nor in {}",
                    self.dir.join("modules.dep").display()
                )
            })?;
            // modules.dep lists a module's dependencies so that the last needs none.
            for file in deps.iter().rev().chain([file]) {
                if !files.contains(&file.as_str()) {
                    files.push(file.as_str());
                }
            }
        }
        fs::create_dir_all(dest)?;
        for (i, file) in files.iter().enumerate() {
            let target = dest.join(format!("{i:02}-{}.ko", module_name(file)));
            let source = self.dir.join(file);
            if file.ends_with(".ko.xz") {
                let out = fs::File::create(&target)?;
                run_step(Command::new("xz").arg("-dc").arg(&source).stdout(out))?;
            } else {
                fs::copy(&source, &target)
                    .with_context(|| format!("cannot copy {}", source.display()))?;
            }
        }
        Ok(files.len())
    }
}

/// Packs `staging` (which holds `modules/`) with busybox and the initramfs init into an
/// uncompressed cpio archive at `archive`.
fn build_initramfs(staging: &Path, archive: &Path) -> anyhow::Result<()> {
    for dir in ["bin", "dev", "proc", "sys", "newroot"] {
        fs::create_dir_all(staging.join(dir))?;
    }
    fs::copy(BUSYBOX, staging.join("bin/busybox"))?;
    write_executable(&staging.join("init"), INITRAMFS_INIT)?;
    let mut entries = vec![".".to_string()];
    collect_entries(staging, Path::new("."), &mut entries)?;
    let mut cpio = Command::new("cpio");
    cpio.args(["-o", "-H", "newc", "--quiet"])
        .current_dir(staging)
        .stdin(Stdio::piped())
        .stdout(fs::File::create(archive)?);
    let mut child = cpio
        .spawn()
        .with_context(|| format!("cannot run {}", shown(&cpio)))?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(entries.join("\n").as_bytes())?;
    let status = child.wait()?;
    if !status.success() {
        bail!("`{}` failed ({status})", shown(&cpio));
    }
    Ok(())
}

/// Appends the paths under `dir` (as `relative/...`) to `entries`, parents first.
fn collect_entries(dir: &Path, relative: &Path, entries: &mut Vec<String>) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = relative.join(entry.file_name());
        entries.push(path.to_string_lossy().into_owned());
        if entry.file_type()?.is_dir() {
            collect_entries(&entry.path(), &path, entries)?;
        }
    }
    Ok(())
}

fn write_executable(path: &Path, text: &str) -> anyhow::Result<()> {
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// `'text'` for a shell, whatever `text` holds.
fn sh_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The shell script the guest runs: every test executable, one test at a time, with the
/// environment `cargo test` and xtask would give them on the host.
fn job_script(tests: &TestBinaries, tracer: &Path) -> String {
    let mut job = String::from(
        "# Written by `cargo xtask test --kernel ...`: the privileged suite in a guest.\n\
         export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n\
         export RUST_BACKTRACE=1 TMPDIR=/run/tmp\n\
         export TRACER_TEST_EMULATED_CPU=1\n\
         mkdir -p \"$TMPDIR\"\n",
    );
    job += &format!(
        "export TRACER_BIN={}\n",
        sh_quote(&tracer.to_string_lossy())
    );
    if let Some(ci) = std::env::var_os("CI") {
        job += &format!("export CI={}\n", sh_quote(&ci.to_string_lossy()));
    }
    job += &format!(
        "cd {} || exit 1\nstatus=0\n",
        sh_quote(&tests.dir.to_string_lossy())
    );
    for exe in &tests.paths {
        job += &format!(
            "{} {} || status=1\n",
            sh_quote(&exe.to_string_lossy()),
            LIBTEST_ARGS.join(" ")
        );
    }
    job += "exit $status\n";
    job
}

/// What a guest left behind.
struct Guest {
    /// Its serial console, `\r` removed.
    output: String,
    /// The job's exit status, if the guest got to print it.
    status: Option<i32>,
    timed_out: bool,
    wall: Duration,
    log: PathBuf,
    host_log: PathBuf,
}

/// A child process killed (if still running) when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Boots `kernel` with the job, echoing test progress, until it powers off or the
/// deadline passes.
fn boot(
    kernel: &Kernel,
    run_dir: &Path,
    tests: &TestBinaries,
    tracer: &Path,
) -> anyhow::Result<Guest> {
    if run_dir.exists() {
        fs::remove_dir_all(run_dir)?;
    }
    fs::create_dir_all(run_dir)?;
    let init = run_dir.join("init");
    let job = run_dir.join("job.sh");
    write_executable(&init, GUEST_INIT)?;
    fs::write(&job, job_script(tests, tracer))?;
    for path in [&init, &job, &kernel.guest_modules] {
        if path.to_string_lossy().contains(char::is_whitespace) {
            bail!(
                "{} has white space in its path: the kernel's command line cannot pass it",
                path.display()
            );
        }
    }
    let log = run_dir.join("console.log");
    let host_log = run_dir.join("qemu.log");
    let errors = fs::File::create(&host_log)?;

    // The socket's path must be short (sun_path), so not under the workspace.
    let socket = std::env::temp_dir().join(format!("xtask-virtiofs-{}.sock", std::process::id()));
    let _ = fs::remove_file(&socket);
    let mut virtiofsd = Command::new(VIRTIOFSD);
    virtiofsd
        .arg(format!("--socket-path={}", socket.display()))
        .args(["-o", "source=/", "-o", "cache=auto", "-o", "sandbox=chroot"])
        .stdin(Stdio::null())
        .stdout(errors.try_clone()?)
        .stderr(errors.try_clone()?);
    eprintln!("xtask: $ {}", shown(&virtiofsd));
    let mut virtiofsd = Killed(
        virtiofsd
            .spawn()
            .with_context(|| format!("cannot run {VIRTIOFSD}"))?,
    );
    let waited = Instant::now();
    while !socket.exists() {
        if let Some(status) = virtiofsd.0.try_wait()? {
            bail!("virtiofsd exited ({status}); see {}", host_log.display());
        }
        if waited.elapsed() > Duration::from_secs(10) {
            bail!(
                "virtiofsd made no socket in 10 s; see {}",
                host_log.display()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }

    let mut append = String::from("console=ttyS0 panic=-1 quiet ");
    if kernel.initramfs.is_some() {
        // The initramfs's /init mounts the root and hands over to the guest init.
        append += &format!("-- {} ", init.display());
    } else {
        append += &format!(
            "root=hostroot rootfstype=virtiofs ro init={} -- ",
            init.display()
        );
    }
    append += &format!("{} {}", kernel.guest_modules.display(), job.display());
    let mut qemu = Command::new(QEMU);
    qemu.args(["-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "1G"])
        // virtiofs needs the guest's memory shared with virtiofsd.
        .args(["-object", "memory-backend-memfd,id=mem,size=1G,share=on"])
        .args(["-numa", "node,memdev=mem"])
        .arg("-chardev")
        .arg(format!("socket,id=vfs,path={}", socket.display()))
        .args(["-device", "vhost-user-fs-pci,chardev=vfs,tag=hostroot"])
        .arg("-kernel")
        .arg(&kernel.vmlinuz);
    if let Some(initramfs) = &kernel.initramfs {
        qemu.arg("-initrd").arg(initramfs);
    }
    qemu.args(["-nic", "none", "-display", "none", "-serial", "stdio"])
        .args(["-monitor", "none", "-no-reboot"])
        .arg("-append")
        .arg(&append)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(errors);
    eprintln!(
        "xtask: booting {} under QEMU (TCG, about 12 minutes for 75 tests); console in {}",
        kernel.describe(),
        log.display()
    );
    eprintln!("xtask: $ {}", shown(&qemu));
    let started = Instant::now();
    let mut qemu = Killed(qemu.spawn().with_context(|| format!("cannot run {QEMU}"))?);
    let console = qemu.0.stdout.take().expect("stdout is piped");
    let mut log_file = fs::File::create(&log)?;
    let reader = thread::spawn(move || {
        let mut output = String::new();
        for line in BufReader::new(console).split(b'\n').map_while(Result::ok) {
            let line = String::from_utf8_lossy(&line).replace('\r', "");
            let _ = writeln!(log_file, "{line}");
            if line.starts_with("test ") || line.starts_with("running ") {
                eprintln!("xtask: guest: {line}");
            }
            output.push_str(&line);
            output.push('\n');
        }
        output
    });

    let mut timed_out = false;
    while qemu.0.try_wait()?.is_none() {
        if started.elapsed() > GUEST_DEADLINE {
            eprintln!(
                "xtask: the guest is still running after {} minutes: killing it",
                GUEST_DEADLINE.as_secs() / 60
            );
            timed_out = true;
            let _ = qemu.0.kill();
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    drop(qemu);
    let wall = started.elapsed();
    drop(virtiofsd);
    let _ = fs::remove_file(&socket);
    let output = reader.join().expect("console reader");
    let status = output
        .lines()
        .find_map(|l| l.split_once(EXIT_MARKER))
        .and_then(|(_, status)| status.trim().parse().ok());
    Ok(Guest {
        output,
        status,
        timed_out,
        wall,
        log,
        host_log,
    })
}

/// Prints why a guest run failed: the failing tests' reports, else the console's tail.
fn report_failure(guest: &Guest, why: &str, run_dir: &Path) {
    eprintln!("xtask: the suite failed in the guest: {why}");
    if guest.timed_out {
        eprintln!("xtask: the guest was killed at the deadline");
    } else if guest.status.is_none() {
        eprintln!("xtask: the guest stopped without printing its exit status (a panic, or its init failed)");
    }
    let reports = suite::failures(&guest.output);
    if reports.is_empty() {
        let lines: Vec<&str> = guest.output.lines().collect();
        eprintln!("xtask: the last lines of its console:");
        for line in &lines[lines.len().saturating_sub(40)..] {
            eprintln!("  {line}");
        }
        if let Ok(errors) = fs::read_to_string(&guest.host_log) {
            if !errors.trim().is_empty() {
                eprintln!("xtask: QEMU and virtiofsd said:\n{errors}");
            }
        }
    } else {
        for report in reports {
            eprint!("{report}");
        }
    }
    eprintln!(
        "xtask: the whole console is in {}; the guest's init and job in {}",
        guest.log.display(),
        run_dir.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_come_from_file_names() {
        assert_eq!(module_name("kernel/net/ipv4/tcp_diag.ko.xz"), "tcp_diag");
        assert_eq!(module_name("kernel/fs/fuse/virtiofs.ko"), "virtiofs");
        assert_eq!(
            module_name("kernel/drivers/virtio/virtio-pci.ko"),
            "virtio_pci"
        );
    }

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }
}
