//! Witnesses: where every checkpoint (`super::checkpoint`) is sent besides the chain, so that
//! whoever can rewrite the store cannot rewrite its evidence too. Two kinds, both write-only
//! from hsmca's side:
//!
//! * a file on another path (another disk, a mount another host backs up or ships), opened
//!   for appending only, one checkpoint per line, each line synced before the next;
//! * syslog, through its local datagram socket (`/dev/log`, which journald also serves), as
//!   one `auth.notice` message per checkpoint, for the log shipping most sites have.
//!
//! Each line (and each message, after its syslog prefix) is the checkpoint's JSON, starting
//! with `{"seq":`, which `hsmca audit verify --witness` reads back.

use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::checkpoint::{CHECKPOINT_EVENT, Checkpoint};

/// Why a witness could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    /// The witness file could not be opened, written or synced.
    #[error("witness file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The syslog socket could not be reached.
    #[error("syslog socket {path}: {source}")]
    Syslog {
        /// The socket.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
}

/// The witnesses a service sends its checkpoints to.
#[derive(Debug)]
pub struct Witnesses {
    file: Option<(PathBuf, Mutex<File>)>,
    syslog: Option<Syslog>,
}

/// Syslog's local socket, reconnected when the daemon behind it restarts.
#[derive(Debug)]
struct Syslog {
    path: PathBuf,
    socket: Mutex<Option<UnixDatagram>>,
}

/// `auth.notice`: facility 4 (security/authorisation), severity 5.
const SYSLOG_PRIORITY: u8 = 4 * 8 + 5;

impl Witnesses {
    /// Opens the witness file (created with mode 0644 if absent: checkpoints are public) and
    /// connects to the syslog socket, each if given; a witness that cannot be reached fails
    /// start-up rather than the first checkpoint.
    pub fn open(file: Option<&Path>, syslog: Option<&Path>) -> Result<Self, WitnessError> {
        let file = file
            .map(|path| {
                std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o644)
                    .open(path)
                    .map(|file| (path.to_owned(), Mutex::new(file)))
                    .map_err(|source| WitnessError::File {
                        path: path.to_owned(),
                        source,
                    })
            })
            .transpose()?;
        let syslog = syslog
            .map(|path| {
                let socket = connect(path)?;
                Ok::<_, WitnessError>(Syslog {
                    path: path.to_owned(),
                    socket: Mutex::new(Some(socket)),
                })
            })
            .transpose()?;
        Ok(Witnesses { file, syslog })
    }

    /// Where checkpoints go, for the log line at start.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some((path, _)) = &self.file {
            parts.push(format!("file {}", path.display()));
        }
        if let Some(syslog) = &self.syslog {
            parts.push(format!("syslog {}", syslog.path.display()));
        }
        parts.join(", ")
    }

    /// Sends `checkpoint` to every witness, blocking until the file's line is synced;
    /// returns what failed (the others were still written).
    pub fn send(&self, checkpoint: &Checkpoint) -> Vec<WitnessError> {
        let json = serde_json::to_string(checkpoint).expect("a checkpoint always serialises");
        let mut failed = Vec::new();
        if let Some((path, file)) = &self.file {
            let mut file = file.lock().unwrap_or_else(|e| e.into_inner());
            // One write per line: appends of a line from several replicas do not interleave.
            if let Err(source) = file
                .write_all(format!("{json}\n").as_bytes())
                .and_then(|()| file.sync_data())
            {
                failed.push(WitnessError::File {
                    path: path.clone(),
                    source,
                });
            }
        }
        if let Some(syslog) = &self.syslog {
            let message = format!(
                "<{SYSLOG_PRIORITY}>hsmca[{}]: {CHECKPOINT_EVENT} {json}",
                std::process::id()
            );
            if let Err(error) = syslog.send(message.as_bytes()) {
                failed.push(error);
            }
        }
        failed
    }
}

impl Syslog {
    /// Sends one datagram, reconnecting once if the socket went away (syslog restarted).
    fn send(&self, message: &[u8]) -> Result<(), WitnessError> {
        let mut socket = self.socket.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(connected) = socket.as_ref()
            && connected.send(message).is_ok()
        {
            return Ok(());
        }
        *socket = None;
        let reconnected = connect(&self.path)?;
        reconnected
            .send(message)
            .map_err(|source| WitnessError::Syslog {
                path: self.path.clone(),
                source,
            })?;
        *socket = Some(reconnected);
        Ok(())
    }
}

fn connect(path: &Path) -> Result<UnixDatagram, WitnessError> {
    let socket = UnixDatagram::unbound().and_then(|socket| {
        socket.connect(path)?;
        Ok(socket)
    });
    socket.map_err(|source| WitnessError::Syslog {
        path: path.to_owned(),
        source,
    })
}
