//! est-client's own files. Keys and manifests are private to this user whatever the umask;
//! output directories are created 0700; a key file est-client did not create (another owner,
//! or group/other permissions) is refused, never reused; a client key (`--key`) that group or
//! others may read is refused, as the server refuses one (`src/signer/file.rs`).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::{Error, Result};

/// Mode of keys and manifests: the owner alone reads and writes them.
pub const PRIVATE: u32 = 0o600;
/// Mode of certificates: public.
pub const PUBLIC: u32 = 0o644;
/// Mode of the directories est-client creates.
pub const PRIVATE_DIR: u32 = 0o700;

/// Reads a secret file given on the command line (the TLS client key): refused when group or
/// others may read or write it. Symbolic links are followed, as the server does.
pub fn read_private(path: &Path) -> Result<Vec<u8>> {
    let file = OpenOptions::new()
        .read(true)
        .open(path)
        .map_err(|e| io_err(path, e))?;
    read_checked(path, file, false)
}

/// Reads a key est-client wrote on an earlier run (`None` when there is none): it must be a
/// regular file, not a symbolic link, owned by this user, that group and others cannot reach.
/// Anything else was not made by us and is refused rather than used to enroll a device.
pub fn read_own_key(path: &Path) -> Result<Option<Vec<u8>>> {
    let open = OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path);
    match open {
        Ok(file) => read_checked(path, file, true).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            Err(refused(path, "a symbolic link".into()))
        }
        Err(e) => Err(io_err(path, e)),
    }
}

/// Creates `dir` (and its missing parents) with mode 0700; an existing one is left as it is.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR)
        .create(dir)
        .map_err(|e| io_err(dir, e))
}

/// Opens `path` for appending (a manifest), creating it; mode 0600 whatever the umask or the
/// mode an older file had.
pub fn open_private_append(path: &Path) -> Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(PRIVATE)
        .open(path)
        .map_err(|e| io_err(path, e))?;
    file.set_permissions(std::fs::Permissions::from_mode(PRIVATE))
        .map_err(|e| io_err(path, e))?;
    Ok(file)
}

/// Writes a file with `mode` set at creation, replacing an existing one atomically: a temporary
/// file, fsync, rename, then fsync of the directory so the rename itself is durable. A reader
/// (or a crash) sees the old file or the new one, never a part of either.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = create(&tmp, mode).map_err(|e| io_err(&tmp, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| io_err(path, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}

/// Writes a new file with `mode` set at creation, without fsync (the caller syncs a group of
/// files at once).
pub fn write_new_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    // A leftover of an interrupted run is replaced, never reused with its old mode.
    let file = match create(path, mode) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(path).and_then(|_| create(path, mode))
        }
        other => other,
    };
    file.and_then(|mut f| f.write_all(bytes))
        .map_err(|e| io_err(path, e))
}

/// Removes a file if it is there.
pub fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(path, e)),
        _ => Ok(()),
    }
}

/// A new file (never an existing one or a link's target) with `mode` exactly: the umask can
/// only take bits away, and `mode` never asks for more than 0644.
fn create(path: &Path, mode: u32) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
}

fn read_checked(path: &Path, mut file: File, own: bool) -> Result<Vec<u8>> {
    let meta = file.metadata().map_err(|e| io_err(path, e))?;
    if own && !meta.is_file() {
        return Err(refused(path, "not a regular file".into()));
    }
    let me = rustix::process::geteuid().as_raw();
    if own && meta.uid() != me {
        return Err(refused(
            path,
            format!("owned by uid {}, not by this user (uid {me})", meta.uid()),
        ));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        let problem = format!("mode {mode:04o} lets group or others read it");
        // A key of ours that others could read may have leaked: not fixed by a chmod.
        return Err(if own {
            refused(path, problem)
        } else {
            Error::File {
                path: path.display().to_string(),
                problem: format!("{problem}; run `chmod 600 {}`", path.display()),
            }
        });
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(|e| io_err(path, e))?;
    Ok(bytes)
}

/// A key that est-client did not make.
fn refused(path: &Path, why: String) -> Error {
    Error::File {
        path: path.display().to_string(),
        problem: format!("{why}: a key est-client did not create is refused, never reused"),
    }
}

/// An I/O error on `path`.
pub fn io_err(path: &Path, e: std::io::Error) -> Error {
    Error::File {
        path: path.display().to_string(),
        problem: e.to_string(),
    }
}
