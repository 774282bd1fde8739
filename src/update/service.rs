//! The privileged install service, and its clients.
//!
//! The account provbox drops to may neither write a root slot nor the A/B state, so that
//! code that takes over the server cannot make itself permanent. Bundles therefore reach
//! the slots only through this service: `provbox update installer`, run as root by the
//! image's init, listening on a Unix socket that only root and provbox's account may open
//! (file mode, and each peer's credentials checked again on accept). It verifies each
//! bundle as [`Installer`] does (signature before the first byte is written, then the
//! hash, the read-back), and it commits a slot on trial when provbox reports it healthy.
//!
//! The protocol is one request per connection: a line `install` followed by the bundle up
//! to the end of the stream, or a line `commit`; the answer is one JSON line ([`Reply`]).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::unistd::{Gid, Uid};

use super::{BootInfo, Installed, Installer, PublicKey, UpdateError};

/// Where the image's init starts the service.
pub const DEFAULT_SOCKET: &str = "/run/provbox/installer.sock";
/// Longest wait for the next bytes of a request (longer than the web upload's own 60 s, so
/// that a stalled upload is reported by the server, which can tell the browser).
const IDLE_LIMIT: Duration = Duration::from_secs(90);
/// Longest a request may take: it holds the install lock meanwhile.
const REQUEST_LIMIT: Duration = Duration::from_secs(20 * 60);
/// Longest request line.
const MAX_REQUEST_LINE: u64 = 32;
/// Longest answer line.
const MAX_REPLY_LINE: u64 = 64 * 1024;

/// The service's answer to one request.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// The bundle was verified and written; its slot boots next.
    Installed(Installed),
    /// Whether the running slot was on trial and is now the active one.
    Committed(bool),
    /// The request was refused, and why. Nothing is staged.
    Refused(String),
}

/// Who may use the service besides root (and the service's own account).
#[derive(Debug, Clone, Copy)]
pub struct Client {
    /// The account's uid.
    pub uid: Uid,
    /// Its group, which the socket is given to.
    pub gid: Gid,
}

/// The service's settings.
#[derive(Debug)]
pub struct Service {
    /// The socket to listen on.
    pub socket: PathBuf,
    /// The initramfs's description of the slots, read again for every request.
    pub boot_info: PathBuf,
    /// The key bundles must be signed with.
    pub key: PublicKey,
    /// The unprivileged account that may send requests.
    pub client: Option<Client>,
}

impl Service {
    /// Binds the socket and answers requests one at a time, for ever.
    pub fn run(&self) -> Result<(), UpdateError> {
        let listener = self.bind()?;
        tracing::info!(socket = %self.socket.display(), "update installer listening");
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let reply = match self.peer_allowed(&stream) {
                Ok(()) => self.handle(&stream),
                Err(reason) => Reply::Refused(reason),
            };
            if let Reply::Refused(reason) = &reply {
                tracing::warn!("update installer refused a request: {reason}");
            }
            send(&stream, &reply);
        }
        Ok(())
    }

    /// Binds the socket with mode 0660, group of the client: nobody else can connect.
    fn bind(&self) -> Result<UnixListener, UpdateError> {
        let io = |what: &str| super::io(format!("{what} {}", self.socket.display()));
        // A socket left by an earlier run: this service is init's only instance.
        if let Err(error) = std::fs::remove_file(&self.socket)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            return Err(io("remove")(error));
        }
        // Owner-only from the start; widened to the group once it is the client's.
        let previous = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(&self.socket);
        nix::sys::stat::umask(previous);
        let listener = bound.map_err(io("bind"))?;
        if let Some(client) = self.client {
            nix::unistd::chown(&self.socket, None, Some(client.gid))
                .map_err(|errno| io("chown")(std::io::Error::from(errno)))?;
            std::fs::set_permissions(&self.socket, std::fs::Permissions::from_mode(0o660)).map_err(io("chmod"))?;
        }
        Ok(listener)
    }

    /// Root, the service's own account and the client account may send requests.
    fn peer_allowed(&self, stream: &UnixStream) -> Result<(), String> {
        let credentials = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
            .map_err(|errno| format!("cannot read the peer's credentials: {errno}"))?;
        let uid = Uid::from_raw(credentials.uid());
        if uid.is_root() || uid == Uid::effective() || self.client.is_some_and(|client| client.uid == uid) {
            Ok(())
        } else {
            Err(format!("uid {uid} may not install updates"))
        }
    }

    /// Reads and carries out one request.
    fn handle(&self, stream: &UnixStream) -> Reply {
        let outcome = (|| -> Result<Reply, UpdateError> {
            stream.set_read_timeout(Some(IDLE_LIMIT)).map_err(super::io("set the request timeout"))?;
            let mut source = BufReader::new(Deadline { inner: stream, until: Instant::now() + REQUEST_LIMIT });
            let mut line = String::new();
            (&mut source).take(MAX_REQUEST_LINE).read_line(&mut line).map_err(super::io("read the request"))?;
            let boot = BootInfo::load(&self.boot_info)?;
            match line.trim_end() {
                "install" => {
                    let mut installer = Installer::new(self.key.clone(), boot)?;
                    let mut buffer = vec![0u8; 64 * 1024];
                    loop {
                        let n = source.read(&mut buffer).map_err(super::io("read the bundle"))?;
                        if n == 0 {
                            return Ok(Reply::Installed(installer.finish()?));
                        }
                        installer.feed(&buffer[..n])?;
                    }
                }
                "commit" => Ok(Reply::Committed(boot.commit()?)),
                other => Err(UpdateError::Service(format!("unknown request {other:?}"))),
            }
        })();
        outcome.unwrap_or_else(|error| Reply::Refused(error.to_string()))
    }
}

/// A reader that fails once `until` has passed.
struct Deadline<R> {
    inner: R,
    until: Instant,
}

impl<R: Read> Read for Deadline<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        if Instant::now() > self.until {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the request took too long"));
        }
        self.inner.read(buffer)
    }
}

/// Writes `reply` as one line; a client that went away misses it.
fn send(mut stream: &UnixStream, reply: &Reply) {
    // Replies are plain data; serialising cannot fail.
    let mut line = serde_json::to_vec(reply).expect("replies serialise");
    line.push(b'\n');
    if let Err(error) = stream.write_all(&line) {
        tracing::warn!("update installer: the client left before the answer: {error}");
    }
}

/// A connection to the service.
fn connect(socket: &Path, request: &str) -> Result<UnixStream, UpdateError> {
    let what = || format!("the update installer at {}", socket.display());
    let mut stream = UnixStream::connect(socket).map_err(|source| UpdateError::Io { what: what(), source })?;
    send_to(&mut stream, format!("{request}\n").as_bytes())?;
    Ok(stream)
}

/// Writes request bytes. The service hangs up on a request it refuses (a peer it does not
/// serve, a bundle that does not verify): then its answer says why.
fn send_to(stream: &mut UnixStream, bytes: &[u8]) -> Result<(), UpdateError> {
    match stream.write_all(bytes) {
        Ok(()) => Ok(()),
        Err(error) if matches!(error.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset) => {
            Err(match stream.try_clone().map_err(super::io("the update installer")).and_then(answer) {
                Ok(Reply::Refused(reason)) => UpdateError::Service(reason),
                Ok(_) => UpdateError::Service("the installer stopped reading the request".into()),
                Err(error) => error,
            })
        }
        Err(source) => Err(UpdateError::Io { what: "send the request to the update installer".into(), source }),
    }
}

/// Ends the request and reads the answer.
fn answer(stream: UnixStream) -> Result<Reply, UpdateError> {
    let io = super::io("the update installer's answer");
    match stream.shutdown(std::net::Shutdown::Write) {
        // The service hung up first (a refusal): its answer is still there to read.
        Err(error) if error.kind() != std::io::ErrorKind::NotConnected => {
            return Err(super::io("end the request")(error));
        }
        _ => {}
    }
    stream.set_read_timeout(Some(IDLE_LIMIT + Duration::from_secs(30))).map_err(super::io("set a timeout"))?;
    let mut line = String::new();
    BufReader::new(stream.take(MAX_REPLY_LINE)).read_line(&mut line).map_err(io)?;
    serde_json::from_str(&line).map_err(|error| UpdateError::Service(format!("unreadable answer: {error}")))
}

/// An install sent to the service: bytes of a bundle go in with [`RemoteInstall::feed`],
/// and [`RemoteInstall::finish`] waits for the service's verdict.
pub struct RemoteInstall {
    stream: UnixStream,
}

impl RemoteInstall {
    /// Opens an install request.
    pub fn start(socket: &Path) -> Result<RemoteInstall, UpdateError> {
        Ok(RemoteInstall { stream: connect(socket, "install")? })
    }

    /// Sends the next bytes of the bundle. A refusal cuts the upload short, with the
    /// service's reason.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), UpdateError> {
        send_to(&mut self.stream, bytes)
    }

    /// Ends the bundle and returns what the service installed.
    pub fn finish(self) -> Result<Installed, UpdateError> {
        match answer(self.stream)? {
            Reply::Installed(installed) => Ok(installed),
            Reply::Refused(reason) => Err(UpdateError::Service(reason)),
            Reply::Committed(_) => Err(UpdateError::Service("unexpected answer to an install".into())),
        }
    }
}

/// Installs the bundle that `source` yields through the service at `socket`.
pub fn install(socket: &Path, source: &mut impl Read) -> Result<Installed, UpdateError> {
    let mut remote = RemoteInstall::start(socket)?;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = source.read(&mut buffer).map_err(super::io("read the bundle"))?;
        if n == 0 {
            return remote.finish();
        }
        remote.feed(&buffer[..n])?;
    }
}

/// Asks the service to make the running slot permanent if it is on trial; true if it was.
pub fn commit(socket: &Path) -> Result<bool, UpdateError> {
    match answer(connect(socket, "commit")?)? {
        Reply::Committed(committed) => Ok(committed),
        Reply::Refused(reason) => Err(UpdateError::Service(reason)),
        Reply::Installed(_) => Err(UpdateError::Service("unexpected answer to a commit".into())),
    }
}
