//! Opens a recording's files for one tracer: regular files only, opened without blocking
//! (a FIFO nobody reads would hang the start, deaf to signals), and locked, so that a
//! second tracer given the same file is refused instead of mixing its entries in.
//!
//! The lock is an `flock` on each file of the recording this tracer has open: `FILE`, and
//! the rotated `FILE.1` to `FILE.3`, whose files the writer keeps open for that. A tracer
//! that starts takes `FILE`'s lock and then checks the rotated names, so it is refused
//! even in the instant a rotation has renamed `FILE` and not yet locked the new one.

use std::{
    fs::{self, File, OpenOptions},
    io,
    os::{
        fd::AsRawFd,
        unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt},
    },
    path::Path,
};

use super::{
    writer::{segment_path, RecordError, SEGMENTS},
    MAGIC,
};

/// Creates the recording's file at `path`, locked for this tracer, before anything else is
/// set up, so that a bad path fails at once. An earlier recording there (and its rotated
/// files) is replaced; any other file is refused, as are rotated names that hold something
/// else, files that are not regular files, and a recording another tracer is writing.
pub fn prepare(path: &Path) -> Result<File, RecordError> {
    let create_error = |error| RecordError::Create {
        path: path.to_owned(),
        error,
    };
    let file = open(path, OpenOptions::new().read(true).write(true).create(true))?
        .ok_or_else(|| create_error(io::ErrorKind::NotFound.into()))?;
    lock(path, path, &file)?;
    refuse_foreign(path, &file)?;
    let mut older = Vec::new();
    for n in 1..SEGMENTS {
        let old = segment_path(path, n);
        if let Some(f) = open(&old, OpenOptions::new().read(true))? {
            lock(&old, path, &f)?;
            refuse_foreign(&old, &f)?;
            older.push((old, f));
        }
    }
    // Only once none of them is foreign or in use: then nothing is removed in vain.
    for (old, _locked) in &older {
        let _ = fs::remove_file(old);
    }
    file.set_len(0).map_err(create_error)?;
    Ok(file)
}

/// Creates the next segment's file at `path` (the current one has been renamed away) and
/// locks it. A tracer that is starting may hold the new file's lock for a moment, until it
/// finds `FILE.1` locked by us and gives up: the wait is that long.
pub(super) fn create_segment(path: &Path) -> io::Result<File> {
    let file = File::create(path)?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// Opens `path` with `options`, refusing what is not a regular file; `None` when it does
/// not exist and `options` do not create it.
fn open(path: &Path, options: &mut OpenOptions) -> Result<Option<File>, RecordError> {
    let create_error = |error| RecordError::Create {
        path: path.to_owned(),
        error,
    };
    // Looked at before opening: opening a device can have effects of its own.
    match fs::metadata(path) {
        Ok(m) => regular(path, &m)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(create_error(error)),
    }
    // O_NONBLOCK: a FIFO swapped in since must not block the open (no effect on files).
    let file = match options
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(create_error(error)),
    };
    regular(path, &file.metadata().map_err(create_error)?)?;
    Ok(Some(file))
}

/// Refuses what is not a regular file: a recording is rotated by renaming and read back.
fn regular(path: &Path, m: &fs::Metadata) -> Result<(), RecordError> {
    let t = m.file_type();
    let what = if t.is_file() {
        return Ok(());
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    };
    Err(RecordError::NotAFile {
        path: path.to_owned(),
        what,
    })
}

/// Takes the lock on `file` (at `path`, a file of the recording at `recording`) without
/// waiting.
fn lock(path: &Path, recording: &Path, file: &File) -> Result<(), RecordError> {
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    if error.kind() == io::ErrorKind::WouldBlock {
        return Err(RecordError::Busy {
            path: recording.to_owned(),
            pid: holder(file),
        });
    }
    Err(RecordError::Lock {
        path: path.to_owned(),
        error,
    })
}

/// The process holding the lock on `file`, from `/proc/locks`.
fn holder(file: &File) -> Option<u32> {
    let m = file.metadata().ok()?;
    let locks = fs::read_to_string("/proc/locks").ok()?;
    let dev = (libc::major(m.dev()), libc::minor(m.dev()));
    lock_holder(&locks, dev, m.ino())
}

/// The pid holding an `flock` on the file of device `(major, minor)` and inode `ino`, in
/// the text of `/proc/locks`:
/// `1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234 0 EOF` (the device in hex). Lines of
/// processes waiting for a lock (`1: -> FLOCK ...`) hold nothing.
pub(super) fn lock_holder(locks: &str, dev: (u32, u32), ino: u64) -> Option<u32> {
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, "FLOCK", _, _, pid, file, ..] = fields[..] else {
            return None;
        };
        let mut parts = file.split(':');
        let major = u32::from_str_radix(parts.next()?, 16).ok()?;
        let minor = u32::from_str_radix(parts.next()?, 16).ok()?;
        let inode: u64 = parts.next()?.parse().ok()?;
        if (major, minor, inode) != (dev.0, dev.1, ino) {
            return None;
        }
        pid.parse().ok()
    })
}

/// Refuses to overwrite `file` (at `path`) when it is not empty and not a recording.
fn refuse_foreign(path: &Path, file: &File) -> Result<(), RecordError> {
    let mut magic = [0u8; MAGIC.len()];
    let n = file.read_at(&mut magic, 0).unwrap_or(0);
    if n == 0 || magic[..n] == MAGIC[..n] {
        Ok(())
    } else {
        Err(RecordError::NotARecording {
            path: path.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::{ffi::CString, os::unix::ffi::OsStrExt, sync::mpsc, thread, time::Duration};

    use super::*;

    fn scratch() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rec");
        (dir, path)
    }

    fn mkfifo(path: &Path) {
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    /// `prepare(path)`, failing the test if it blocks.
    fn prepare_in_time(path: &Path) -> Result<File, RecordError> {
        let (tx, rx) = mpsc::channel();
        let path = path.to_owned();
        thread::spawn(move || tx.send(prepare(&path)));
        rx.recv_timeout(Duration::from_secs(5))
            .expect("prepare blocked on a file nobody reads")
    }

    #[test]
    fn fifos_and_other_files_that_are_not_regular_are_refused_without_blocking() {
        let (_dir, path) = scratch();
        mkfifo(&path);
        let err = prepare_in_time(&path).unwrap_err();
        assert!(
            matches!(err, RecordError::NotAFile { what: "a FIFO", .. }),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "{} is a FIFO; a recording must be a regular file (choose another path)",
                path.display()
            )
        );
        // Where rotation would put a segment, too.
        let (_dir, path) = scratch();
        mkfifo(&segment_path(&path, 2));
        let err = prepare_in_time(&path).unwrap_err();
        assert!(matches!(err, RecordError::NotAFile { .. }), "{err}");
        let (dir, _) = scratch();
        let err = prepare_in_time(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                RecordError::NotAFile {
                    what: "a directory",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_recording_in_use_is_refused_and_left_alone() {
        let (_dir, path) = scratch();
        let mut first = prepare(&path).unwrap();
        std::io::Write::write_all(&mut first, &MAGIC).unwrap();
        let err = prepare(&path).unwrap_err();
        // flock holders are open files: this process holds it.
        assert!(
            matches!(err, RecordError::Busy { pid: Some(p), .. } if p == std::process::id()),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "{} is being recorded by another tracer (pid {}); choose another file",
                path.display(),
                std::process::id()
            )
        );
        assert_eq!(fs::read(&path).unwrap(), MAGIC, "not truncated");
        drop(first);
        prepare(&path).expect("free once the first has closed it");
    }

    #[test]
    fn a_locked_rotated_segment_makes_the_recording_busy() {
        // As in a rotation: FILE renamed to FILE.1 (still locked), the new FILE not yet.
        let (_dir, path) = scratch();
        let rotated = prepare(&path).unwrap();
        fs::rename(&path, segment_path(&path, 1)).unwrap();
        let err = prepare(&path).unwrap_err();
        assert!(matches!(err, RecordError::Busy { .. }), "{err}");
        assert!(segment_path(&path, 1).exists(), "not removed");
        drop(rotated);
        prepare(&path).unwrap();
        assert!(
            !segment_path(&path, 1).exists(),
            "an old segment is removed"
        );
    }

    #[test]
    fn lock_holders_are_read_from_proc_locks() {
        let locks = "\
1: POSIX  ADVISORY  WRITE 111 fd:01:1234 0 EOF
2: FLOCK  ADVISORY  WRITE 4242 fd:01:1234 0 EOF
2: -> FLOCK  ADVISORY  WRITE 999 fd:01:1234 0 EOF
3: FLOCK  ADVISORY  WRITE 77 00:2f:1234 0 EOF
4: OFDLCK ADVISORY  READ  -1 00:2f:99 0 EOF
";
        assert_eq!(lock_holder(locks, (0xfd, 1), 1234), Some(4242));
        assert_eq!(lock_holder(locks, (0, 0x2f), 1234), Some(77));
        assert_eq!(lock_holder(locks, (0, 0x2f), 99), None, "not an flock");
        assert_eq!(lock_holder(locks, (0xfd, 1), 5), None);
        assert_eq!(lock_holder("", (0xfd, 1), 1234), None);
    }
}
