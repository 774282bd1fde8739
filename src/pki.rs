//! The appliance's TLS identity: a local CA created on first start, server certificates it
//! signs for the appliance's names and addresses (by default two, RSA-2048 and ECDSA P-256,
//! chosen per handshake by what the client offers), and operator-supplied chains that
//! override them and are reloaded on SIGHUP.
//!
//! Files live in `<data>/tls/`: `ca.crt`, `ca.key`, `server.crt`, `server.key`, with
//! `--key-type dual` `server-ecdsa.crt` and `server-ecdsa.key`, `server.json` (what the
//! server certificates cover) and, when the operator supplies them, `operator.crt` (PEM
//! chain, leaf first) and `operator.key`, and a second pair of the other key kind in
//! `operator-ecdsa.crt` and `operator-ecdsa.key` or the reverse. Keys are written mode 0600.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};

/// Years the local CA is valid.
const CA_YEARS: u64 = 20;
/// Days a server certificate is valid from now: with `not_before` a day back, 398 days in
/// all, the most Apple's clients take (and the CA/Browser Forum's rule since 2020). It is
/// reissued, at start or while running, when fewer than [`RENEW_DAYS`] remain.
const SERVER_DAYS: u64 = 397;
/// Remaining validity below which the server certificate is reissued.
const RENEW_DAYS: u64 = 30;
/// TLS sessions remembered for resumption by session ID.
const SESSION_CACHE_ENTRIES: usize = 4096;

const DAY: Duration = Duration::from_secs(86_400);

/// The key algorithms of generated certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyType {
    /// An RSA-2048 CA and two server certificates, ECDSA P-256 for the clients that offer
    /// it (a faster handshake) and RSA-2048 for the rest.
    Dual,
    /// RSA-2048 with SHA-256 only: what every phone understands.
    Rsa2048,
    /// ECDSA P-256 only (the CA too): for fleets known to support it.
    EcdsaP256,
}

impl KeyType {
    /// The key kinds of the server certificates, the first in `server.crt`.
    fn server_kinds(self) -> &'static [KeyKind] {
        match self {
            KeyType::Dual => &[KeyKind::Rsa, KeyKind::Ecdsa],
            KeyType::Rsa2048 => &[KeyKind::Rsa],
            KeyType::EcdsaP256 => &[KeyKind::Ecdsa],
        }
    }
}

/// One key algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    Ecdsa,
}

/// The generated server certificates' files, by kind: (certificate, key). A single-kind
/// appliance keeps its one certificate in the first pair.
pub const SERVER_PAIRS: [(&str, &str); 2] = [("server.crt", "server.key"), ("server-ecdsa.crt", "server-ecdsa.key")];
/// What the generated server certificates cover.
pub const SERVER_COVERAGE: &str = "server.json";
/// The operator's certificate files: (certificate, key), one pair per key kind.
pub const OPERATOR_PAIRS: [(&str, &str); 2] =
    [("operator.crt", "operator.key"), ("operator-ecdsa.crt", "operator-ecdsa.key")];

/// Why the TLS identity could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Certificate or key generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(String),
    /// A PEM file did not hold a usable certificate chain or key.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS library refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// What the current server certificate was issued for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ServerCoverage {
    names: Vec<String>,
    ips: Vec<IpAddr>,
    not_after: u64,
    key_type: String,
}

/// The appliance's TLS files.
pub struct Pki {
    dir: PathBuf,
    provider: Arc<CryptoProvider>,
    resolver: Arc<Resolver>,
    /// The CA certificate, PEM; replaced when a backup is restored.
    ca_pem: ArcSwap<String>,
    key_type: KeyType,
    /// The names and addresses the server certificate was last made to cover.
    coverage: std::sync::Mutex<(Vec<String>, Vec<IpAddr>)>,
    /// Held while an operator certificate is installed: one install at a time.
    installing: std::sync::Mutex<()>,
}

impl Pki {
    /// Loads the TLS identity from `<data>/tls`, creating the CA and server certificate if
    /// missing, and reissuing the server certificate when it no longer covers `names` and
    /// `ips` or is about to expire.
    pub fn ensure(data_dir: &Path, key_type: KeyType, names: &[String], ips: &[IpAddr]) -> Result<Pki, PkiError> {
        let dir = data_dir.join("tls");
        create_private_dir(&dir)?;
        let ca_cert_path = dir.join("ca.crt");
        let ca_key_path = dir.join("ca.key");
        if !ca_cert_path.exists() || !ca_key_path.exists() {
            let (cert, key) = new_ca(key_type)?;
            write_file(&ca_key_path, key.as_bytes(), 0o600)?;
            write_file(&ca_cert_path, cert.as_bytes(), 0o644)?;
            tracing::info!(path = %ca_cert_path.display(), "created the local CA");
        }
        let ca_pem = read_string(&ca_cert_path)?;
        warn_of_ca_kind(&read_string(&ca_key_path)?, key_type);
        issue_if_needed(&dir, &ca_pem, key_type, names, ips)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let current = load_served(&dir, &provider, key_type, Broken::PassOver)?;
        let resolver = Arc::new(Resolver { served: ArcSwap::new(current), suites: provider.cipher_suites.clone() });
        Ok(Pki {
            dir,
            provider,
            resolver,
            ca_pem: ArcSwap::from_pointee(ca_pem),
            key_type,
            coverage: std::sync::Mutex::new((names.to_vec(), ips.to_vec())),
            installing: std::sync::Mutex::new(()),
        })
    }

    /// Makes the generated server certificate cover `names` and `ips` (the LAN address
    /// changed): reissued and served from the next handshake if it did not; true then. An
    /// operator certificate in use stays in use.
    pub fn cover(&self, names: &[String], ips: &[IpAddr]) -> Result<bool, PkiError> {
        *self.coverage.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = (names.to_vec(), ips.to_vec());
        if !issue_if_needed(&self.dir, &self.ca_pem(), self.key_type, names, ips)? {
            return Ok(false);
        }
        self.reload()?;
        Ok(true)
    }

    /// Reissues the generated server certificate, for the names and addresses it covers,
    /// when fewer than [`RENEW_DAYS`] remain; true if it did. Cheap when nothing is due (one
    /// small file read), so it may be asked often.
    pub fn renew_if_due(&self) -> Result<bool, PkiError> {
        let (names, ips) = self.coverage.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        self.cover(&names, &ips)
    }

    /// Takes up the CA a restored backup wrote to `<data>/tls`: serves it, and a server
    /// certificate from it that covers this board's names and addresses (the restore
    /// removed the old server certificate, so one is issued).
    pub fn adopt_restored(&self) -> Result<(), PkiError> {
        let ca_pem = read_string(&self.dir.join("ca.crt"))?;
        let (names, ips) = self.coverage.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        issue_if_needed(&self.dir, &ca_pem, self.key_type, &names, &ips)?;
        self.ca_pem.store(Arc::new(ca_pem));
        self.reload()
    }

    /// The local CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        self.ca_pem.load().as_ref().clone()
    }

    /// Whether an operator certificate is in use.
    pub fn uses_operator_certificate(&self) -> bool {
        OPERATOR_PAIRS.iter().any(|(cert, _)| self.dir.join(cert).exists())
    }

    /// Reloads the served certificates: the operator's if any, else the generated ones. On
    /// error the certificates in use stay.
    pub fn reload(&self) -> Result<(), PkiError> {
        let served = load_served(&self.dir, &self.provider, self.key_type, Broken::Refuse)?;
        self.resolver.served.store(served);
        Ok(())
    }

    /// Installs an operator certificate chain (PEM, leaf first) and its key after checking
    /// that they parse and match; serves it from the next handshake. It replaces the
    /// operator's certificate of the same key kind and keeps a working one of the other
    /// kind, so an operator may serve an RSA and an ECDSA certificate side by side. A
    /// refused pair changes nothing.
    pub fn install_operator(&self, chain_pem: &str, key_pem: &str) -> Result<(), PkiError> {
        let _one_at_a_time = self.installing.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (cert_path, key_path) = (self.dir.join(OPERATOR_PAIRS[0].0), self.dir.join(OPERATOR_PAIRS[0].1));
        let pem_error = |path: &Path, reason: String| PkiError::Pem { path: path.to_path_buf(), reason };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| pem_error(&cert_path, e.to_string()))?;
        if chain.is_empty() {
            return Err(pem_error(&cert_path, "no certificate in it".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| pem_error(&key_path, e.to_string()))?;
        let certified = CertifiedKey::from_der(chain, key, &self.provider)
            .map_err(|e| pem_error(&key_path, format!("does not match the certificate: {e}")))?;
        let kind = kind_of(&certified).ok_or_else(|| pem_error(&key_path, "neither an RSA nor an ECDSA key".into()))?;
        // The pair goes over the operator's one of its own kind, else into the pair of files
        // that holds nothing that works; a working pair of the other kind stays served.
        let loaded: Vec<Option<CertifiedKey>> = OPERATOR_PAIRS
            .iter()
            .map(|(cert, key)| load_pair(&self.dir.join(cert), &self.dir.join(key), &self.provider).ok())
            .collect();
        let kinds: Vec<Option<KeyKind>> = loaded.iter().map(|pair| pair.as_ref().and_then(kind_of)).collect();
        let slot = kinds.iter().position(|k| *k == Some(kind)).or_else(|| kinds.iter().position(Option::is_none));
        let slot = slot.unwrap_or(0);
        let (cert, key) = OPERATOR_PAIRS[slot];
        // The certificate last: a cut in between leaves a key without a certificate, which
        // is ignored, and the pair of files as it was otherwise.
        remove_if_there(&self.dir.join(cert))?;
        write_file(&self.dir.join(key), key_pem.as_bytes(), 0o600)?;
        write_file(&self.dir.join(cert), chain_pem.as_bytes(), 0o644)?;
        let mut served: Vec<Arc<CertifiedKey>> = vec![Arc::new(certified)];
        served.extend(
            loaded
                .into_iter()
                .enumerate()
                .filter(|(index, _)| *index != slot)
                .filter_map(|(_, pair)| pair)
                .map(Arc::new),
        );
        self.resolver.served.store(Served::ordered(served));
        Ok(())
    }

    /// A rustls server configuration serving the current certificate, with TLS 1.2 and 1.3,
    /// session-ID and ticket resumption, and HTTP/1.1 as the only protocol.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(self.resolver.clone());
        config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
        config.ticketer = rustls::crypto::ring::Ticketer::new()?;
        // One TLS 1.3 ticket per connection is enough for a phone's next resync.
        config.send_tls13_tickets = 1;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// Checks that `key_pem` is the private key of the first certificate in `cert_pem` (a
/// restored backup's pair); `Err` says why not.
pub fn check_pair(cert_pem: &[u8], key_pem: &[u8]) -> Result<(), String> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert_pem).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    if chain.is_empty() {
        return Err("no certificate in it".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| e.to_string())?;
    CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider())
        .map(|_| ())
        .map_err(|e| format!("the key does not match the certificate: {e}"))
}

/// The certificates served, the preferred first (ECDSA: a cheaper signature per handshake).
#[derive(Debug)]
struct Served(Vec<Arc<CertifiedKey>>);

impl Served {
    /// `pairs` in the order they are offered: ECDSA first.
    fn ordered(mut pairs: Vec<Arc<CertifiedKey>>) -> Arc<Served> {
        pairs.sort_by_key(|certified| kind_of(certified) != Some(KeyKind::Ecdsa));
        Arc::new(Served(pairs))
    }
}

/// Hands rustls, per handshake, the first served certificate the client can use: one whose
/// key signs with a scheme the client offers, under a cipher suite it offers. A client that
/// offers no ECDSA scheme (or only TLS 1.2 suites for RSA) gets the RSA certificate, as it
/// would from an RSA-only server. Swapped on reload.
#[derive(Debug)]
struct Resolver {
    served: ArcSwap<Served>,
    /// The provider's cipher suites, to tell which of the client's fit a key.
    suites: Vec<rustls::SupportedCipherSuite>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let served = self.served.load();
        let usable = |certified: &&Arc<CertifiedKey>| {
            let algorithm = certified.key.algorithm();
            certified.key.choose_scheme(hello.signature_schemes()).is_some()
                && self.suites.iter().any(|suite| {
                    hello.cipher_suites().contains(&suite.suite()) && suite.usable_for_signature_algorithm(algorithm)
                })
        };
        // None usable: the last (RSA, when there are two) lets rustls refuse with the reason.
        served.0.iter().find(usable).or(served.0.last()).cloned()
    }
}

/// Issues the server certificates from the CA in `dir` unless the ones there cover `names`
/// and `ips`, are of `key_type` and are far from expiry; true if it issued them.
fn issue_if_needed(
    dir: &Path,
    ca_pem: &str,
    key_type: KeyType,
    names: &[String],
    ips: &[IpAddr],
) -> Result<bool, PkiError> {
    let wanted = ServerCoverage {
        names: names.to_vec(),
        ips: ips.to_vec(),
        not_after: unix(SystemTime::now() + SERVER_DAYS as u32 * DAY),
        key_type: format!("{key_type:?}"),
    };
    if !needs_reissue(dir, &wanted) {
        return Ok(false);
    }
    let ca_key = read_string(&dir.join("ca.key"))?;
    let kinds = key_type.server_kinds();
    for (index, (cert_name, key_name)) in SERVER_PAIRS.iter().enumerate() {
        match kinds.get(index) {
            Some(kind) => {
                let (cert, key) = new_server_cert(ca_pem, &ca_key, *kind, &wanted)?;
                write_file(&dir.join(key_name), key.as_bytes(), 0o600)?;
                write_file(&dir.join(cert_name), cert.as_bytes(), 0o644)?;
            }
            None => {
                for name in [cert_name, key_name] {
                    remove_if_there(&dir.join(name))?;
                }
            }
        }
    }
    let coverage = serde_json::to_vec_pretty(&wanted).map_err(|e| PkiError::Generate(e.to_string()))?;
    write_file(&dir.join(SERVER_COVERAGE), &coverage, 0o644)?;
    tracing::info!(names = ?wanted.names, ips = ?wanted.ips, "issued the server certificate");
    Ok(true)
}

/// How [`load_served`] takes a broken operator certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Broken {
    /// As an error: a reload keeps what is served.
    Refuse,
    /// Logged and passed over (at start): the appliance serves the rest, or its own
    /// certificates, rather than not starting.
    PassOver,
}

/// The certificates to serve, ECDSA first: the operator's (each pair whose certificate
/// file is there; a key alone is a pair half written or half removed, and is ignored), else
/// the generated ones of `key_type`.
fn load_served(
    dir: &Path,
    provider: &CryptoProvider,
    key_type: KeyType,
    broken: Broken,
) -> Result<Arc<Served>, PkiError> {
    let mut served = Vec::new();
    for (cert, key) in OPERATOR_PAIRS.iter().filter(|(cert, _)| dir.join(cert).exists()) {
        match load_pair(&dir.join(cert), &dir.join(key), provider) {
            Ok(pair) => served.push(Arc::new(pair)),
            Err(error) if broken == Broken::PassOver => {
                tracing::error!("operator certificate not served: {error}");
            }
            Err(error) => return Err(error),
        }
    }
    if served.is_empty() {
        // Only the pairs of this key type: a file of another type is from before a change
        // (or a rollback) and covers what it covered then.
        for (cert, key) in &SERVER_PAIRS[..key_type.server_kinds().len()] {
            served.push(Arc::new(load_pair(&dir.join(cert), &dir.join(key), provider)?));
        }
    }
    Ok(Served::ordered(served))
}

/// A certificate chain file and its key file, checked to match.
fn load_pair(cert_path: &Path, key_path: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, PkiError> {
    let pem_error = |path: &Path, reason: String| PkiError::Pem { path: path.to_path_buf(), reason };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| pem_error(cert_path, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_error(cert_path, e.to_string()))?;
    if chain.is_empty() {
        return Err(pem_error(cert_path, "no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| pem_error(key_path, e.to_string()))?;
    CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| pem_error(key_path, format!("does not match {}: {e}", cert_path.display())))
}

/// Warns when the CA's key does not suit `key_type`: the CA is made once, on first start,
/// and stays (phones trust it), so a key type changed later changes only the server
/// certificates.
fn warn_of_ca_kind(ca_key_pem: &str, key_type: KeyType) {
    let ecdsa_ca = KeyPair::from_pem(ca_key_pem).is_ok_and(|key| key.algorithm() == &rcgen::PKCS_ECDSA_P256_SHA256);
    if ecdsa_ca && key_type != KeyType::EcdsaP256 {
        tracing::warn!(
            "the local CA is ECDSA (made with --key-type ecdsa-p256): phones that know only RSA cannot check \
             its chain, RSA server certificate or not; a new CA (a factory reset) is one they can, and every \
             phone must then trust it again"
        );
    }
}

/// The kind of a certificate's key, if RSA or ECDSA.
fn kind_of(certified: &CertifiedKey) -> Option<KeyKind> {
    match certified.key.algorithm() {
        rustls::SignatureAlgorithm::RSA => Some(KeyKind::Rsa),
        rustls::SignatureAlgorithm::ECDSA => Some(KeyKind::Ecdsa),
        _ => None,
    }
}

/// Removes `path`; a file that is not there is fine.
fn remove_if_there(path: &Path) -> Result<(), PkiError> {
    match fs::remove_file(path) {
        Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
            Err(PkiError::Io { path: path.to_path_buf(), source })
        }
        _ => Ok(()),
    }
}

fn needs_reissue(dir: &Path, wanted: &ServerCoverage) -> bool {
    let Ok(text) = fs::read(dir.join("server.json")) else { return true };
    let Ok(current) = serde_json::from_slice::<ServerCoverage>(&text) else { return true };
    let renew_at = current.not_after.saturating_sub(RENEW_DAYS * DAY.as_secs());
    let pairs = SERVER_PAIRS.len().min(if current.key_type == format!("{:?}", KeyType::Dual) { 2 } else { 1 });
    current.names != wanted.names
        || current.ips != wanted.ips
        || current.key_type != wanted.key_type
        || unix(SystemTime::now()) >= renew_at
        || SERVER_PAIRS[..pairs].iter().any(|(cert, key)| !dir.join(cert).exists() || !dir.join(key).exists())
}

fn generate_key(kind: KeyKind) -> Result<KeyPair, PkiError> {
    let generate = |e: &dyn std::fmt::Display| PkiError::Generate(e.to_string());
    match kind {
        KeyKind::Ecdsa => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| generate(&e)),
        KeyKind::Rsa => {
            use rsa::pkcs8::EncodePrivateKey;
            // ring signs with RSA keys but cannot generate them; the rsa crate does.
            let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).map_err(|e| generate(&e))?;
            let der = key.to_pkcs8_der().map_err(|e| generate(&e))?;
            let der = rustls::pki_types::PrivatePkcs8KeyDer::from(der.as_bytes());
            KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_RSA_SHA256).map_err(|e| generate(&e))
        }
    }
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = SystemTime::now();
    params.not_before = (now - DAY).into();
    params.not_after = (now + lifetime).into();
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    let host = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default();
    name.push(DnType::CommonName, format!("provbox local CA {host}").trim_end());
    name.push(DnType::OrganizationName, "provbox");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut params, CA_YEARS as u32 * 365 * DAY);
    params
}

/// A new self-signed CA: (certificate PEM, key PEM). RSA unless every certificate is to be
/// ECDSA: a client that cannot check an ECDSA signature could not check the chain.
fn new_ca(key_type: KeyType) -> Result<(String, String), PkiError> {
    let key = generate_key(if key_type == KeyType::EcdsaP256 { KeyKind::Ecdsa } else { KeyKind::Rsa })?;
    let cert = ca_params().self_signed(&key).map_err(|e| PkiError::Generate(e.to_string()))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A server certificate for `coverage`, signed by the CA: (certificate PEM, key PEM).
fn new_server_cert(
    ca_pem: &str,
    ca_key_pem: &str,
    kind: KeyKind,
    coverage: &ServerCoverage,
) -> Result<(String, String), PkiError> {
    let generate = |e: rcgen::Error| PkiError::Generate(e.to_string());
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(generate)?;
    let issuer = Issuer::from_ca_cert_pem(ca_pem, ca_key).map_err(generate)?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, coverage.names.first().map_or("provbox", String::as_str));
    params.distinguished_name = name;
    params.subject_alt_names = coverage
        .names
        .iter()
        .map(|n| n.as_str().try_into().map(SanType::DnsName))
        .collect::<Result<Vec<_>, _>>()
        .map_err(generate)?;
    params.subject_alt_names.extend(coverage.ips.iter().map(|ip| SanType::IpAddress(*ip)));
    // RFC 5480 section 3: an ECDSA key signs and never enciphers; RSA's does both (TLS 1.2's
    // RSA key exchange, which rustls does not offer, is what enciphers).
    params.key_usages = match kind {
        KeyKind::Rsa => vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment],
        KeyKind::Ecdsa => vec![KeyUsagePurpose::DigitalSignature],
    };
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, SERVER_DAYS as u32 * DAY);
    let key = generate_key(kind)?;
    let cert = params.signed_by(&key, &issuer).map_err(generate)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn unix(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn read_string(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io { path: path.to_path_buf(), source })
}

/// Creates `dir` (and parents) readable by its owner only.
pub fn create_private_dir(dir: &Path) -> Result<(), PkiError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| PkiError::Io { path: dir.to_path_buf(), source })
}

/// Writes `bytes` to `path` with `mode` via a temporary file and rename, so a power cut
/// leaves the old file or the new one.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let io = |source| PkiError::Io { path: path.to_path_buf(), source };
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let _ = fs::remove_file(&temporary);
    let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&temporary).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&temporary, path).map_err(io)
}
