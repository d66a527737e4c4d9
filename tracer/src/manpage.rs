//! tracer(1), the manual page: generated with clap_mangen from the command line itself, so
//! that it cannot drift from `--help`. One page holds every subcommand with its options
//! (what `man tracer` is opened for), then what `--help` does not say: exit statuses, the
//! environment, examples. `tracer man` prints it; the package installs it.

use std::time::{Duration, SystemTime};

use clap::CommandFactory;
use clap_mangen::{
    roff::{bold, italic, roman, Roff},
    Man,
};

use crate::cli::Cli;

/// The manual page, in roff.
pub fn render() -> Vec<u8> {
    let cli = Cli::command();
    let mut page = Page::default();
    let man = Man::new(cli.clone())
        .title("TRACER")
        .date(date())
        .manual("User Commands");
    page.add(|w| man.render_title(w));
    page.add(|w| man.render_name_section(w));

    let subcommands: Vec<_> = cli.get_subcommands().filter(|s| !s.is_hide_set()).collect();
    let mut roff = Roff::new();
    roff.control("SH", ["SYNOPSIS"]);
    for (i, sub) in subcommands.iter().enumerate() {
        if i > 0 {
            roff.control("br", []);
        }
        roff.text(synopsis(sub));
    }
    roff.control("SH", ["DESCRIPTION"]);
    paragraphs(&mut roff, DESCRIPTION);
    roff.control("SH", ["COMMANDS"]);
    page.add(|w| roff.to_writer(w));

    for sub in &subcommands {
        let mut roff = Roff::new();
        roff.control("SS", [format!("tracer {}", sub.get_name()).as_str()]);
        let about = sub
            .get_long_about()
            .or(sub.get_about())
            .map(|s| s.to_string());
        paragraphs(&mut roff, &about.unwrap_or_default());
        page.add(|w| roff.to_writer(w));
        // clap_mangen puts a command's options in a section of their own: here they go
        // in the command's subsection.
        let man = Man::new((*sub).clone());
        page.add_without(".SH OPTIONS\n", |w| man.render_options_section(w));
    }

    let mut roff = Roff::new();
    roff.control("SH", ["EXIT STATUS"]);
    for (status, meaning) in EXIT_STATUS {
        roff.control("TP", []);
        roff.text([bold(*status)]);
        roff.text([roman(*meaning)]);
    }
    roff.control("SH", ["ENVIRONMENT"]);
    for (name, meaning) in ENVIRONMENT {
        roff.control("TP", []);
        roff.text([bold(*name)]);
        roff.text([roman(*meaning)]);
    }
    roff.control("SH", ["EXAMPLES"]);
    for (what, command) in EXAMPLES {
        roff.control("PP", []);
        roff.text([roman(*what)]);
        roff.control("RS", []);
        roff.control("nf", []);
        roff.text([roman(*command)]);
        roff.control("fi", []);
        roff.control("RE", []);
    }
    roff.control("SH", ["SEE ALSO"]);
    roff.text([
        bold("ss"),
        roman("(8), "),
        bold("bpftool"),
        roman("(8), "),
        bold("systemctl"),
        roman("(1)."),
    ]);
    paragraphs(&mut roff, SEE_ALSO);
    page.add(|w| roff.to_writer(w));
    page.text.into_bytes()
}

/// A page put together from pieces that roff renders each with the same preamble (the
/// definition of a straight apostrophe), which the page needs once.
#[derive(Default)]
struct Page {
    text: String,
}

impl Page {
    /// Adds what `render` writes.
    fn add(&mut self, render: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>) {
        self.add_without("", render);
    }

    /// Adds what `render` writes, less its first line when that is `heading`.
    fn add_without(
        &mut self,
        heading: &str,
        render: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
    ) {
        let mut piece = Vec::new();
        render(&mut piece).expect("writes into memory cannot fail");
        let piece = String::from_utf8(piece).expect("roff of UTF-8 text is UTF-8");
        let preamble = Roff::new().render();
        let body = match piece.strip_prefix(&preamble) {
            Some(body) if !self.text.is_empty() => body,
            _ => &piece,
        };
        self.text
            .push_str(body.strip_prefix(heading).unwrap_or(body));
    }
}

/// The page's date, YYYY-MM-DD: `SOURCE_DATE_EPOCH` when set (reproducible builds; the
/// package build sets it to the last commit's time), else today.
fn date() -> String {
    let now = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .map_or_else(SystemTime::now, |secs| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
        });
    let mut day = humantime::format_rfc3339_seconds(now).to_string();
    day.truncate("YYYY-MM-DD".len());
    day
}

/// `tracer NAME [OPTIONS] ARGS...`, in the usual fonts.
fn synopsis(sub: &clap::Command) -> Vec<clap_mangen::roff::Inline> {
    let mut line = vec![bold(format!("tracer {}", sub.get_name()))];
    let options = sub
        .get_arguments()
        .any(|a| !a.is_positional() && !a.is_hide_set() && a.get_long() != Some("help"));
    if options {
        line.extend([roman(" ["), italic("OPTIONS"), roman("]")]);
    }
    for arg in sub.get_positionals() {
        let name = arg
            .get_value_names()
            .and_then(|v| v.first())
            .map_or_else(|| arg.get_id().to_string(), |v| v.to_string());
        line.extend([roman(" "), italic(name)]);
    }
    line
}

/// Text in paragraphs: blank lines separate them, other line breaks are spaces.
fn paragraphs(roff: &mut Roff, text: &str) {
    for (i, paragraph) in text.split("\n\n").enumerate() {
        if i > 0 {
            roff.control("PP", []);
        }
        let words: Vec<_> = paragraph.split_whitespace().collect();
        roff.text([roman(words.join(" "))]);
    }
}

const DESCRIPTION: &str = "\
tracer follows every TCP state transition on the machine with an eBPF probe on the kernel's \
sock:inet_sock_set_state tracepoint, to find the processes that leak sockets.

tracer watch keeps the life of every TCP socket (IPv4 and IPv6, including those open \
before it started), flags the ones that stay in CLOSE_WAIT (or another state chosen with \
--stuck) past a threshold, and names the process that holds them: pid, command, file \
descriptor, uid, cgroup or container, and how close it is to its descriptor limit. It \
prints a summary of the stuck sockets by process and port every --summary-interval. \
--events also streams every transition, as text or JSON Lines (--format json). --record \
FILE also writes everything it sees to disk, and tracer report FILE rebuilds the incident \
later, on any machine and without root, under thresholds chosen after the fact.

watch and doctor need root (or CAP_BPF and CAP_PERFMON) to load the probe; when tracefs is \
not mounted, they mount it at /sys/kernel/tracing. Durations are human (500ms, 30s, 5m, \
1h30m); sizes are binary (64KiB, 16MiB, 10GiB).";

const EXIT_STATUS: &[(&str, &str)] = &[
    (
        "0",
        "Success; watch also exits 0 when stopped by SIGINT, SIGTERM, SIGHUP, the end of \
         --duration, or the reader of its output going away. doctor: watch can run fully.",
    ),
    (
        "1",
        "A runtime failure (missing privileges, a probe the kernel refuses, a recording that \
         cannot be written or read), said on one line that starts with \"tracer: error:\". \
         doctor: watch runs degraded.",
    ),
    (
        "2",
        "Bad arguments, said on one line that starts with \"error:\". doctor: watch cannot \
         run here.",
    ),
];

const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "TRACER_DEBUG=1",
        "The kernel programs log what should not happen (an unreadable record, a transition \
         lost to a full ring buffer) to stderr as tracer: probe: lines.",
    ),
    (
        "TRACER_RECORD_ACCESS=copy",
        "Read transition records by copy rather than in place (diagnostics).",
    ),
];

const EXAMPLES: &[(&str, &str)] = &[
    (
        "Flag sockets stuck in CLOSE_WAIT for 30 s and name their owners:",
        "sudo tracer watch",
    ),
    (
        "Watch one port with a shorter threshold, and also FIN_WAIT2:",
        "sudo tracer watch --port 61616 --close-wait 5s --stuck FIN_WAIT2=60s",
    ),
    (
        "Stream every transition as JSON Lines:",
        "sudo tracer watch --events --format json",
    ),
    (
        "Record for a postmortem, then report a window of it as any user:",
        "sudo tracer watch --record /var/tmp/incident.rec\n\
         tracer report /var/tmp/incident.rec --from 12:50 --to 13:10",
    ),
    ("Check what this kernel offers:", "sudo tracer doctor"),
    (
        "Run as a service (installed by the package, not enabled):",
        "sudo systemctl enable --now tracer\njournalctl -u tracer -f",
    ),
];

const SEE_ALSO: &str = "\
/usr/share/doc/tracer/README.md.gz has everything in detail: the text and JSON Lines \
output, the recording format, which kernels offer what.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_covers_every_subcommand_and_option() {
        let page = String::from_utf8(render()).unwrap();
        assert!(page.contains("\n.TH TRACER 1 "), "{page}");
        for section in [
            "NAME",
            "SYNOPSIS",
            "DESCRIPTION",
            "COMMANDS",
            "\"EXIT STATUS\"",
        ] {
            assert!(page.contains(&format!("\n.SH {section}\n")), "{section}");
        }
        assert!(
            !page.contains(".SH OPTIONS"),
            "options belong to their command"
        );
        let cli = Cli::command();
        for sub in cli.get_subcommands().filter(|s| !s.is_hide_set()) {
            assert!(
                page.contains(&format!(".SS \"tracer {}\"", sub.get_name())),
                "{}",
                sub.get_name()
            );
            for long in sub.get_arguments().filter_map(|a| a.get_long()) {
                // roff writes a hyphen as `\-`.
                let option = format!("\\-\\-{}", long.replace('-', "\\-"));
                assert!(page.contains(&option), "{option}");
            }
        }
        assert!(
            !page.contains("tracer man"),
            "the hidden command is not documented"
        );
    }
}
