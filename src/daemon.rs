//! `provbox serve`: wires the store, the TLS identity, the listeners, the control socket and
//! the background flusher together, and runs them until SIGTERM.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::app::{App, AppError};
use crate::clock;
use crate::control::{self, ControlError};
use crate::metrics::Activity;
use crate::pki::{KeyType, Pki, PkiError};
use crate::server::{self, Limits, Listener, routes};
use crate::store::backend::AnyFlash;
use crate::store::records::Db;
use crate::update::Updates;
use crate::{lan, mdns, sip};

/// How often buffered last-contact records are written to flash.
const FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// What `serve` needs.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The data directory.
    pub data_dir: PathBuf,
    /// HTTPS listen address.
    pub https: SocketAddr,
    /// HTTP listen address.
    pub http: SocketAddr,
    /// Key type of generated certificates.
    pub key_type: KeyType,
    /// Connection limits.
    pub limits: Limits,
    /// SIP PnP responder address, or None for off.
    pub sip: Option<SocketAddr>,
    /// mDNS responder address, or None for off.
    pub mdns: Option<SocketAddr>,
    /// The user to run as once the listeners are bound (the image binds 443 and 80 as root).
    pub user: Option<String>,
    /// Root-image updates, when running from the firmware image's A/B slots.
    pub updates: Option<Arc<Updates>>,
    /// A file holding the setup code to use (the image's start script makes it and writes it
    /// to the boot partition too); read before privileges are dropped.
    pub setup_code_file: Option<PathBuf>,
}

/// How the server ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// On SIGTERM or Ctrl-C.
    Terminated,
    /// An update was installed and wants the reboot into its slot.
    RebootRequested,
}

/// Why the appliance could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The state could not be loaded.
    #[error(transparent)]
    App(#[from] AppError),
    /// The TLS identity could not be set up.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The control socket could not be bound.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// A listener could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The store lost a secret provbox generated once; it is never made again by itself.
    #[error(
        "the store has lost {0}, which provbox generated at first start and the phones use (a damaged \
         store: `provbox store check` says where). Set it again with `provbox settings set {0} VALUE` \
         (the value your phones have), or restore a backup; provbox does not make a new one by itself"
    )]
    LostSecret(&'static str),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// Privileges could not be dropped to the configured user.
    #[error("cannot run as user {user}: {reason}")]
    User {
        /// The user.
        user: String,
        /// Why.
        reason: String,
    },
}

/// Becomes `user` (its uid, gid and only its own group), for good, after giving it the data
/// directory: called once the privileged ports are bound and the clock restored.
fn drop_privileges(user: &str, data_dir: &Path) -> Result<(), DaemonError> {
    use nix::unistd::{Gid, Uid, User, setgid, setgroups, setuid};
    let fail = |reason: String| DaemonError::User { user: user.to_string(), reason };
    let account = User::from_name(user).map_err(|e| fail(e.to_string()))?.ok_or_else(|| fail("no such user".into()))?;
    if account.uid.is_root() {
        return Err(fail("refusing to \"drop\" to root".into()));
    }
    // The appliance's files become the user's: certificates, the control socket and the
    // port note are written after the drop.
    hand_over(data_dir, account.uid, account.gid).map_err(fail)?;
    setgroups(&[account.gid]).map_err(|e| fail(format!("setgroups: {e}")))?;
    setgid(account.gid).map_err(|e| fail(format!("setgid: {e}")))?;
    setuid(account.uid).map_err(|e| fail(format!("setuid: {e}")))?;
    // Having given up root, getting it back must fail.
    if setuid(Uid::from_raw(0)).is_ok() || Gid::current() != account.gid {
        return Err(fail("privileges were not dropped".into()));
    }
    tracing::info!(user, uid = account.uid.as_raw(), "running unprivileged");
    Ok(())
}

/// Most entries [`hand_over`] changes: the data directory is small.
const HAND_OVER_LIMIT: usize = 100_000;
/// Deepest directory nesting [`hand_over`] descends into.
const HAND_OVER_DEPTH: usize = 16;

/// Gives `data_dir` and everything in it to `uid`:`gid`, as root, without following a
/// symbolic link anywhere: the previous, unprivileged run could have planted one (to the SD
/// card's block device, say). Directories are opened with `O_NOFOLLOW` relative to their
/// parent's descriptor and entries changed with `fchownat(AT_SYMLINK_NOFOLLOW)`, so a
/// directory swapped for a link between listing and opening is refused, not followed.
pub(crate) fn hand_over(data_dir: &Path, uid: nix::unistd::Uid, gid: nix::unistd::Gid) -> Result<(), String> {
    use nix::fcntl::{AtFlags, OFlag, open, openat};
    use nix::sys::stat::Mode;
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let root = open(data_dir, flags, Mode::empty()).map_err(|e| format!("open {}: {e}", data_dir.display()))?;
    nix::unistd::fchown(&root, Some(uid), Some(gid)).map_err(|e| format!("chown {}: {e}", data_dir.display()))?;
    let mut changed = 1;
    let mut pending = vec![(root, data_dir.to_path_buf(), 0)];
    while let Some((directory, path, depth)) = pending.pop() {
        let mut listing = nix::dir::Dir::from_fd(directory).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut entries = Vec::new();
        for entry in listing.iter() {
            let entry = entry.map_err(|e| format!("{}: {e}", path.display()))?;
            let name = entry.file_name();
            if name != c"." && name != c".." {
                entries.push((name.to_owned(), entry.file_type()));
            }
            if changed + entries.len() > HAND_OVER_LIMIT {
                return Err(format!("{} holds too many files to hand over", data_dir.display()));
            }
        }
        changed += entries.len();
        let mut subdirectories = Vec::new();
        for (name, kind) in entries {
            let shown = path.join(name.to_string_lossy().as_ref());
            nix::unistd::fchownat(&listing, name.as_c_str(), Some(uid), Some(gid), AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(|e| format!("chown {}: {e}", shown.display()))?;
            // Without a type from the listing (a filesystem without d_type), ask lstat.
            let is_directory = kind.map(|kind| kind == nix::dir::Type::Directory).unwrap_or_else(|| {
                nix::sys::stat::fstatat(&listing, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                    .is_ok_and(|stat| stat.st_mode & nix::libc::S_IFMT == nix::libc::S_IFDIR)
            });
            if is_directory {
                subdirectories.push((name, shown));
            }
        }
        for (name, shown) in subdirectories {
            if depth + 1 > HAND_OVER_DEPTH {
                return Err(format!("{} is nested too deeply to hand over", shown.display()));
            }
            let child = openat(&listing, name.as_c_str(), flags, Mode::empty())
                .map_err(|e| format!("open {}: {e}", shown.display()))?;
            pending.push((child, shown, depth + 1));
        }
    }
    Ok(())
}

/// What the appliance reports once it is up.
#[derive(Debug, Clone)]
pub struct Ready {
    /// Bound HTTPS address.
    pub https: SocketAddr,
    /// Bound HTTP address.
    pub http: SocketAddr,
    /// The base URL phones are given.
    pub base_url: String,
    /// URL of the CA certificate over plain HTTP.
    pub ca_url: String,
    /// The credential-free bootstrap URL for DHCP option 66.
    pub bootstrap_url: String,
    /// The technician's page.
    pub page_url: String,
    /// The first-start setup code, while no admin password is set.
    pub setup_code: Option<String>,
    /// Devices in the store.
    pub devices: usize,
    /// Where the SIP PnP responder listens, if it runs.
    pub sip: Option<SocketAddr>,
    /// The mDNS name and where its responder listens, if it runs.
    pub mdns: Option<(String, SocketAddr)>,
}

/// The file where `serve` notes its HTTPS port, so the CLI without a server prints the
/// URLs phones really use.
fn port_file(data_dir: &Path) -> PathBuf {
    data_dir.join("https.port")
}

/// The HTTPS port of the last `serve` on `data_dir`, else the default 8443.
pub fn last_https_port(data_dir: &Path) -> u16 {
    std::fs::read_to_string(port_file(data_dir)).ok().and_then(|text| text.trim().parse().ok()).unwrap_or(8443)
}

/// Pending connections the kernel queues for us: a whole office booting at once after a
/// power cut must not overflow it (overflow drops SYNs, costing phones a 1 s retry).
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `address`; the dual-stack wildcard `[::]` falls back to `0.0.0.0` on hosts
/// without IPv6.
fn bind(address: SocketAddr) -> Result<TcpListener, DaemonError> {
    match bind_exactly(address) {
        Err(DaemonError::Bind { source, .. })
            if address.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                && source.raw_os_error() == Some(nix::errno::Errno::EAFNOSUPPORT as i32) =>
        {
            tracing::warn!("no IPv6 on this host; listening on IPv4 only");
            bind_exactly(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), address.port()))
        }
        result => result,
    }
}

fn bind_exactly(address: SocketAddr) -> Result<TcpListener, DaemonError> {
    let error = |source| DaemonError::Bind { address, source };
    let socket = if address.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(error)?;
    socket.set_reuseaddr(true).map_err(error)?;
    socket.bind(address).map_err(error)?;
    socket.listen(LISTEN_BACKLOG).map_err(error)
}

/// Runs the appliance on `db` until SIGTERM, Ctrl-C or an installed update's reboot
/// request; calls `on_ready` once listening.
pub async fn run(
    db: Db<AnyFlash>,
    config: DaemonConfig,
    on_ready: impl FnOnce(&Ready),
) -> Result<Stopped, DaemonError> {
    // Handlers first, so that a signal right after the ready line is never lost.
    let mut terminate = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut hangup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
    let https_socket = bind(config.https)?;
    let http_socket = bind(config.http)?;
    let https = https_socket.local_addr().map_err(|source| DaemonError::Bind { address: config.https, source })?;
    let http = http_socket.local_addr().map_err(|source| DaemonError::Bind { address: config.http, source })?;
    let last_known = db.last_known_time().unwrap_or_else(|error| {
        tracing::warn!("the last known time is unreadable, not restored: {error}");
        None
    });
    match clock::restore(last_known, crate::clock::now()) {
        clock::Restored::Unneeded => {}
        clock::Restored::SetTo(at) => {
            tracing::info!("clock set forward to {} (last known time or build date) until NTP answers", clock::date(at))
        }
        clock::Restored::Refused(why) => {
            tracing::warn!("clock is behind the last known time or build date but cannot be set: {why}")
        }
    }
    let preset_code = config.setup_code_file.as_ref().and_then(|path| match std::fs::read_to_string(path) {
        Ok(code) => Some(code),
        Err(error) => {
            tracing::warn!("setup code file {}: {error}; making one", path.display());
            None
        }
    });
    if let Some(user) = &config.user {
        drop_privileges(user, &config.data_dir)?;
    }

    if let Err(error) = std::fs::write(port_file(&config.data_dir), format!("{}\n", https.port())) {
        tracing::warn!("cannot note the HTTPS port for the CLI: {error}");
    }
    let devices = db.device_count();
    let app = Arc::new(App::new(db, lan::site(config.data_dir.clone(), https.port(), http.port()))?);
    if let Some(lost) = app.lost_secrets()?.first() {
        return Err(DaemonError::LostSecret(lost));
    }
    let view = lan::LanView::now();
    let lan = view.addresses.clone();
    let (names, ips) = view.certificate_names();
    let pki = Arc::new(Pki::ensure(&config.data_dir, config.key_type, &names, &ips)?);
    app.attach_tls(pki.clone());
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config()?);
    let shared = routes::Shared { app: app.clone(), pki: pki.clone(), updates: config.updates.clone() };
    let listeners = vec![
        Listener {
            socket: https_socket,
            router: routes::https(shared.clone()).merge(crate::web::routes(
                app.clone(),
                pki.clone(),
                config.updates.clone(),
                config.limits.body_timeout,
            )),
            tls: Some(acceptor),
        },
        Listener { socket: http_socket, router: routes::http(shared), tls: None },
    ];
    let control_socket = control::bind(&config.data_dir)?;

    let (stop, stopped) = watch::channel(false);
    let server = tokio::spawn(server::serve(listeners, config.limits, app.known_peers.clone(), stopped.clone()));
    let control = tokio::spawn(control::serve(control_socket, app.clone(), stopped.clone()));
    let worker = tokio::spawn(crate::app::redirect::run_worker(app.clone(), stopped.clone()));
    let copier = tokio::spawn(crate::app::backup_copy::run_copy_worker(app.clone(), stopped.clone()));
    let mut sip_endpoint = None;
    let sip = match config.sip {
        Some(address) => match sip::Endpoint::bind(address, &lan).await {
            Ok(endpoint) => {
                app.sip.attach(endpoint.clone());
                sip_endpoint = Some(endpoint.clone());
                let bound = endpoint.local_addr().ok();
                tokio::spawn(endpoint.run(Some(app.clone() as Arc<dyn sip::pnp::Offers>), stopped.clone()));
                bound
            }
            Err(error) => {
                tracing::warn!("SIP PnP responder off: cannot bind {address}: {error}");
                None
            }
        },
        None => None,
    };
    let mut identity_sender = None;
    let mdns = match config.mdns {
        Some(address) => match mdns::bind(address, &lan) {
            Ok(socket) => {
                let identity = view.mdns_identity(https.port());
                let announced = (identity.fqdn().to_string(), socket.local_addr().unwrap_or(address));
                let (sender, identity) = watch::channel(identity);
                identity_sender = Some(sender);
                tokio::spawn(mdns::run(socket, identity, stopped.clone()));
                Some(announced)
            }
            Err(error) => {
                tracing::warn!("mDNS off: cannot bind {address}: {error}");
                None
            }
        },
        None => None,
    };
    let follower = lan::LanFollower {
        app: app.clone(),
        pki: pki.clone(),
        identity: identity_sender,
        sip: sip_endpoint,
        https,
        http,
    };
    tokio::spawn(follower.run(view, stopped.clone()));
    let summary = tokio::spawn(summarise_fetches(stopped.clone()));
    let flusher = tokio::spawn(flush_periodically(app.clone(), stopped));

    let ca_host = lan.first().copied().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    if let Some(code) = preset_code
        && let Err(error) = app.preset_setup_code(&code)
    {
        tracing::warn!("the setup code file: {error}; making one");
    }
    if let Some(code) = app.setup_code()? {
        // Shown on purpose: whoever reads the console or log of the appliance may claim it.
        tracing::info!("no admin password yet: the page asks for setup code {code}");
    }
    on_ready(&Ready {
        https,
        http,
        base_url: app.base_url()?,
        ca_url: format!("{}ca.crt", lan::base_url_for(ca_host, http.port(), "http")),
        devices,
        bootstrap_url: app.bootstrap_url(),
        page_url: lan::base_url_for(ca_host, https.port(), "https"),
        setup_code: app.setup_code()?,
        sip,
        mdns,
    });
    if let Some(updates) = config.updates.clone() {
        let app = app.clone();
        tokio::spawn(async move {
            if updates.current().trial
                && let Err(why) = trial_health(&app, http.port()).await
            {
                tracing::error!("{why}: this root slot stays on trial and will be rolled back");
                return;
            }
            commit_slot(&updates, &app);
        });
    }
    let reboot_requested = async {
        match &config.updates {
            Some(updates) => updates.reboot.notified().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(reboot_requested);
    let stopped = loop {
        tokio::select! {
            _ = terminate.recv() => break Stopped::Terminated,
            _ = tokio::signal::ctrl_c() => break Stopped::Terminated,
            _ = &mut reboot_requested => break Stopped::RebootRequested,
            _ = hangup.recv() => match pki.reload() {
                Ok(()) => tracing::info!(operator = pki.uses_operator_certificate(), "certificate reloaded"),
                Err(error) => tracing::error!("certificate reload failed, keeping the current one: {error}"),
            },
        }
    };
    tracing::info!("shutting down");
    let _ = stop.send(true);
    let _ = server.await;
    // After the server: the requests that finished while it drained are counted too.
    if let Ok(mut last) = summary.await {
        log_activity(&mut last, "since the last summary");
    }
    let _ = control.await;
    let _ = flusher.await;
    // A send cut short stays queued and goes again at the next start; every client makes a
    // repeat harmless. So does a backup copy cut short: it is still due.
    worker.abort();
    let _ = worker.await;
    copier.abort();
    let _ = copier.await;
    let _ = std::fs::remove_file(control::socket_path(&config.data_dir));
    let app_for_flush = app.clone();
    tokio::task::spawn_blocking(move || app_for_flush.flush_contacts().and_then(|_| app_for_flush.flush_seen()))
        .await
        .ok()
        .transpose()?;
    Ok(stopped)
}

/// How long a trial slot has to answer on its LAN address before giving up.
const REACHABLE_WITHIN: Duration = Duration::from_secs(600);

/// Whether this appliance answers `GET /ca.crt` on plain HTTP at its own LAN address (the
/// network is up and the server answers through it), retried for [`REACHABLE_WITHIN`].
async fn reachable_on_lan(http_port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = tokio::time::Instant::now() + REACHABLE_WITHIN;
    while tokio::time::Instant::now() < deadline {
        if let Some(ip) = lan::addresses().first().copied() {
            let probe = async {
                let mut stream = tokio::net::TcpStream::connect(SocketAddr::new(ip, http_port)).await?;
                stream.write_all(b"GET /ca.crt HTTP/1.0\r\nHost: provbox\r\n\r\n").await?;
                let mut head = [0u8; 12];
                stream.read_exact(&mut head).await?;
                Ok::<_, std::io::Error>(head.ends_with(b" 200"))
            };
            if let Ok(Ok(true)) = tokio::time::timeout(Duration::from_secs(5), probe).await {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    false
}

/// How long a trial slot's provbox must stay up, answering on the LAN, before the slot is
/// committed: one answer right after start says little about a crash a few seconds later.
const TRIAL_HEALTHY_FOR: Duration = Duration::from_secs(20);
/// Where the image's run script counts provbox's starts in this boot.
const STARTS_FILE: &str = "/run/provbox/starts";

/// Whether a trial slot is healthy: provbox answers on its LAN address, stays up for
/// [`TRIAL_HEALTHY_FOR`], still answers, reads its store, and was not restarted in this boot.
async fn trial_health(app: &App, http_port: u16) -> Result<(), String> {
    if !reachable_on_lan(http_port).await {
        return Err("not reachable on the LAN".into());
    }
    tokio::time::sleep(TRIAL_HEALTHY_FOR).await;
    if !reachable_on_lan(http_port).await {
        return Err("no longer reachable on the LAN".into());
    }
    let starts = std::fs::read_to_string(STARTS_FILE).ok().and_then(|text| text.trim().parse().ok());
    trial_verdict(starts, app.effective_settings().map(|_| ()).map_err(|e| e.to_string()))
}

/// The verdict on a trial from what was seen: provbox's starts in this boot (when the image
/// counts them) and whether the store answered.
fn trial_verdict(starts: Option<u32>, store: Result<(), String>) -> Result<(), String> {
    if let Some(starts) = starts.filter(|starts| *starts > 1) {
        return Err(format!("provbox started {starts} times in this boot"));
    }
    store.map_err(|error| format!("the store does not answer: {error}"))
}

/// A new root slot on its one trial boot is up and healthy: make it permanent.
fn commit_slot(updates: &Updates, app: &App) {
    let boot = updates.current();
    match updates.commit() {
        Ok(true) => {
            tracing::info!(slot = %boot.slot, "this root slot came up healthy and is now the active one");
            let version = crate::update::release().unwrap_or_default();
            if let Err(error) = app.record_audit("system", &format!("update {version} in slot {} is active", boot.slot))
            {
                tracing::warn!("cannot note the update in the audit log: {error}");
            }
        }
        Ok(false) => {}
        Err(error) => tracing::error!("cannot commit root slot {}: {error}; it will be rolled back", boot.slot),
    }
    if let Some(failed) = boot.rolled_back {
        tracing::warn!("the update in slot {failed} did not come up healthy; running slot {} again", boot.slot);
        if let Err(error) =
            app.record_audit("system", &format!("update in slot {failed} failed; rolled back to slot {}", boot.slot))
        {
            tracing::warn!("cannot note the rollback in the audit log: {error}");
        }
    }
}

/// How often the fetch summary is logged (each fetch is logged at DEBUG only).
const SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// Logs, once a minute when anything happened, how many phone fetches were served and
/// refused, static files served and TLS handshakes failed: the trail of a normal day
/// without a line per request wearing the flash. Returns what the last summary saw.
async fn summarise_fetches(mut stopped: watch::Receiver<bool>) -> Activity {
    let mut last = Activity::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SUMMARY_INTERVAL) => log_activity(&mut last, "in the last minute"),
            _ = stopped.wait_for(|stop| *stop) => return last,
        }
    }
}

/// Logs what happened since `last`, if anything; `since` says over what time.
fn log_activity(last: &mut Activity, since: &str) {
    let now = Activity::now();
    if now != *last {
        tracing::info!("{since}: {}", now.since(last));
        *last = now;
    }
}

async fn flush_periodically(app: Arc<App>, mut stopped: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(FLUSH_INTERVAL) => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
        let app = app.clone();
        // Each on its own: one failing must not keep the others from being written.
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(error) = app.flush_contacts() {
                tracing::error!("writing last-contact records failed: {error}");
            }
            if let Err(error) = app.flush_seen() {
                tracing::error!("writing phones-seen records failed: {error}");
            }
            if let Err(error) = app.note_time() {
                tracing::error!("noting the time failed: {error}");
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, symlink};

    #[test]
    fn a_trial_that_restarted_or_lost_its_store_is_not_committed() {
        use super::trial_verdict;
        assert_eq!(trial_verdict(Some(1), Ok(())), Ok(()));
        assert_eq!(trial_verdict(None, Ok(())), Ok(()), "outside the image nothing counts starts");
        assert_eq!(trial_verdict(Some(3), Ok(())), Err("provbox started 3 times in this boot".into()));
        let error = trial_verdict(Some(1), Err("flash unreadable".into())).unwrap_err();
        assert!(error.contains("store does not answer"), "{error}");
    }

    use nix::unistd::{Gid, Uid};

    use super::hand_over;

    /// A link the unprivileged account planted in its data directory, to a file it must not
    /// own (standing in for the SD card's block device), stays a link: the victim keeps its
    /// owner, while the account's own files and the link itself are handed over.
    #[test]
    fn handing_over_the_data_directory_follows_no_planted_link() {
        if !Uid::effective().is_root() {
            eprintln!("skipped: changing owners needs root");
            return;
        }
        let scratch = tempfile::tempdir().unwrap();
        let victim_dir = scratch.path().join("dev");
        std::fs::create_dir(&victim_dir).unwrap();
        let victim = victim_dir.join("mmcblk0");
        std::fs::write(&victim, b"the card").unwrap();
        let data = scratch.path().join("data");
        std::fs::create_dir_all(data.join("certs/nested")).unwrap();
        std::fs::write(data.join("certs/nested/key.pem"), b"key").unwrap();
        symlink(&victim, data.join("certs/store.bin")).unwrap();
        symlink(&victim_dir, data.join("devices")).unwrap();

        let (uid, gid) = (Uid::from_raw(4242), Gid::from_raw(4243));
        hand_over(&data, uid, gid).unwrap();

        for owned in [&data, &data.join("certs"), &data.join("certs/nested/key.pem")] {
            let meta = std::fs::symlink_metadata(owned).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (4242, 4243), "{}", owned.display());
        }
        let link = std::fs::symlink_metadata(data.join("certs/store.bin")).unwrap();
        assert!(link.file_type().is_symlink() && link.uid() == 4242, "the link itself is handed over");
        for untouched in [&victim, &victim_dir] {
            assert_eq!(std::fs::metadata(untouched).unwrap().uid(), 0, "{} was followed", untouched.display());
        }
    }
}
