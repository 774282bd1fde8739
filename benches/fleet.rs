//! The boot-storm benchmark: simulated phones, 200 at a time, each make a fresh TLS
//! handshake without resumption and fetch their common file and MAC file over keep-alive,
//! for at least 5 s a round. provbox (rendering per request) and nginx (serving the same
//! files pre-rendered, with the same two certificates and keys, RSA-2048 and ECDSA P-256,
//! one worker) take turns, the first alternating, each pinned to CPU 0 with the phones on
//! CPU 1. Twice: with phones that offer ECDSA, and with phones that offer only RSA
//! signature schemes. Reported: medians with min-max, server CPU per phone, and each
//! server's signing ceiling measured with its own crypto (ring for provbox, `openssl
//! speed` for nginx). Run through `scripts/bench-fleet`.

#[path = "../tests/fleet/mod.rs"]
mod fleet;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fleet::{Appliance, Connection, cli_ok};
use provbox::control::{self, Request, Response};

struct Options {
    concurrency: usize,
    devices: usize,
    rounds: usize,
    seconds: f64,
    /// A musl build of provbox to run beside the glibc one.
    musl: Option<std::path::PathBuf>,
}

fn options() -> Options {
    let mut options = Options { concurrency: 200, devices: 3000, rounds: 5, seconds: 5.0, musl: None };
    let args: Vec<String> = std::env::args().collect();
    for pair in args.windows(2) {
        match pair[0].as_str() {
            "--concurrency" => options.concurrency = pair[1].parse().unwrap_or(options.concurrency),
            "--devices" => options.devices = pair[1].parse().unwrap_or(options.devices),
            "--rounds" => options.rounds = pair[1].parse().unwrap_or(options.rounds),
            "--seconds" => options.seconds = pair[1].parse().unwrap_or(options.seconds),
            "--musl" => options.musl = Some(pair[1].clone().into()),
            _ => {}
        }
    }
    options.rounds = options.rounds.max(1);
    options
}

/// One phone's target: the two files under its steady path.
#[derive(Clone)]
struct Target {
    steady: String,
    mac: String,
}

/// One round against one server.
struct Storm {
    phones: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    failures: usize,
}

impl Storm {
    fn phones_per_second(&self) -> f64 {
        self.phones as f64 / self.elapsed.as_secs_f64()
    }

    fn latency_ms(&self, quantile: f64) -> f64 {
        let index = ((self.latencies.len() as f64 * quantile) as usize).min(self.latencies.len().saturating_sub(1));
        self.latencies.get(index).map_or(0.0, |latency| latency.as_secs_f64() * 1e3)
    }
}

/// Phones boot, `concurrency` at a time, walking `targets` round and round, until `length`
/// has passed; each phone is one new TLS connection and its two files.
async fn storm(
    server: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    targets: Arc<Vec<Target>>,
    concurrency: usize,
    length: Duration,
) -> Storm {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + length;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (config, targets, next) = (config.clone(), targets.clone(), next.clone());
        tasks.spawn(async move {
            let (mut latencies, mut failures) = (Vec::new(), 0);
            while Instant::now() < deadline {
                let index = next.fetch_add(1, Ordering::Relaxed) % targets.len();
                match boot(server, config.clone(), &targets[index], index).await {
                    Some(latency) => latencies.push(latency),
                    None => failures += 1,
                }
            }
            (latencies, failures)
        });
    }
    let mut storm = Storm { phones: 0, elapsed: Duration::ZERO, latencies: Vec::new(), failures: 0 };
    while let Some(Ok((latencies, failures))) = tasks.join_next().await {
        storm.phones += latencies.len();
        storm.latencies.extend(latencies);
        storm.failures += failures;
    }
    storm.elapsed = started.elapsed();
    storm.latencies.sort();
    storm
}

/// One phone's boot: a new connection, its common file and its MAC file. Phone `index`
/// has its own loopback address, as each phone on a LAN has its own (provbox caps the
/// connections of one address).
async fn boot(
    server: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    target: &Target,
    index: usize,
) -> Option<Duration> {
    let begin = Instant::now();
    let ua = format!("Yealink SIP-T54W 96.86.0.15 {}", colon(&target.mac));
    let local = std::net::Ipv4Addr::new(127, 1, (index >> 8) as u8, index as u8);
    let mut connection = Connection::open(config, server, Some(local.into())).await.ok()?;
    for file in ["y000000000096.cfg".to_string(), format!("{}.cfg", target.mac)] {
        let response = connection.get(&format!("{}{file}", target.steady), &[("User-Agent", &ua)]).await.ok()?;
        if response.status != 200 || response.body.is_empty() {
            return None;
        }
    }
    Some(begin.elapsed())
}

fn colon(mac: &str) -> String {
    mac.as_bytes().chunks(2).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join(":")
}

/// A /proc/<pid>/status field in KiB.
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Resets the peak-RSS mark of `pid` (Linux 4.0 and later).
fn reset_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// CPU seconds (user and system) `pids` have used so far.
fn cpu_seconds(pids: &[u32]) -> f64 {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    let used = |pid: &u32| -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The fields after the command name, which is in parentheses and may hold spaces:
        // utime and stime are the 12th and 13th of them.
        let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
        let field = |index: usize| fields.get(index).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
        (field(11) + field(12)) / ticks
    };
    pids.iter().map(used).sum()
}

fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// nginx, stopped with its workers when dropped.
struct Nginx {
    child: Child,
    port: u16,
    workers: Vec<u32>,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        // SIGTERM: the master stops its workers, then itself (a SIGKILL would leave them).
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for worker in &self.workers {
            let _ = kill(Pid::from_raw(*worker as i32), Signal::SIGKILL);
        }
    }
}

/// nginx with one worker (provbox serves from one core too), both server certificates of
/// `tls` (it picks per client, as provbox does), and `root` as its files.
fn start_nginx(dir: &Path, tls: &Path, root: &Path) -> Nginx {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let user = if nix::unistd::geteuid().is_root() { "user root;" } else { "" };
    let temp = dir.join("temp");
    std::fs::create_dir_all(&temp).unwrap();
    let config = format!(
        "{user}\nworker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n access_log off;\n default_type text/plain;\n keepalive_requests 1000;\n\
         client_body_temp_path {temp}; proxy_temp_path {temp}; fastcgi_temp_path {temp}; uwsgi_temp_path {temp}; scgi_temp_path {temp};\n\
         server {{\n  listen 127.0.0.1:{port} ssl;\n\
           ssl_certificate {tls}/server.crt;\n  ssl_certificate_key {tls}/server.key;\n\
           ssl_certificate {tls}/server-ecdsa.crt;\n  ssl_certificate_key {tls}/server-ecdsa.key;\n\
           ssl_protocols TLSv1.2 TLSv1.3;\n  ssl_session_cache off;\n  ssl_session_tickets off;\n  root {root};\n }}\n}}\n",
        dir = dir.display(),
        temp = temp.display(),
        tls = tls.display(),
        root = root.display(),
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, config).unwrap();
    let child = Command::new("nginx")
        .args(["-e", "stderr", "-g", "daemon off;", "-c"])
        .arg(&path)
        .stdout(Stdio::null())
        .spawn()
        .expect("nginx is installed (scripts/bench-fleet installs it)");
    let mut nginx = Nginx { child, port, workers: Vec::new() };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() || nginx.workers.is_empty() {
        assert!(Instant::now() < deadline, "nginx did not start; see {}", dir.join("error.log").display());
        std::thread::sleep(Duration::from_millis(50));
        nginx.workers = children_of(nginx.child.id());
    }
    nginx
}

/// Handshake signatures per second on this core with ring, using the key in `key_path`
/// (RSA-2048 PSS as TLS 1.3 uses it, or ECDSA P-256).
fn ring_signatures_per_second(key_path: &Path) -> f64 {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let PrivateKeyDer::Pkcs8(der) = PrivateKeyDer::from_pem_file(key_path).unwrap() else { panic!("PKCS#8 key") };
    let rng = ring::rand::SystemRandom::new();
    let message = b"tls 1.3 transcript hash stand-in";
    let started = Instant::now();
    let mut count = 0u32;
    if let Ok(key) = ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()) {
        let mut signature = vec![0; key.public().modulus_len()];
        while started.elapsed() < Duration::from_secs(3) {
            key.sign(&ring::signature::RSA_PSS_SHA256, &rng, message, &mut signature).unwrap();
            count += 1;
        }
    } else {
        let key = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            der.secret_pkcs8_der(),
            &rng,
        )
        .unwrap();
        while started.elapsed() < Duration::from_secs(3) {
            key.sign(&rng, message).unwrap();
            count += 1;
        }
    }
    f64::from(count) / started.elapsed().as_secs_f64()
}

/// Signatures per second on this core with OpenSSL, nginx's crypto: `openssl speed -elapsed`
/// for `algorithm` (`rsa2048`, `ecdsap256`), its sign/s column.
fn openssl_signatures_per_second(algorithm: &str) -> f64 {
    let output = Command::new("openssl")
        .args(["speed", "-elapsed", "-seconds", "3", algorithm])
        .stderr(Stdio::null())
        .output()
        .expect("openssl runs");
    let text = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = text.lines().collect();
    let found = lines.iter().rposition(|line| line.contains("rsa 2048 bits") || line.contains("ecdsa (nistp256)"));
    let header = found.and_then(|at| lines[..at].iter().rev().find(|line| line.contains("sign/s")));
    let (Some(at), Some(header)) = (found, header) else { panic!("no result in `openssl speed {algorithm}`:\n{text}") };
    // The numbers end the line in the header's column order (OpenSSL 3.0: sign verify
    // sign/s verify/s; later versions add encryption columns for RSA).
    let columns: Vec<&str> = header.split_whitespace().collect();
    let from_end = columns.len() - columns.iter().position(|column| *column == "sign/s").unwrap_or(0);
    let numbers: Vec<f64> = lines[at].split_whitespace().filter_map(|word| word.parse().ok()).collect();
    numbers[numbers.len() - from_end]
}

/// Pins this process (and children spawned after) to `cpu`, when the machine has it.
fn pin_to(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

/// The median, the minimum and the maximum.
fn spread(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (values[values.len() / 2], values[0], values[values.len() - 1])
}

/// A server certificate verifier that offers only RSA signature schemes, as a phone whose
/// TLS stack knows no ECDSA does; verification itself is webpki's.
#[derive(Debug)]
struct RsaOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for RsaOnly {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        signature: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, signature)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        signature: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, signature)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        use rustls::SignatureScheme::{
            RSA_PKCS1_SHA256, RSA_PKCS1_SHA384, RSA_PKCS1_SHA512, RSA_PSS_SHA256, RSA_PSS_SHA384, RSA_PSS_SHA512,
        };
        let rsa = |scheme: &rustls::SignatureScheme| {
            [RSA_PKCS1_SHA256, RSA_PKCS1_SHA384, RSA_PKCS1_SHA512, RSA_PSS_SHA256, RSA_PSS_SHA384, RSA_PSS_SHA512]
                .contains(scheme)
        };
        self.0.supported_verify_schemes().into_iter().filter(rsa).collect()
    }
}

/// Phones' TLS: trusting `roots`, no resumption, every scheme or `rsa_only`.
fn phone_config(roots: &[rustls::pki_types::CertificateDer<'static>], rsa_only: bool) -> Arc<rustls::ClientConfig> {
    let mut config = (*fleet::client_config_trusting(roots, None)).clone();
    config.resumption = rustls::client::Resumption::disabled();
    if rsa_only {
        let mut store = rustls::RootCertStore::empty();
        for root in roots {
            store.add(root.clone()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let webpki =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider).build().unwrap();
        config.dangerous().set_certificate_verifier(Arc::new(RsaOnly(webpki)));
    }
    Arc::new(config)
}

/// What one server did over the rounds.
#[derive(Default)]
struct Tally {
    phones_per_second: Vec<f64>,
    cpu_ms_per_phone: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    peak_mb: Vec<f64>,
}

impl Tally {
    /// Runs one round against `server`, whose processes are `pids`.
    fn round(
        &mut self,
        runtime: &tokio::runtime::Runtime,
        run: impl std::future::Future<Output = Storm>,
        pids: &[u32],
    ) {
        for pid in pids {
            reset_peak(*pid);
        }
        let cpu_before = cpu_seconds(pids);
        let storm = runtime.block_on(run);
        let cpu = cpu_seconds(pids) - cpu_before;
        assert_eq!(storm.failures, 0, "failed phones");
        assert!(storm.phones > 0, "no phone booted in a round");
        self.phones_per_second.push(storm.phones_per_second());
        self.cpu_ms_per_phone.push(cpu * 1e3 / storm.phones as f64);
        self.p50.push(storm.latency_ms(0.50));
        self.p99.push(storm.latency_ms(0.99));
        self.peak_mb.push(pids.iter().map(|pid| proc_status_kib(*pid, "VmHWM:")).sum::<u64>() as f64 / 1024.0);
    }
}

/// One server under test.
struct Contender {
    name: &'static str,
    address: SocketAddr,
    pids: Vec<u32>,
}

fn main() {
    let options = options();
    // Servers on CPU 0, the simulated phones on CPU 1: the client never steals server time,
    // and each server's ceiling is one core's worth of signatures.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    pin_to(0);
    // Every simulated phone is new to the appliance: the cap on strangers' new connections
    // (100 a second by default) would measure itself, not the TLS ceiling this compares.
    let flags = ["--max-connections", "4096", "--strangers-per-second", "1000000", "--key-type", "dual"];
    let appliance = Appliance::start_with(&flags);
    let scratch = tempfile::tempdir().unwrap();

    let mut csv = String::from("mac,vendor,model,extension,name\n");
    for i in 0..options.devices {
        csv.push_str(&format!("0015650{i:05x},yealink,T54W,{},Desk {i}\n", 1000 + i));
    }
    let csv_path = scratch.path().join("devices.csv");
    std::fs::write(&csv_path, csv).unwrap();
    cli_ok(&appliance.data, &["device", "import", csv_path.to_str().unwrap()]);
    let listed: serde_json::Value =
        serde_json::from_str(&cli_ok(&appliance.data, &["device", "list", "--json"])).unwrap();
    let targets: Vec<Target> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|d| Target {
            steady: Appliance::path_of(d["steady_url"].as_str().unwrap()),
            mac: d["mac"].as_str().unwrap().to_string(),
        })
        .collect();
    // Idle memory as after a reboot: restart on the filled store, then let it settle. The
    // musl build, when asked for, serves a copy of the same data directory.
    let (_, data, dir) = appliance.stop();
    let musl_data = scratch.path().join("musl-data");
    if options.musl.is_some() {
        let copied = Command::new("cp").arg("-a").arg(&data).arg(&musl_data).status().unwrap();
        assert!(copied.success(), "copying the data directory");
    }
    pin_to(0);
    let appliance = Appliance::start_on(data, dir, &flags);
    let musl = options.musl.as_ref().map(|exe| Appliance::start_binary_on(exe, musl_data.clone(), None, &flags));
    std::thread::sleep(Duration::from_secs(6)); // past one contact flush
    let mut idle = vec![("provbox (glibc)", proc_status_kib(appliance.pid(), "VmRSS:"))];
    if let Some(musl) = &musl {
        idle.push(("provbox (musl)", proc_status_kib(musl.pid(), "VmRSS:")));
    }

    // nginx serves the same files, rendered once by provbox, under the same paths.
    let root = scratch.path().join("root");
    for target in &targets {
        let dir = root.join(target.steady.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).unwrap();
        for file in ["y000000000096.cfg".to_string(), format!("{}.cfg", target.mac)] {
            let request = Request::Render { mac: target.mac.clone(), file: file.clone(), reveal: true };
            let Ok(Some(Response::Ok { result })) = control::call(&appliance.data, &request) else { panic!("render") };
            // A render answers with the body and the locale warnings.
            std::fs::write(dir.join(&file), result["body"].as_str().unwrap()).unwrap();
        }
    }
    let tls = appliance.data.join("tls");
    let nginx = start_nginx(scratch.path(), &tls, &root);
    // Each server's signing ceiling on the servers' core, with its own crypto.
    let ceilings = [
        (
            "ECDSA P-256",
            ring_signatures_per_second(&tls.join("server-ecdsa.key")),
            openssl_signatures_per_second("ecdsap256"),
        ),
        ("RSA-2048", ring_signatures_per_second(&tls.join("server.key")), openssl_signatures_per_second("rsa2048")),
    ];
    if cores >= 2 {
        pin_to(1);
    }
    let mut contenders =
        vec![Contender { name: "provbox (glibc)", address: appliance.https, pids: vec![appliance.pid()] }];
    if let Some(musl) = &musl {
        contenders.push(Contender { name: "provbox (musl)", address: musl.https, pids: vec![musl.pid()] });
    }
    let mut nginx_pids = vec![nginx.child.id()];
    nginx_pids.extend(&nginx.workers);
    contenders.push(Contender { name: "nginx", address: ([127, 0, 0, 1], nginx.port).into(), pids: nginx_pids });
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let targets = Arc::new(targets);
    let length = Duration::from_secs_f64(options.seconds);

    println!(
        "## Boot storm: {} phones at a time, {} devices in the store, {} rounds of {} s per server, the first rotating (medians, min-max)",
        options.concurrency, options.devices, options.rounds, options.seconds
    );
    for ((label, ring_ceiling, openssl_ceiling), rsa_only) in ceilings.into_iter().zip([false, true]) {
        let config = phone_config(&appliance.ca(), rsa_only);
        let mut tallies: Vec<Tally> = contenders.iter().map(|_| Tally::default()).collect();
        for round in 0..options.rounds {
            for turn in 0..contenders.len() {
                let index = (round + turn) % contenders.len();
                let contender = &contenders[index];
                let run = storm(contender.address, config.clone(), targets.clone(), options.concurrency, length);
                tallies[index].round(&runtime, run, &contender.pids);
            }
        }
        let phones = if rsa_only { "phones offering RSA only" } else { "phones offering ECDSA" };
        let names: Vec<&str> = contenders.iter().map(|c| c.name).collect();
        println!();
        println!("### {phones}: {label} certificate");
        println!();
        println!("| | {} | ratios |", names.join(" | "));
        println!("|---|{}---|", "---|".repeat(names.len()));
        let row =
            |what: &str, cells: Vec<String>, ratio: String| println!("| {what} | {} | {ratio} |", cells.join(" | "));
        let mut throughput = Vec::new();
        let mut cells = Vec::new();
        for tally in &mut tallies {
            let (median, min, max) = spread(&mut tally.phones_per_second);
            throughput.push(median);
            cells.push(format!("{median:.0} ({min:.0}-{max:.0})"));
        }
        row("phones/s (handshake + 2 files)", cells, ratios(&names, &throughput));
        let cpu: Vec<f64> = tallies.iter_mut().map(|t| spread(&mut t.cpu_ms_per_phone).0).collect();
        row("server CPU per phone", cpu.iter().map(|c| format!("{c:.3} ms")).collect(), ratios(&names, &cpu));
        let latency: Vec<String> = tallies
            .iter_mut()
            .map(|t| format!("{:.1} / {:.1} ms", spread(&mut t.p50).0, spread(&mut t.p99).0))
            .collect();
        row("p50 / p99 boot", latency, String::new());
        let peaks: Vec<f64> = tallies.iter_mut().map(|t| spread(&mut t.peak_mb).0).collect();
        row("peak RSS", peaks.iter().map(|p| format!("{p:.1} MB")).collect(), ratios(&names, &peaks));
        let ceiling = |name: &str| if name == "nginx" { openssl_ceiling } else { ring_ceiling };
        row(
            &format!("{label} signing ceiling, one core"),
            names.iter().map(|name| format!("{:.0}/s", ceiling(name))).collect(),
            "ring for provbox, OpenSSL for nginx".into(),
        );
        row(
            "achieved / own ceiling",
            names.iter().zip(&throughput).map(|(name, rate)| format!("{:.0}%", 100.0 * rate / ceiling(name))).collect(),
            String::new(),
        );
    }
    println!();
    for (name, rss) in idle {
        println!(
            "- idle RSS of {name} with {} devices, after a restart: {:.1} MB",
            options.devices,
            rss as f64 / 1024.0
        );
    }
    println!(
        "- servers pinned to CPU 0 of {cores}, the phones to the rest; nginx 1 worker, provbox 1 tokio worker (its affinity)"
    );
    drop(nginx);
    if let Some(musl) = musl {
        let _ = musl.stop();
    }
    let _ = appliance.stop();
}

/// The ratios worth reading from per-contender `values`: glibc provbox against nginx, and
/// musl provbox against glibc provbox.
fn ratios(names: &[&str], values: &[f64]) -> String {
    let of = |name: &str| names.iter().position(|n| *n == name).map(|index| values[index]);
    let mut said = Vec::new();
    if let (Some(glibc), Some(nginx)) = (of("provbox (glibc)"), of("nginx")) {
        said.push(format!("glibc/nginx {:.2}x", glibc / nginx));
    }
    if let (Some(musl), Some(glibc)) = (of("provbox (musl)"), of("provbox (glibc)")) {
        said.push(format!("musl/glibc {:.2}x", musl / glibc));
    }
    said.join(", ")
}
