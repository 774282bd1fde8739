//! The firmware image under QEMU (`-M virt`, TCG): boot to HTTPS, phones enrolling through
//! the forwarded port, the page, persistence across a reset, a power cut while the store is
//! written, and signed updates (refused, switched, rolled back).
//!
//! `scripts/test-image` builds the images and runs this with `--ignored`; it needs
//! `PROVBOX_IMAGE_DIR` (the qemu-virt build) and the bundles `PROVBOX_UPDATE_GOOD` (a newer
//! version, with `provbox.note=test-2` added to its kernel command line),
//! `PROVBOX_UPDATE_BROKEN` (signed, but its provbox never starts), `PROVBOX_UPDATE_BAD_KERNEL`
//! (signed, but its kernel is not one), `PROVBOX_UPDATE_FOREIGN` (signed with another key)
//! and `PROVBOX_UPDATE_OLD` (the first image's bundle: an older release).
//!
//! The guest's network is QEMU's user mode, unrestricted so that the guest reaches the
//! test's NTP server at 10.0.2.2 (QEMU maps it to the host's 127.0.0.1). That is safe only
//! because scripts/test-image runs this in a network namespace of its own with nothing but
//! loopback: the virt test refuses to start anywhere else.

mod fleet;
mod ntp_mock;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet::{Browser, Connection, Phone, hidden};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncWriteExt, BufReader as AsyncBufReader};

const PASSWORD: &str = "Install-Passw0rd-2026";
/// Time an emulated board gets to take and check an update bundle (a whole root slot with
/// its kernel, about 50 MB).
const UPLOAD_TIME: Duration = Duration::from_secs(420);
/// Time an emulated board gets from an accepted update or a reset to the boot script's or
/// the initramfs' first line: shutdown, U-Boot reading the kernel, and the kernel's start.
/// CI runs this machine next to the rpi3 and rpi4 boots on two cores, where one reboot took
/// over 120 s.
const REBOOT_TIME: Duration = Duration::from_secs(300);

fn env_path(name: &str) -> PathBuf {
    PathBuf::from(std::env::var_os(name).unwrap_or_else(|| panic!("{name} is not set: run scripts/test-image")))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A QEMU process's serial console, as it has printed so far.
#[derive(Clone)]
struct Console(Arc<Mutex<String>>);

impl Console {
    /// Reads `child`'s stdout in a thread, echoing each line to stderr after `prefix`.
    /// Bytes that are not UTF-8, which serial consoles emit, are replaced.
    fn capture(child: &mut Child, prefix: &'static str) -> Console {
        let console = Console(Arc::default());
        let mut reader = BufReader::new(child.stdout.take().expect("stdout is piped"));
        let sink = console.clone();
        std::thread::spawn(move || {
            let mut line = Vec::new();
            while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                let text = String::from_utf8_lossy(&line).trim_end().to_string();
                line.clear();
                eprintln!("{prefix}| {text}");
                let mut console = sink.0.lock().unwrap();
                console.push_str(&text);
                console.push('\n');
            }
        });
        console
    }

    fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }

    /// Waits (at most `limit`) for `text` on the console after byte `from`.
    fn wait_for(&self, text: &str, from: usize, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.text().get(from..).is_some_and(|c| c.contains(text)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }
}

/// Panics unless this process is in a network namespace with only loopback (what
/// scripts/test-image makes): there, an unrestricted QEMU user network reaches nothing else.
fn assert_loopback_only() {
    let devices = std::fs::read_to_string("/proc/self/net/dev").unwrap();
    let interfaces: Vec<&str> = devices.lines().skip(2).filter_map(|l| l.split(':').next()).map(str::trim).collect();
    assert_eq!(
        interfaces,
        ["lo"],
        "the virt boot test lets its guest reach 10.0.2.2 (the host's loopback) for NTP, so it runs only in a \
         network namespace with nothing but loopback: run scripts/test-image"
    );
}

/// One QEMU process running the disk image, its console captured.
struct Machine {
    child: Child,
    console: Console,
    monitor: PathBuf,
    https: SocketAddr,
    http: SocketAddr,
}

impl Machine {
    /// Boots `disk` from U-Boot, which scripts/test-image copied off the image's boot
    /// partition into `images/boot-partition` (QEMU plays the firmware): its boot script
    /// chooses the root slot and loads that slot's kernel, initramfs and command line. The
    /// site's additions go to `local.env` on the boot partition: NTP from the test's server
    /// on the host's loopback port `ntp_port`, and a short trial so that a broken update
    /// rolls back soon.
    fn boot(images: &Path, disk: &Path, ports: (u16, u16), ntp_port: u16) -> Machine {
        assert_loopback_only();
        let monitor = disk.with_extension("monitor");
        let _ = std::fs::remove_file(&monitor);
        put_local_env(disk, &format!("provbox.ntp=10.0.2.2:{ntp_port} provbox.trial=60"));
        let mut child = Command::new("qemu-system-aarch64")
            .args(["-M", "virt", "-cpu", "cortex-a57", "-m", "512", "-smp", "2", "-display", "none"])
            .args(["-serial", "stdio"])
            .arg("-monitor")
            .arg(format!("unix:{},server=on,wait=off", monitor.display()))
            .arg("-bios")
            .arg(images.join("boot-partition/u-boot.bin"))
            .arg("-drive")
            .arg(format!("file={},if=virtio,format=raw,cache=writeback", disk.display()))
            .args(["-netdev"])
            .arg(format!("user,id=lan,hostfwd=tcp:127.0.0.1:{}-:443,hostfwd=tcp:127.0.0.1:{}-:80", ports.0, ports.1))
            .args(["-device", "virtio-net-pci,netdev=lan"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("qemu-system-aarch64 runs");
        let console = Console::capture(&mut child, "guest");
        Machine {
            child,
            console,
            monitor,
            https: SocketAddr::from(([127, 0, 0, 1], ports.0)),
            http: SocketAddr::from(([127, 0, 0, 1], ports.1)),
        }
    }

    fn console(&self) -> String {
        self.console.text()
    }

    /// Waits (at most `limit`) for `text` on the console after byte `from`; panics with
    /// `what` and the console since `from` (not all of it: CI shows a failure's first
    /// lines) when it does not come.
    fn expect_console(&self, text: &str, from: usize, limit: Duration, what: &str) {
        let start = Instant::now();
        if !self.console.wait_for(text, from, limit) {
            let console = self.console();
            panic!(
                "{what}: no {text:?} on the console within {:.0} s; what it printed since:\n{}",
                start.elapsed().as_secs_f64(),
                console.get(from..).unwrap_or(&console)
            );
        }
    }

    /// Waits until the CA comes over HTTP and a TLS handshake with it succeeds on HTTPS;
    /// returns the CA.
    async fn wait_https(&self, limit: Duration) -> Vec<CertificateDer<'static>> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(pem) = plain_get(self.http, "/ca.crt").await {
                let ca: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes()).filter_map(Result::ok).collect();
                let config = fleet::client_config_trusting(&ca, None);
                if !ca.is_empty() && Connection::open(config, self.https, None).await.is_ok() {
                    return ca;
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        panic!("no HTTPS within {limit:?}; console:\n{}", self.console());
    }

    /// A hard reset through the QEMU monitor: no shutdown, like pulling the plug.
    fn reset(&self) {
        let mut monitor = std::os::unix::net::UnixStream::connect(&self.monitor).unwrap();
        monitor.write_all(b"system_reset\n").unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET over plain HTTP; the body if the answer is 200.
async fn plain_get(server: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(server)).await??;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: provbox\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut reader = AsyncBufReader::new(stream);
    let response = tokio::time::timeout(Duration::from_secs(10), fleet::read_response(&mut reader)).await??;
    if response.status == 200 { Ok(response.text()) } else { Err(std::io::Error::other(response.status.to_string())) }
}

/// The installer's view: the CA, the page and an API token.
struct Site {
    config: Arc<rustls::ClientConfig>,
    https: SocketAddr,
    token: String,
}

impl Site {
    async fn api(&self, method: &str, path: &str, body: &[u8]) -> (u16, serde_json::Value) {
        let mut connection = Connection::open(self.config.clone(), self.https, None).await.unwrap();
        let auth = format!("Bearer {}", self.token);
        let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
        // Uploads of a bundle to an emulated board take a while.
        let response = connection.request_within(UPLOAD_TIME, method, path, &headers, body).await.unwrap();
        (response.status, serde_json::from_str(&response.text()).unwrap_or(serde_json::Value::Null))
    }

    async fn add(&self, mac: &str) -> serde_json::Value {
        let spec = format!(
            r#"{{"mac":"{mac}","vendor":"yealink","model":"T54W","lines":[{{"extension":"100","name":"Ann Lee"}}]}}"#
        );
        let (status, device) = self.api("POST", "/api/v1/devices", spec.as_bytes()).await;
        assert_eq!(status, 200, "{device}");
        device
    }

    async fn device_count(&self) -> usize {
        let (status, devices) = self.api("GET", "/api/v1/devices", b"").await;
        assert_eq!(status, 200, "{devices}");
        devices.as_array().map_or(0, Vec::len)
    }

    async fn slots(&self) -> serde_json::Value {
        let (status, slots) = self.api("GET", "/api/v1/update", b"").await;
        assert_eq!(status, 200, "{slots}");
        slots
    }

    async fn login(&self) -> Browser {
        let mut browser = Browser::open_at(self.config.clone(), self.https).await;
        let form = hidden(&browser.get("/login").await.text(), "form");
        let done = browser.post("/login", &[("form", &form), ("password", PASSWORD)]).await;
        assert_eq!(done.status, 303, "{}", done.text());
        browser
    }
}

/// First start: the latest setup code from the console, the admin password, an API token.
async fn claim(machine: &Machine, ca: &[CertificateDer<'static>]) -> Site {
    let console = machine.console();
    // The latest: a reset trigger makes a new one.
    let latest =
        console.rfind("first start: setup code ").unwrap_or_else(|| panic!("no setup code on the console:\n{console}"));
    let code = setup_code_on(&console, latest).expect("a setup code after its label");
    let config = fleet::client_config_trusting(ca, None);
    let mut browser = Browser::open_at(config.clone(), machine.https).await;
    let form = hidden(&browser.get("/setup").await.text(), "form");
    let done = browser
        .post("/setup", &[("form", &form), ("code", &code), ("password", PASSWORD), ("confirm", PASSWORD)])
        .await;
    assert_eq!(done.status, 303, "{}", done.text());
    let csrf = hidden(&browser.get("/").await.text(), "csrf");
    let made = browser.post("/settings/api-tokens", &[("csrf", &csrf), ("name", "image-test")]).await.text();
    let marker = "shown once, copy it now): <code>";
    let start = made.find(marker).unwrap_or_else(|| panic!("{made}")) + marker.len();
    let token = made[start..].split('<').next().unwrap().to_string();
    Site { config, https: machine.https, token }
}

/// A phone enrolls through its URL, then fetches its steady config; the enrollment URL
/// then gives nothing.
async fn enroll(site: &Site, phone: &Phone, enrollment_url: &str) {
    let enrollment = fleet::Appliance::path_of(enrollment_url);
    let mut connection = Connection::open(site.config.clone(), site.https, None).await.unwrap();
    let config = phone.boot(&mut connection, &enrollment).await.last().unwrap().1.text();
    let steady = phone.steady_path_in(&config).expect("steady URL in the config");
    let files = phone.boot(&mut connection, &steady).await;
    assert_eq!(files.last().unwrap().1.status, 200, "steady device file");
    let again = phone.boot(&mut connection, &enrollment).await;
    assert_eq!(again.last().unwrap().1.status, 404, "the locked enrollment URL serves no device file");
}

/// The page's update form, as a browser posts it: multipart with the CSRF field first.
async fn upload_on_page(browser: &mut Browser, bundle: &[u8]) -> String {
    let csrf = hidden(&browser.get("/system").await.text(), "csrf");
    let boundary = "----provboxImageTest7MA4YWxkTrZu0gW";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{csrf}\r\n--{boundary}\r\n\
         Content-Disposition: form-data; name=\"bundle\"; filename=\"update.update\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bundle);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let content_type = format!("multipart/form-data; boundary={boundary}");
    browser
        .request_within(UPLOAD_TIME, "POST", "/system/update", &[("Content-Type", &content_type)], &body)
        .await
        .text()
}

/// A Raspberry Pi image started as its firmware would start it: U-Boot off its boot
/// partition (copied by scripts/test-image into `boot-partition/`) with `dtb` as the device
/// tree the firmware hands on, the disk as the SD card. The boot script gets `local` as the
/// site's command line additions (`local.env` on the card's boot partition). `qemu` runs
/// QEMU. Returns the serial console once the setup code appeared on it or five minutes
/// passed; the console goes to the test's output line by line, after `label`.
#[allow(clippy::too_many_arguments)]
fn boot_pi(
    qemu: &Path,
    machine: &str,
    images: &Path,
    image: &str,
    dtb: &Path,
    local: &str,
    serial: [&str; 4],
    label: &'static str,
) -> String {
    let work = tempfile::tempdir().unwrap();
    let card = work.path().join("sd.img");
    std::fs::copy(images.join(image), &card).unwrap();
    // QEMU's SD card model wants a power-of-two size.
    std::fs::OpenOptions::new().write(true).open(&card).unwrap().set_len(512 << 20).unwrap();
    put_local_env(&card, local);
    let mut command = Command::new(qemu);
    command.args(["-M", machine, "-display", "none", "-no-reboot"]).args(serial).arg("-dtb").arg(dtb);
    command.arg("-kernel").arg(images.join("boot-partition/u-boot.bin"));
    let mut child = command
        .arg("-drive")
        .arg(format!("file={},if=sd,format=raw", card.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{} runs: {e}", qemu.display()));
    let captured = Console::capture(&mut child, label);
    captured.wait_for("first start: setup code", 0, Duration::from_secs(300));
    let _ = child.kill();
    let _ = child.wait();
    captured.text()
}

/// What a Pi's console shows when the image came up from its SD card: the slot, the board,
/// the perm partition and the store mounted, provbox unprivileged and asking for its setup
/// code, every module loaded.
fn assert_pi_came_up(board: &str, console: &str) {
    for expected in [
        "provbox-init: booting slot a (/dev/mmcblk0p2)",
        board,
        "clock set forward to",
        "running unprivileged",
        "store /dev/mmcblk0p5 mounted",
        "first start: setup code",
    ] {
        assert!(console.contains(expected), "no {expected:?} on the {board} console:\n{console}");
    }
    assert!(!console.contains("fall back to RAM"), "the perm partition did not mount:\n{console}");
    assert!(!console.contains("did not load"), "a module did not load:\n{console}");
}

/// The Raspberry Pi 3 image under `qemu-system-aarch64 -M raspi3b`, started as the firmware
/// would: U-Boot from the boot partition with the board's device tree, then the boot script,
/// which loads slot A's kernel, initramfs and command line from the SD card. The setup code
/// must reach the serial console (the mini UART, ttyS1, QEMU's second serial port), which is
/// the last `console=` and so `/dev/console`. QEMU's raspi3b has no network model for the
/// Pi 3's USB Ethernet and its watchdog model stalls the machine, so this checks the board's
/// boot, storage and start-up, not its LAN.
#[test]
#[ignore = "needs the rpi3 image: run scripts/test-image"]
fn the_pi3_image_boots_from_its_sd_card() {
    let images = env_path("PROVBOX_RPI3_IMAGE_DIR");
    let dtb = images.join("boot-partition/bcm2837-rpi-3-b.dtb");
    let serial = ["-serial", "null", "-serial", "stdio"];
    let local = "provbox.ntp=off provbox.watchdog=off";
    let console =
        boot_pi(Path::new("qemu-system-aarch64"), "raspi3b", &images, "provbox-rpi3.img", &dtb, local, serial, "pi3");
    assert!(console.contains("Found U-Boot script /boot.scr"), "U-Boot did not run the boot script:\n{console}");
    assert!(console.contains("provbox: loading root slot a (partition 2)"), "{console}");
    let cmdline = kernel_command_line(&console, 0);
    assert!(cmdline.starts_with(&slot_cmdline(&images)) && cmdline.contains("provbox.slot=a"), "{cmdline}");
    assert_pi_came_up("on Raspberry Pi 3", &console);
}

/// The Raspberry Pi 4 image under QEMU 10's `-M raspi4b` (`PROVBOX_QEMU_RASPI4B`, from
/// bookworm-backports), started through U-Boot and the boot script as on the board, with
/// the image's own kernel, initramfs and device tree. The emulation needs these edits, made
/// here on a copy and never in the image:
/// - the device tree: the HDMI block's L2 interrupt controller, the HDMI encoders and their
///   I²C buses are disabled (their registers are not emulated: brcmstb_l2_intc_of_init
///   aborts); the SD regulators lose their GPIOs and the Wi-Fi SDIO controller its power
///   sequence, all on the firmware's GPIO expander, which QEMU does not model;
/// - the command line, through the card's `local.env`: `clk_ignore_unused` (disabling
///   unused clocks reads an unemulated gate and aborts), and the PL011 (ttyAMA0, QEMU's
///   first serial port) as `/dev/console`, since opening the mini UART hangs in its
///   interrupt setup under QEMU 10.
///
/// QEMU wires the SD card to the Arasan controller (fe300000), not to emmc2 as the board
/// does, so this proves the kernel, the initramfs, the slot choice, the perm and store
/// partitions and provbox's start on the Pi 4's device tree, not emmc2's regulators: those
/// are checked from the device tree by tests/board_drivers.rs.
#[test]
#[ignore = "needs the rpi4 image and QEMU 10: run scripts/test-image"]
fn the_pi4_image_boots_under_raspi4b() {
    let images = env_path("PROVBOX_RPI4_IMAGE_DIR");
    let qemu = env_path("PROVBOX_QEMU_RASPI4B");
    let work = tempfile::tempdir().unwrap();
    let dtb = work.path().join("bcm2711-rpi-4-b.dtb");
    std::fs::copy(images.join("boot-partition/bcm2711-rpi-4-b.dtb"), &dtb).unwrap();
    let fdtput = |args: &[&str]| {
        let status = Command::new("fdtput").args(args).status().expect("fdtput runs");
        assert!(status.success(), "fdtput {args:?}");
    };
    let tree = dtb.to_str().unwrap();
    for node in [
        "/soc/interrupt-controller@7ef00100",
        "/soc/hdmi@7ef00700",
        "/soc/hdmi@7ef05700",
        "/soc/i2c@7ef04500",
        "/soc/i2c@7ef09500",
    ] {
        fdtput(&["-t", "s", tree, node, "status", "disabled"]);
    }
    fdtput(&["-d", tree, "/sd_vcc_reg", "gpio"]);
    fdtput(&["-d", tree, "/sd_io_1v8_reg", "gpios"]);
    fdtput(&["-d", tree, "/soc/mmc@7e300000", "mmc-pwrseq"]);
    let cmdline = slot_cmdline(&images);
    assert!(cmdline.contains("console=ttyS1,115200"), "the shipped serial console moved: {cmdline}");
    // Appended by the boot script: the PL011 as the last console (so /dev/console; the mini
    // UART is still a kernel console, but nothing opens it), and `loglevel=7` after the
    // slot's `quiet`, so that the kernel's own log shows the device tree it runs on.
    let local = "provbox.ntp=off provbox.watchdog=off clk_ignore_unused console=ttyAMA0,115200 loglevel=7";
    // U-Boot writes to the mini UART (QEMU's second serial port); the kernel's console and
    // the appliance's output come on the PL011 (the first).
    let serial = ["-serial", "stdio", "-serial", "null"];
    let console = boot_pi(&qemu, "raspi4b", &images, "provbox-rpi4.img", &dtb, local, serial, "pi4");
    assert_pi_came_up("on Raspberry Pi 4", &console);
    assert!(console.contains("Machine model: Raspberry Pi 4 Model B"), "{console}");
    // The command line the boot script assembles: slot A's own, then the script's slot
    // choice, then local.env's.
    let booted = kernel_command_line(&console, 0);
    assert!(
        booted.starts_with(&format!("{cmdline} provbox.slot=a provbox.try=0 ")) && booted.ends_with(local),
        "{booted}"
    );
}

/// The kernel command line that root slot A's boot script passes (its `bootargs.env`).
fn slot_cmdline(images: &Path) -> String {
    let env = std::fs::read_to_string(images.join("slot-boot/bootargs.env")).unwrap();
    env.trim().strip_prefix("bootargs=").expect("bootargs.env holds bootargs=").to_string()
}

/// Writes `local.env` with `bootargs_local=ARGS` to the boot partition of `disk`: a site's
/// additions to the kernel command line, which the boot script appends.
fn put_local_env(disk: &Path, args: &str) {
    put_boot_file(disk, "local.env", &format!("bootargs_local={args}\n"));
}

/// `disk`'s boot partition, as mtools names it.
fn boot_partition(disk: &Path) -> String {
    format!("{}@@{}", disk.display(), partition_start(disk, 1) * 512)
}

/// Puts file `name` with `content` on the boot partition of `disk`, as a laptop would.
fn put_boot_file(disk: &Path, name: &str, content: &str) {
    let local = disk.with_extension(name);
    std::fs::write(&local, content).unwrap();
    let copied =
        Command::new("mcopy").args(["-o", "-i", &boot_partition(disk)]).arg(&local).arg(format!("::/{name}")).status();
    assert!(copied.is_ok_and(|status| status.success()), "mcopy {name} to {}", disk.display());
}

/// File `name` from the boot partition of `disk`, if it is there.
fn boot_file(disk: &Path, name: &str) -> Option<String> {
    let output = Command::new("mtype").args(["-i", &boot_partition(disk)]).arg(format!("::/{name}")).output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The setup code provbox printed on `console` after byte `from`.
fn setup_code_on(console: &str, from: usize) -> Option<String> {
    let tail = console.get(from..).unwrap_or("");
    tail.split("first start: setup code ").nth(1).and_then(|rest| rest.split_whitespace().next()).map(str::to_string)
}

/// The kernel command line the initramfs reported on `console` after byte `from`.
fn kernel_command_line(console: &str, from: usize) -> String {
    let tail = console.get(from..).unwrap_or("");
    let line = tail.lines().find_map(|line| line.split("provbox-init: kernel command line: ").nth(1));
    line.unwrap_or_else(|| panic!("no kernel command line on the console:\n{tail}")).to_string()
}

/// The size of the image in `bundle`, from its signed header (`size=`).
fn signed_image_size(bundle: &[u8]) -> u64 {
    let header_len = usize::from(u16::from_le_bytes([bundle[8], bundle[9]]));
    let header = String::from_utf8_lossy(&bundle[10..10 + header_len]).into_owned();
    header.lines().find_map(|line| line.strip_prefix("size=")?.parse().ok()).expect("the header has size=")
}

/// The first sector of MBR primary partition `number` (1-4) of `disk`.
fn partition_start(disk: &Path, number: usize) -> u64 {
    use std::io::Read;
    let mut mbr = [0u8; 512];
    std::fs::File::open(disk).unwrap().read_exact(&mut mbr).unwrap();
    // The partition entries start at 446, 16 bytes each; the first LBA is at +8 (LE).
    let entry = 446 + 16 * (number - 1);
    u64::from(u32::from_le_bytes(mbr[entry + 8..entry + 12].try_into().unwrap()))
}

/// Flips the byte `offset` bytes into MBR primary partition `number` (1-4) of `disk`.
fn flip_byte_in_partition(disk: &Path, number: usize, offset: u64) {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::OpenOptions::new().read(true).write(true).open(disk).unwrap();
    let at = partition_start(disk, number) * 512 + offset;
    let mut byte = [0u8; 1];
    file.seek(SeekFrom::Start(at)).unwrap();
    file.read_exact(&mut byte).unwrap();
    byte[0] ^= 0xff;
    file.seek(SeekFrom::Start(at)).unwrap();
    file.write_all(&byte).unwrap();
    file.sync_all().unwrap();
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the qemu-virt image: run scripts/test-image"]
async fn the_image_boots_serves_survives_power_cuts_and_updates_safely() {
    let images = env_path("PROVBOX_IMAGE_DIR");
    let work = tempfile::tempdir().unwrap();
    let disk = work.path().join("disk.img");
    std::fs::copy(images.join("provbox-qemu-virt.img"), &disk).unwrap();
    let ports = (free_port(), free_port());
    let mut later_boots = Vec::new();
    // The site's time server runs an hour ahead of this host, so the guest's clock can only
    // read that way if NTP set it. At most 200 requests, stopping after 15 idle minutes.
    let ntp = ntp_mock::start(ntp_mock::Behaviour::Ahead(3600.0), 200, Duration::from_secs(900));

    // First boot: HTTPS comes up, the installer claims the appliance with the setup code.
    let started = Instant::now();
    let machine = Machine::boot(&images, &disk, ports, ntp.address.port());
    let ca = machine.wait_https(Duration::from_secs(240)).await;
    let first_boot = started.elapsed().as_secs_f64();
    assert!(machine.console().contains("booting slot a"), "{}", machine.console());
    // U-Boot's boot script loaded slot a's own command line, with the site's additions.
    let first_cmdline = kernel_command_line(&machine.console(), 0);
    assert!(first_cmdline.contains("provbox.slot=a provbox.try=0"), "{first_cmdline}");
    assert!(first_cmdline.contains("provbox.trial=60") && !first_cmdline.contains("provbox.note="), "{first_cmdline}");
    assert!(machine.console().contains("running unprivileged"), "provbox did not drop root");
    assert!(machine.console().contains("mDNS: provbox-123456.local"), "hostname from the MAC");
    assert!(machine.console().contains("watchdog: feeding /dev/watchdog"), "watchdog not fed");
    // Unclaimed, the setup code is on the boot partition too (for a board with no console);
    // claiming spends it, and the file goes.
    machine.expect_console("first start: setup code ", 0, Duration::from_secs(30), "no setup code");
    let code = setup_code_on(&machine.console(), 0).expect("a setup code on the console");
    let on_card = boot_file(&disk, "provbox-setup-code.txt").unwrap_or_default();
    assert!(on_card.contains(&code), "the card says {on_card:?}, the console {code}");
    let site = claim(&machine, &ca).await;
    let mut browser = site.login().await;
    assert!(browser.get("/").await.text().contains("Devices"));
    let waited = Instant::now();
    while boot_file(&disk, "provbox-setup-code.txt").is_some() && waited.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(boot_file(&disk, "provbox-setup-code.txt"), None, "the spent setup code stayed on the card");

    // The clock, set by NTP: the server saw the guest's requests, the guest's HTTP Date is
    // an hour ahead of this host, and the System page and `redirect status` (its API) say
    // where the time came from.
    let synchronised = format!("synchronised by NTP: from 10.0.2.2:{}", ntp.address.port());
    let waited = Instant::now();
    let mut clock = String::new();
    while waited.elapsed() < Duration::from_secs(120) {
        let (_, status) = site.api("GET", "/api/v1/redirect", b"").await;
        clock = status["clock"].as_str().unwrap_or_default().to_string();
        if clock.starts_with(&synchronised) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(clock.starts_with(&synchronised), "{clock}\n{}", machine.console());
    assert!(ntp.served() >= 1);
    let page = browser.get("/system").await;
    assert!(page.text().contains(&synchronised), "{}", page.text());
    let guest_date = page.header("date").expect("a Date header");
    let guest_time = httpdate::parse_http_date(guest_date).unwrap();
    let ahead = guest_time.duration_since(std::time::SystemTime::now()).map_or(0, |d| d.as_secs());
    assert!((3540..=3660).contains(&ahead), "the guest's clock ({guest_date}) is not an hour ahead: {ahead} s");
    assert!(machine.console().contains("clock synchronised by NTP"), "{}", machine.console());

    // Phones enroll over HTTPS through the forwarded port.
    let phones = [Phone::yealink("805ec0a00001"), Phone::yealink("805ec0a00002"), Phone::yealink("805ec0a00003")];
    for phone in &phones {
        let device = site.add(&phone.mac).await;
        enroll(&site, phone, device["enrollment_url"].as_str().unwrap()).await;
    }

    // A hard reset, with `provbox-reset` put on the boot partition (the installer forgot
    // the admin password): everything acknowledged is still there, the CA and token too, and
    // only the admin password is gone, with a new setup code on the console and the card.
    put_boot_file(&disk, "provbox-reset", "");
    let mark = machine.console().len();
    machine.reset();
    machine.expect_console("booting slot a", mark, REBOOT_TIME, "no reboot after the reset");
    let reset_at = Instant::now();
    let ca_again = machine.wait_https(Duration::from_secs(240)).await;
    later_boots.push(reset_at.elapsed().as_secs_f64());
    assert!(machine.console()[mark..].contains("provbox-reset found: clearing the admin password"));
    assert_eq!(ca_again, ca, "the CA was not kept");
    assert_eq!(site.device_count().await, 3);
    let (_, device) = site.api("GET", "/api/v1/devices/805ec0a00002", b"").await;
    assert_eq!(device["enrollment"]["state"], "locked", "{device}");
    machine.expect_console(
        "first start: setup code ",
        mark,
        Duration::from_secs(30),
        "no setup code after provbox-reset",
    );
    let new_code = setup_code_on(&machine.console(), mark).expect("a new setup code after provbox-reset");
    assert_ne!(new_code, code);
    assert!(boot_file(&disk, "provbox-setup-code.txt").unwrap_or_default().contains(&new_code));
    assert_eq!(boot_file(&disk, "provbox-reset"), None, "the trigger stays after it worked");
    let mut stale = Browser::open_at(site.config.clone(), site.https).await;
    assert_eq!(stale.get("/login").await.header("location"), Some("/setup"), "the old password still counts");
    let site = claim(&machine, &ca).await;

    // A power cut while devices are being added: every acknowledged add survives.
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let writer = {
        let (config, https, token, acknowledged) =
            (site.config.clone(), site.https, site.token.clone(), acknowledged.clone());
        tokio::spawn(async move {
            let writer = Site { config, https, token };
            for i in 0..400u32 {
                let mac = format!("805ec0b{i:05x}");
                let spec = format!(
                    r#"{{"mac":"{mac}","vendor":"snom","model":"D785","lines":[{{"extension":"{}","name":"N"}}]}}"#,
                    200 + i
                );
                let Ok(mut connection) = Connection::open(writer.config.clone(), writer.https, None).await else {
                    break;
                };
                let auth = format!("Bearer {}", writer.token);
                let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
                match connection.request("POST", "/api/v1/devices", &headers, spec.as_bytes()).await {
                    Ok(response) if response.status == 200 => acknowledged.lock().unwrap().push(mac),
                    _ => break,
                }
            }
        })
    };
    let cut_deadline = Instant::now() + Duration::from_secs(60);
    while acknowledged.lock().unwrap().len() < 25 && Instant::now() < cut_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(machine); // SIGKILL mid-write
    let _ = writer.await;
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= 25, "only {} adds before the cut", acknowledged.len());

    let booted = Instant::now();
    let machine = Machine::boot(&images, &disk, ports, ntp.address.port());
    machine.wait_https(Duration::from_secs(240)).await;
    later_boots.push(booted.elapsed().as_secs_f64());
    let (_, devices) = site.api("GET", "/api/v1/devices", b"").await;
    let present: Vec<&str> = devices.as_array().unwrap().iter().filter_map(|d| d["mac"].as_str()).collect();
    for mac in &acknowledged {
        assert!(present.contains(&mac.as_str()), "acknowledged {mac} lost in the power cut");
    }
    println!("power cut after {} acknowledged adds: all present ({} devices)", acknowledged.len(), present.len());

    // Bad updates are refused and change nothing.
    let good = std::fs::read(env_path("PROVBOX_UPDATE_GOOD")).unwrap();
    let mut tampered = good.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x01;
    let foreign = std::fs::read(env_path("PROVBOX_UPDATE_FOREIGN")).unwrap();
    for (what, bundle, expected) in [
        ("tampered image", &tampered, "SHA-256 does not match"),
        ("another key", &foreign, "signature does not verify"),
        ("not a bundle", &b"hello".to_vec(), "not a provbox update bundle"),
    ] {
        let (status, answer) = site.api("POST", "/api/v1/update", bundle).await;
        assert_eq!(status, 400, "{what}: {answer}");
        assert!(answer["error"].as_str().unwrap_or("").contains(expected), "{what}: {answer}");
    }
    let slots = site.slots().await;
    assert_eq!((slots["slot"].as_str(), slots["trial"].as_bool()), (Some("a"), Some(false)), "{slots}");
    let version_a = slots["version"].as_str().unwrap().to_string();
    // scripts/test-image builds with the development key: the version says so.
    if std::env::var_os("PROVBOX_UPDATE_KEY").is_none() {
        assert!(version_a.ends_with("-devkey") && slots["devkey"] == true, "{slots}");
    }

    // A good update through the page: written to slot b, the board reboots into it on
    // trial, provbox comes up and commits it.
    let mut browser = site.login().await;
    let mark = machine.console().len();
    let answer = upload_on_page(&mut browser, &good).await;
    assert!(answer.contains("written to root slot b"), "{answer}");
    machine.expect_console("booting slot b (/dev/vda3), on trial", mark, REBOOT_TIME, "no reboot into the good update");
    // The update's own kernel command line: test-2 adds provbox.note=test-2 to it.
    machine.expect_console("provbox-init: kernel command line: ", mark, Duration::from_secs(30), "no command line");
    let new_cmdline = kernel_command_line(&machine.console(), mark);
    assert!(new_cmdline.contains("provbox.note=test-2 provbox.slot=b provbox.try=1"), "{new_cmdline}");
    let switched_at = Instant::now();
    machine.wait_https(Duration::from_secs(240)).await;
    later_boots.push(switched_at.elapsed().as_secs_f64());
    // The trial commits only after provbox stayed up and answering for a while.
    let slots = site.slots().await;
    assert_eq!((slots["slot"].as_str(), slots["trial"].as_bool()), (Some("b"), Some(true)), "{slots}");
    machine.expect_console(
        "this root slot came up healthy and is now the active one",
        mark,
        Duration::from_secs(90),
        "the trial was not committed",
    );
    let slots = site.slots().await;
    assert_eq!((slots["slot"].as_str(), slots["trial"].as_bool()), (Some("b"), Some(false)), "{slots}");
    assert_ne!(slots["version"].as_str().unwrap(), version_a, "{slots}");
    assert_eq!(site.device_count().await, present.len(), "devices survived the update");

    // The first image's own bundle, correctly signed but an older release: refused with the
    // reason, nothing staged.
    let old = std::fs::read(env_path("PROVBOX_UPDATE_OLD")).unwrap();
    let (status, answer) = site.api("POST", "/api/v1/update", &old).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"].as_str().unwrap_or("").contains("older than the running image"), "{answer}");
    let slots = site.slots().await;
    assert_eq!((slots["slot"].as_str(), slots["trial"].as_bool()), (Some("b"), Some(false)), "{slots}");

    // A signed update whose kernel is not one: U-Boot's booti refuses it, and the boot
    // script goes back to slot b in the same boot, which says so.
    let bad_kernel = std::fs::read(env_path("PROVBOX_UPDATE_BAD_KERNEL")).unwrap();
    let mark = machine.console().len();
    let (status, answer) = site.api("POST", "/api/v1/update", &bad_kernel).await;
    assert_eq!(status, 200, "{answer}");
    machine.expect_console("provbox: root slot a does not boot", mark, REBOOT_TIME, "U-Boot did not refuse the kernel");
    machine.expect_console(
        "did not come up healthy: back on slot b",
        mark,
        REBOOT_TIME,
        "no rollback from the bad kernel",
    );
    machine.wait_https(Duration::from_secs(240)).await;
    let slots = site.slots().await;
    assert_eq!((slots["slot"].as_str(), slots["rolled_back"].as_str()), (Some("b"), Some("a")), "{slots}");

    // A signed update whose provbox never comes up: the trial times out and the board
    // goes back to slot b by itself.
    let broken = std::fs::read(env_path("PROVBOX_UPDATE_BROKEN")).unwrap();
    let mark = machine.console().len();
    let (status, answer) = site.api("POST", "/api/v1/update", &broken).await;
    assert_eq!(status, 200, "{answer}");
    machine.expect_console(
        "booting slot a (/dev/vda2), on trial",
        mark,
        REBOOT_TIME,
        "no reboot into the broken update",
    );
    machine.expect_console(
        "did not come up healthy: back on slot b",
        mark,
        Duration::from_secs(240),
        "no rollback from the broken update",
    );
    machine.wait_https(Duration::from_secs(240)).await;
    let slots = site.slots().await;
    assert_eq!((slots["slot"].as_str(), slots["rolled_back"].as_str()), (Some("b"), Some("a")), "{slots}");
    let mut browser = site.login().await;
    assert!(browser.get("/system").await.text().contains("slot a did not come up healthy; rolled back"));
    assert_eq!(site.device_count().await, present.len());

    // A factory reset from a laptop, on the healthy slot b: `provbox-factory-reset` on the
    // boot partition wipes the store, the CA and every setting; the appliance comes up as
    // new, asking for a setup code. The root slots and their A/B state stay.
    drop(machine);
    put_boot_file(&disk, "provbox-factory-reset", "");
    let machine = Machine::boot(&images, &disk, ports, ntp.address.port());
    let fresh_ca = machine.wait_https(Duration::from_secs(240)).await;
    // The banner with the code follows the listeners by a moment.
    machine.expect_console(
        "first start: setup code ",
        0,
        Duration::from_secs(30),
        "no setup code after a factory reset",
    );
    let console = machine.console();
    assert!(console.contains("provbox-factory-reset found: erasing the store"), "{console}");
    assert!(console.contains("mounted, 0 devices"), "{console}");
    assert_ne!(fresh_ca, ca, "the CA survived a factory reset");
    let code = setup_code_on(&console, 0).expect("a setup code after a factory reset");
    assert!(boot_file(&disk, "provbox-setup-code.txt").unwrap_or_default().contains(&code));
    assert_eq!(boot_file(&disk, "provbox-factory-reset"), None, "the trigger stays after it worked");
    drop(machine);

    // A root slot changed behind the updater's back (as code that got to write the device
    // would): the last byte of slot b's image flipped while the board is off, where U-Boot
    // reads nothing. The initramfs checks slot b against its signed header, refuses it, and
    // restarts the board into slot a.
    flip_byte_in_partition(&disk, 3, signed_image_size(&good) - 1);
    let machine = Machine::boot(&images, &disk, ports, ntp.address.port());
    machine.expect_console(
        "root slot b does not verify or mount: restarting into slot a",
        0,
        Duration::from_secs(120),
        "the changed slot b was not refused",
    );
    assert!(machine.console().contains("does not match its signed header (SHA-256 differs)"), "{}", machine.console());
    machine.expect_console("booting slot a (/dev/vda2)", 0, Duration::from_secs(60), "no boot of slot a");
    drop(machine);

    println!(
        "boot to HTTPS under TCG: first boot {first_boot:.1} s (makes the CA and certificate), later boots median {:.1} s over {}",
        median(&mut later_boots),
        later_boots.len()
    );
}
