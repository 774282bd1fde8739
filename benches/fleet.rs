//! The boot-storm benchmark: N phones (default 1,000, 200 at a time) each make a fresh TLS
//! handshake without resumption and fetch their common file and MAC file over keep-alive.
//! provbox (rendering per request) and nginx (serving the same files pre-rendered, with the
//! same certificate and key) are run alternately in one process run; medians are reported
//! with the RSA-2048 signing ceiling measured with ring. Run through `scripts/bench-fleet`.

#[path = "../tests/fleet/mod.rs"]
mod fleet;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet::{Appliance, Connection, cli_ok};
use provbox::control::{self, Request, Response};

struct Options {
    phones: usize,
    concurrency: usize,
    devices: usize,
    rounds: usize,
    key_type: String,
}

fn options() -> Options {
    let mut options = Options { phones: 1000, concurrency: 200, devices: 3000, rounds: 3, key_type: "rsa2048".into() };
    let args: Vec<String> = std::env::args().collect();
    for pair in args.windows(2) {
        let value = pair[1].parse().ok();
        match (pair[0].as_str(), value) {
            ("--phones", Some(v)) => options.phones = v,
            ("--concurrency", Some(v)) => options.concurrency = v,
            ("--devices", Some(v)) => options.devices = v,
            ("--rounds", Some(v)) => options.rounds = v,
            ("--key-type", _) => options.key_type = pair[1].clone(),
            _ => {}
        }
    }
    options.devices = options.devices.max(options.phones);
    options
}

/// One phone's target: the two files under its steady path.
#[derive(Clone)]
struct Target {
    steady: String,
    mac: String,
}

struct Storm {
    phones_per_second: f64,
    p50: Duration,
    p99: Duration,
    failures: usize,
}

async fn storm(server: SocketAddr, config: Arc<rustls::ClientConfig>, targets: &[Target], concurrency: usize) -> Storm {
    let gate = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for target in targets.iter().cloned() {
        let gate = gate.clone();
        let config = config.clone();
        tasks.spawn(async move {
            let _slot = gate.acquire_owned().await.ok()?;
            let begin = Instant::now();
            let ua = format!("Yealink SIP-T54W 96.86.0.15 {}", colon(&target.mac));
            let mut connection = Connection::open(config, server, None).await.ok()?;
            for file in ["y000000000096.cfg".to_string(), format!("{}.cfg", target.mac)] {
                let response =
                    connection.get(&format!("{}{file}", target.steady), &[("User-Agent", &ua)]).await.ok()?;
                if response.status != 200 || response.body.is_empty() {
                    return None;
                }
            }
            Some(begin.elapsed())
        });
    }
    let mut latencies = Vec::new();
    let mut failures = 0;
    while let Some(result) = tasks.join_next().await {
        match result.ok().flatten() {
            Some(latency) => latencies.push(latency),
            None => failures += 1,
        }
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let at =
        |q: f64| latencies.get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1))).copied();
    Storm {
        phones_per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.50).unwrap_or_default(),
        p99: at(0.99).unwrap_or_default(),
        failures,
    }
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

/// Resets the peak-RSS mark of `pid` (Linux ≥ 4.0).
fn reset_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

struct Nginx {
    child: Child,
    port: u16,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_nginx(dir: &Path, tls: &Path, root: &Path) -> Nginx {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let user = if nix::unistd::geteuid().is_root() { "user root;" } else { "" };
    let temp = dir.join("temp");
    std::fs::create_dir_all(&temp).unwrap();
    let config = format!(
        "{user}\nworker_processes auto;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n access_log off;\n default_type text/plain;\n keepalive_requests 1000;\n\
         client_body_temp_path {temp}; proxy_temp_path {temp}; fastcgi_temp_path {temp}; uwsgi_temp_path {temp}; scgi_temp_path {temp};\n\
         server {{\n  listen 127.0.0.1:{port} ssl;\n  ssl_certificate {tls}/server.crt;\n  ssl_certificate_key {tls}/server.key;\n\
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
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nginx did not start; see {}", dir.join("error.log").display());
        std::thread::sleep(Duration::from_millis(50));
    }
    Nginx { child, port }
}

/// Handshake signatures per second on one core with ring, using the server's own key
/// (RSA-2048 PSS as TLS 1.3 uses it, or ECDSA P-256).
fn signatures_per_second(key_path: &Path) -> (f64, &'static str) {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let PrivateKeyDer::Pkcs8(der) = PrivateKeyDer::from_pem_file(key_path).unwrap() else { panic!("PKCS#8 key") };
    let rng = ring::rand::SystemRandom::new();
    let message = b"tls 1.3 transcript hash stand-in";
    let started = Instant::now();
    let mut count = 0u32;
    let algorithm = if let Ok(key) = ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()) {
        let mut signature = vec![0; key.public().modulus_len()];
        while started.elapsed() < Duration::from_secs(2) {
            key.sign(&ring::signature::RSA_PSS_SHA256, &rng, message, &mut signature).unwrap();
            count += 1;
        }
        "RSA-2048"
    } else {
        let key = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            der.secret_pkcs8_der(),
            &rng,
        )
        .unwrap();
        while started.elapsed() < Duration::from_secs(2) {
            key.sign(&rng, message).unwrap();
            count += 1;
        }
        "ECDSA P-256"
    };
    (f64::from(count) / started.elapsed().as_secs_f64(), algorithm)
}

/// Pins this process (and children spawned after) to `cpu`, when the machine has it.
fn pin_to(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let options = options();
    // Servers on CPU 0, the simulated phones on CPU 1: the client never steals server time,
    // and the ceiling is one core's worth of signatures.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let server_cores = if cores >= 2 { 1 } else { cores };
    pin_to(0);
    // Every simulated phone is new to the appliance: the cap on strangers' new connections
    // (100 a second by default) would measure itself, not the TLS ceiling this compares.
    let flags = ["--max-connections", "4096", "--strangers-per-second", "1000000", "--key-type", &options.key_type];
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
        .take(options.phones)
        .map(|d| Target {
            steady: Appliance::path_of(d["steady_url"].as_str().unwrap()),
            mac: d["mac"].as_str().unwrap().to_string(),
        })
        .collect();
    // Idle memory as after a reboot: restart on the filled store, then let it settle.
    let (_, data, dir) = appliance.stop();
    pin_to(0);
    let appliance = Appliance::start_on(data, dir, &flags);
    let pid = appliance.pid();
    std::thread::sleep(Duration::from_secs(6)); // past one contact flush
    let idle_rss = proc_status_kib(pid, "VmRSS:");

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
    pin_to(0);
    let nginx = start_nginx(scratch.path(), &appliance.data.join("tls"), &root);
    if cores >= 2 {
        pin_to(1);
    }
    let nginx_address: SocketAddr = ([127, 0, 0, 1], nginx.port).into();

    let mut config = (*fleet::client_config_trusting(&appliance.ca(), None)).clone();
    config.resumption = rustls::client::Resumption::disabled();
    let config = Arc::new(config);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (mut ours, mut theirs, mut peaks, mut nginx_peaks) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut our_p50, mut our_p99, mut their_p50, mut their_p99) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let workers = children_of(nginx.child.id());
    for round in 0..options.rounds {
        reset_peak(pid);
        let result = runtime.block_on(storm(appliance.https, config.clone(), &targets, options.concurrency));
        peaks.push(proc_status_kib(pid, "VmHWM:") as f64);
        assert_eq!(result.failures, 0, "provbox: failed phones in round {round}");
        ours.push(result.phones_per_second);
        our_p50.push(result.p50.as_secs_f64() * 1e3);
        our_p99.push(result.p99.as_secs_f64() * 1e3);
        for worker in &workers {
            reset_peak(*worker);
        }
        let result = runtime.block_on(storm(nginx_address, config.clone(), &targets, options.concurrency));
        nginx_peaks.push(workers.iter().map(|w| proc_status_kib(*w, "VmHWM:")).sum::<u64>() as f64);
        assert_eq!(result.failures, 0, "nginx: failed phones in round {round}");
        theirs.push(result.phones_per_second);
        their_p50.push(result.p50.as_secs_f64() * 1e3);
        their_p99.push(result.p99.as_secs_f64() * 1e3);
    }
    let (per_core, algorithm) = signatures_per_second(&appliance.data.join("tls/server.key"));
    let ceiling = per_core * server_cores as f64;
    let (ours, theirs) = (median(&mut ours), median(&mut theirs));

    println!(
        "## Boot storm, {} keys: {} phones, {} at a time, {} devices in the store, {} rounds (medians)",
        options.key_type, options.phones, options.concurrency, options.devices, options.rounds
    );
    println!();
    println!("| | provbox | nginx | ratio |");
    println!("|---|---|---|---|");
    println!("| phones/s (handshake + 2 files) | {ours:.0} | {theirs:.0} | {:.2}x |", ours / theirs);
    println!("| p50 boot latency | {:.1} ms | {:.1} ms | |", median(&mut our_p50), median(&mut their_p50));
    println!("| p99 boot latency | {:.1} ms | {:.1} ms | |", median(&mut our_p99), median(&mut their_p99));
    println!(
        "| peak RSS during storm | {:.1} MB | {:.1} MB (workers) | |",
        median(&mut peaks) / 1024.0,
        median(&mut nginx_peaks) / 1024.0
    );
    println!();
    println!("- idle RSS with {} devices: {:.1} MB", options.devices, idle_rss as f64 / 1024.0);
    println!("- servers pinned to {server_cores} of {cores} cores, the phones to the rest");
    println!("- {algorithm} ceiling (ring): {per_core:.0} signatures/s/core x {server_cores} = {ceiling:.0}/s");
    println!("- achieved/ceiling: provbox {:.0}%, nginx {:.0}%", 100.0 * ours / ceiling, 100.0 * theirs / ceiling);
    drop(nginx);
    let _ = appliance.stop();
}
