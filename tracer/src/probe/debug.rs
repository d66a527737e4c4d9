//! `TRACER_DEBUG=1`: the probe logs the cases that should not happen (an unreadable record,
//! a full ring buffer, a failed map update) through aya-log, and this forwards them to
//! stderr, one `tracer: probe: LEVEL: message` line each.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use aya::Ebpf;
use aya_log::EbpfLogger;
use log::{Log, Metadata, Record};

use super::ProbeError;

/// How often the probe's log is read: it is for diagnostics, not for speed.
const PERIOD: Duration = Duration::from_millis(100);

/// Writes the probe's log records to stderr.
struct Stderr;

impl Log for Stderr {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &Record<'_>) {
        eprintln!(
            "tracer: probe: {}: {}",
            record.level().as_str().to_ascii_lowercase(),
            record.args()
        );
    }

    fn flush(&self) {}
}

/// Forwards the probe's log to stderr while it lives; [`Logs::flush`] reads what is left.
pub struct Logs {
    logger: Arc<Mutex<EbpfLogger<Stderr>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Logs {
    /// Takes the probe's log map from `ebpf` and reads it on a task of the running tokio
    /// runtime. Must run before the programs are loaded: they refer to the map's fd.
    pub fn forward(ebpf: &mut Ebpf) -> Result<Logs, ProbeError> {
        let logger = EbpfLogger::init_with_logger(ebpf, Stderr)
            .map_err(|e| ProbeError::Diagnostics(format!("TRACER_DEBUG=1: {e}")))?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            ProbeError::Diagnostics(
                "TRACER_DEBUG=1: the probe's log needs a tokio runtime to be read on".to_owned(),
            )
        })?;
        let logger = Arc::new(Mutex::new(logger));
        let reader = Arc::clone(&logger);
        let task = runtime.spawn(async move {
            let mut every = tokio::time::interval(PERIOD);
            loop {
                every.tick().await;
                reader
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .flush();
            }
        });
        Ok(Logs { logger, task })
    }

    /// Writes out what the probe logged and is not written yet.
    pub fn flush(&self) {
        self.logger
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .flush();
    }
}

impl Drop for Logs {
    fn drop(&mut self) {
        self.task.abort();
    }
}
