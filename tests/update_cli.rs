//! `provbox update` from the command line, on file-backed root slots: keygen, sign, and
//! installs through the install service (`provbox update installer`): accepted, refused
//! with a foreign key, refused when older. As root, also the privilege split: an
//! unprivileged account can neither write a slot or the A/B state itself nor have the
//! service install what is not signed, and other accounts cannot reach the service.

mod fleet;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fleet::{Appliance, Connection, cli, cli_ok, provbox_command};

/// The unprivileged account of the root-only test (nobody).
const UNPRIVILEGED: u32 = 65534;
/// An account that is neither root nor the service's client.
const STRANGER: u32 = 4242;

/// A board's slots as files, a signing key, a root image, and bundles signed from it.
struct Board {
    dir: tempfile::TempDir,
    data: PathBuf,
    image: Vec<u8>,
}

impl Board {
    fn new() -> Board {
        let dir = tempfile::tempdir().unwrap();
        // Reachable by every account, so that what stops the unprivileged one is the slots'
        // and the state's own modes, not the way to them.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let board = Board { data: fleet::data_dir(dir.path()), dir, image: Vec::new() };
        for slot in ["a", "b"] {
            std::fs::write(board.path(&format!("slot-{slot}")), vec![0u8; 64 * 1024]).unwrap();
        }
        std::fs::create_dir(board.path("boot")).unwrap();
        std::fs::write(board.path("boot/state"), "active=a\n").unwrap();
        std::fs::write(
            board.path("boot-info"),
            format!(
                "board=rpi4\nslot=a\ntrial=0\nrolled_back=\nslot_a={}\nslot_b={}\nstate={}\nsequence=1000\n",
                board.path("slot-a"),
                board.path("slot-b"),
                board.path("boot/state")
            ),
        )
        .unwrap();
        let image = root_image(20_004);
        std::fs::write(board.path("root.img"), &image).unwrap();
        let made = cli_ok(&board.data, &["update", "keygen", &board.path("signing.key")]);
        assert!(made.contains("signing.key.pub"), "{made}");
        Board { image, ..board }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn state(&self) -> String {
        std::fs::read_to_string(self.path("boot/state")).unwrap()
    }

    /// The state without the install's attempt number (random; the unit tests check it).
    fn staged(&self) -> String {
        self.state().lines().filter(|line| !line.starts_with("attempt=")).map(|line| format!("{line}\n")).collect()
    }

    /// `update sign` of `image` as release `sequence` with `key`, into `out`.
    fn sign(&self, key: &str, image: &str, version: &str, sequence: &str, out: &str) -> String {
        let (key, out, image) = (self.path(key), self.path(out), self.path(image));
        let args = ["update", "sign", "--key", &key, "--board", "rpi4", "--version", version, "--sequence", sequence];
        cli_ok(&self.data, &[&args[..], &["--out", &out, &image]].concat())
    }

    /// Starts the install service, serving `client` besides root and its own account.
    fn service(&self, client: Option<&str>) -> Service {
        let socket = self.dir.path().join("installer.sock");
        let mut command = provbox_command();
        command.args(["update", "installer", "--socket"]).arg(&socket);
        command.args(["--boot-info", &self.path("boot-info"), "--key", &self.path("signing.key.pub")]);
        if let Some(client) = client {
            command.args(["--client", client]);
        }
        let child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("the service starts");
        let service = Service { child, socket };
        let started = Instant::now();
        while !service.socket.exists() {
            assert!(started.elapsed() < Duration::from_secs(10), "the install service did not bind its socket");
            std::thread::sleep(Duration::from_millis(50));
        }
        service
    }
}

/// A running install service, stopped when dropped.
struct Service {
    child: Child,
    socket: PathBuf,
}

impl Service {
    fn socket(&self) -> String {
        self.socket.display().to_string()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A root image of `len` bytes as far as the install checks it: the ext4 magic (0xEF53)
/// at 1080.
fn root_image(len: usize) -> Vec<u8> {
    let mut image = vec![0x5a; len];
    image[1080..1082].copy_from_slice(&[0x53, 0xef]);
    image
}

/// Runs `command` as `uid` (its group too); returns (success, stderr).
fn run_as(uid: u32, mut command: Command) -> (bool, String) {
    let output = command.uid(uid).gid(uid).output().expect("the command runs");
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into())
}

/// `provbox update install BUNDLE` through the service at `socket`.
fn install_command(bundle: &str, socket: &str) -> Command {
    let mut command = provbox_command();
    command.args(["update", "install", bundle, "--installer", socket]);
    command
}

#[test]
fn keygen_sign_install_and_status_work_end_to_end() {
    let board = Board::new();
    let data = &board.data;
    let path = |name: &str| board.path(name);
    assert_eq!(std::fs::metadata(path("signing.key")).unwrap().permissions().mode() & 0o777, 0o600);
    let signed = board.sign("signing.key", "root.img", "2.0", "1001", "u.update");
    assert!(signed.contains("20004 bytes of image"), "{signed}");
    let service = board.service(None);

    // An older release, signed the same way: refused, nothing staged.
    board.sign("signing.key", "root.img", "1.9", "999", "old.update");
    let (ok, _, err) = cli(data, &["update", "install", &path("old.update"), "--installer", &service.socket()]);
    assert!(!ok && err.contains("older than the running image (release 1000)"), "{err}");
    assert_eq!(board.state(), "active=a\n");

    // A key the appliance does not trust: refused, nothing staged.
    cli_ok(data, &["update", "keygen", &path("other.key")]);
    board.sign("other.key", "root.img", "2.0", "1001", "foreign.update");
    let (ok, _, err) = cli(data, &["update", "install", &path("foreign.update"), "--installer", &service.socket()]);
    assert!(!ok);
    assert!(err.contains("signature does not verify"), "{err}");
    assert_eq!(board.state(), "active=a\n");

    let installed = cli_ok(data, &["update", "install", &path("u.update"), "--installer", &service.socket()]);
    assert!(installed.contains("installed 2.0 into root slot b"), "{installed}");
    assert_eq!(board.staged(), "active=a\nnext=b\n");
    assert_eq!(&std::fs::read(path("slot-b")).unwrap()[..board.image.len()], &board.image[..]);

    let status = cli_ok(data, &["update", "status", "--boot-info", &path("boot-info")]);
    assert!(status.contains("board        rpi4") && status.contains("root slot    a"), "{status}");
    let (ok, _, err) = cli(data, &["update", "status", "--boot-info", &path("missing")]);
    assert!(!ok && err.contains("updates need the provbox firmware image"), "{err}");
    let (ok, _, err) = cli(data, &["update", "install", &path("u.update"), "--installer", &path("missing.sock")]);
    assert!(!ok && err.contains("the update installer at"), "{err}");
}

/// The image's split (issue 14): root owns the slots and the A/B state, the service runs as
/// root, and provbox's account (nobody here) reaches the slots only through the service.
#[test]
fn an_unprivileged_account_cannot_stage_or_write_a_slot() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: running services as other accounts needs root");
        return;
    }
    let board = Board::new();
    for slot in ["slot-a", "slot-b"] {
        std::fs::set_permissions(board.path(slot), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    board.sign("signing.key", "root.img", "2.0", "1001", "u.update");
    cli_ok(&board.data, &["update", "keygen", &board.path("other.key")]);
    board.sign("other.key", "root.img", "6.6.6", "9999", "forged.update");
    let slot_b = std::fs::read(board.path("slot-b")).unwrap();
    let service = board.service(Some("nobody"));
    assert_eq!(std::fs::metadata(&service.socket).unwrap().permissions().mode() & 0o777, 0o660);

    // Directly: neither slot nor the state (nor a link planted next to it) can be written.
    for target in [board.path("slot-b"), board.path("boot/state"), board.path("boot/state.new")] {
        let mut shell = Command::new("sh");
        shell.args(["-c", "printf 'active=b\\nnext=b\\n' > \"$1\"", "sh", &target]);
        let (ok, err) = run_as(UNPRIVILEGED, shell);
        assert!(!ok && err.contains("Permission denied"), "{target}: {err}");
    }
    // Through the service: a bundle signed with another key is refused.
    let (ok, err) = run_as(UNPRIVILEGED, install_command(&board.path("forged.update"), &service.socket()));
    assert!(!ok && err.contains("signature does not verify"), "{err}");
    assert_eq!(std::fs::read(board.path("slot-b")).unwrap(), slot_b);
    assert_eq!(board.state(), "active=a\n");
    // An account that is not the service's client is turned away before a byte is read.
    let (ok, err) = run_as(STRANGER, install_command(&board.path("u.update"), &service.socket()));
    assert!(!ok && err.contains("Permission denied"), "{err}");
    std::fs::set_permissions(&service.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (ok, err) = run_as(STRANGER, install_command(&board.path("u.update"), &service.socket()));
    assert!(!ok && err.contains("uid 4242 may not install updates"), "{err}");
    assert_eq!(board.state(), "active=a\n");
    // The signed bundle goes through: the refusals above were the split's, not a broken path.
    let (ok, err) = run_as(UNPRIVILEGED, install_command(&board.path("u.update"), &service.socket()));
    assert!(ok, "{err}");
    assert_eq!(board.staged(), "active=a\nnext=b\n");
    let state = std::fs::metadata(board.path("boot/state")).unwrap();
    assert_eq!((std::os::unix::fs::MetadataExt::uid(&state), state.permissions().mode() & 0o777), (0, 0o644));
}

/// The server's API on file-backed slots: it hands each bundle to the install service. A
/// refused bundle of 24 MB (signed with another key, so refused after its first bytes) is
/// answered with the reason, not with a reset connection, which is what a client still
/// sending gets from a server that closes on unread data; a signed one installs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_a_refused_upload_and_installs_a_signed_one() {
    let board = Board::new();
    board.sign("signing.key", "root.img", "2.0", "1001", "u.update");
    cli_ok(&board.data, &["update", "keygen", &board.path("other.key")]);
    std::fs::write(board.path("big.img"), root_image(24 << 20)).unwrap();
    board.sign("other.key", "big.img", "9", "2000", "big.update");
    let service = board.service(None);
    let appliance = Appliance::start_with(&["--boot-info", &board.path("boot-info"), "--installer", &service.socket()]);
    let token = cli_ok(&appliance.data, &["admin", "api-token", "create", "ci"]).trim().to_string();
    let auth = format!("Bearer {token}");
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/octet-stream")];
    let upload = |bundle: Vec<u8>| {
        let (config, https, headers) = (appliance.client_config(), appliance.https, headers);
        async move {
            let mut connection = Connection::open(config, https, None).await.unwrap();
            let response =
                connection.request_within(Duration::from_secs(120), "POST", "/api/v1/update", &headers, &bundle);
            let response = response.await.expect("an answer, not a broken connection");
            (response.status, response.text())
        }
    };

    let (status, answer) = upload(std::fs::read(board.path("big.update")).unwrap()).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("signature does not verify"), "{answer}");
    assert_eq!(board.state(), "active=a\n");

    let (status, answer) = upload(std::fs::read(board.path("u.update")).unwrap()).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains(r#""slot":"b""#) && answer.contains(r#""rebooting":true"#), "{answer}");
    assert_eq!(board.staged(), "active=a\nnext=b\n");
    assert_eq!(&std::fs::read(board.path("slot-b")).unwrap()[..board.image.len()], &board.image[..]);
}
