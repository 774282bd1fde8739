//! The server certificates as an independent TLS client sees them: OpenSSL's `s_client`
//! (Debian's openssl package) shakes hands with a real provbox process on loopback. By
//! default provbox serves two certificates under one RSA CA and picks one per handshake:
//! ECDSA P-256 for a client that offers an ECDSA signature scheme under a cipher suite it
//! can use with it, RSA-2048 for every other client (RFC 8446 section 4.2.3 and RFC 5246
//! section 7.4.2: the certificate must suit the client's signature algorithms and, in TLS
//! 1.2, the cipher suite).

mod fleet;

use std::process::Command;

use fleet::{Appliance, openssl_handshake};

/// What a client offering only RSA signature schemes offers (RSA-only phones).
const RSA_ONLY: [&str; 2] = ["-sigalgs", "RSA-PSS+SHA256:RSA-PSS+SHA384:RSA+SHA256:RSA+SHA384"];

/// `openssl x509 -text` of a PEM file.
fn x509_text(path: &std::path::Path) -> String {
    let output = Command::new("openssl").args(["x509", "-noout", "-text", "-in"]).arg(path).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn each_client_gets_the_certificate_it_can_use_under_one_rsa_ca() {
    // `dual` is serve's default; the test fleet's default is ECDSA only (quicker to make).
    let appliance = Appliance::start_with(&["--key-type", "dual"]);
    let ca = appliance.data.join("tls/ca.crt");
    let cases: [(&str, &[&str], &str, &str); 5] = [
        ("TLS 1.3, every scheme", &[], "TLSv1.3", "ECDSA"),
        ("TLS 1.3, RSA schemes only", &RSA_ONLY, "TLSv1.3", "RSA-PSS"),
        ("TLS 1.2, ECDSA suites", &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"], "TLSv1.2", "ECDSA"),
        // ECDSA schemes offered, but only suites that need an RSA certificate.
        ("TLS 1.2, RSA suites only", &["-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"], "TLSv1.2", "RSA-PSS"),
        ("TLS 1.2, RSA schemes only", &["-tls1_2", RSA_ONLY[0], RSA_ONLY[1]], "TLSv1.2", "RSA-PSS"),
    ];
    for (what, args, version, signature) in cases {
        let report = openssl_handshake(appliance.https, &ca, args);
        assert!(report.contains(&format!("Protocol version: {version}")), "{what}:\n{report}");
        assert!(report.contains(&format!("Signature type: {signature}\n")), "{what}:\n{report}");
        assert!(report.contains("Verification: OK"), "{what}: the chain does not verify against the CA:\n{report}");
    }
    // The CA is RSA, so a client that cannot check ECDSA signatures can check the chain;
    // the ECDSA certificate signs only (RFC 5480 section 3), the RSA one may also encipher.
    let tls = appliance.data.join("tls");
    assert!(x509_text(&ca).contains("Public Key Algorithm: rsaEncryption"));
    let rsa = x509_text(&tls.join("server.crt"));
    assert!(rsa.contains("Public-Key: (2048 bit)") && rsa.contains("Digital Signature, Key Encipherment"), "{rsa}");
    let ecdsa = x509_text(&tls.join("server-ecdsa.crt"));
    assert!(ecdsa.contains("ASN1 OID: prime256v1"), "{ecdsa}");
    assert!(ecdsa.contains("Digital Signature") && !ecdsa.contains("Key Encipherment"), "{ecdsa}");
    for key in ["server.key", "server-ecdsa.key"] {
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(tls.join(key)).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
}

#[test]
fn a_single_key_type_serves_one_certificate_to_everyone_who_can_use_it() {
    let appliance = Appliance::start_with(&["--key-type", "rsa2048"]);
    let ca = appliance.data.join("tls/ca.crt");
    let report = openssl_handshake(appliance.https, &ca, &[]);
    assert!(report.contains("Signature type: RSA-PSS\n") && report.contains("Verification: OK"), "{report}");
    assert!(!appliance.data.join("tls/server-ecdsa.crt").exists());
}

/// A server certificate of another key type left on disk (a rollback to a build that knew
/// one type, or a pair copied in) is not served: it covers what it covered then and is
/// never renewed.
#[test]
fn server_certificates_of_another_key_type_are_not_served() {
    let appliance = Appliance::start_with(&["--key-type", "rsa2048"]);
    let (_, data, dir) = appliance.stop();
    let made = tempfile::tempdir().unwrap();
    let (cert, key) = fleet::openssl_pair(made.path(), "stale-ecdsa", "ec");
    std::fs::write(data.join("tls/server-ecdsa.crt"), cert).unwrap();
    std::fs::write(data.join("tls/server-ecdsa.key"), key).unwrap();
    let appliance = Appliance::start_on(data, dir, &["--key-type", "rsa2048"]);
    let report = openssl_handshake(appliance.https, &appliance.data.join("tls/ca.crt"), &[]);
    assert!(report.contains("Signature type: RSA-PSS\n") && report.contains("Verification: OK"), "{report}");
}

/// A broken operator pair at start is logged and passed over, a key without its
/// certificate (an install or a removal cut short) is ignored: the appliance starts and
/// serves what works.
#[test]
fn a_broken_or_half_written_operator_certificate_does_not_keep_the_appliance_from_starting() {
    let appliance = Appliance::start_with(&["--key-type", "dual"]);
    let (_, data, dir) = appliance.stop();
    let tls = data.join("tls");
    let made = tempfile::tempdir().unwrap();
    let (cert, key) = fleet::openssl_pair(made.path(), "operator-rsa", "rsa:2048");
    std::fs::write(tls.join("operator.crt"), &cert).unwrap();
    std::fs::write(tls.join("operator.key"), &key).unwrap();
    let (_, ecdsa_key) = fleet::openssl_pair(made.path(), "operator-ec", "ec");
    std::fs::write(tls.join("operator-ecdsa.key"), ecdsa_key).unwrap(); // no certificate
    let trusted = made.path().join("operator-rsa.crt");
    let appliance = Appliance::start_on(data, dir, &["--key-type", "dual"]);
    let report = openssl_handshake(appliance.https, &trusted, &[]);
    assert!(report.contains("Peer certificate: CN = operator-rsa") && report.contains("Verification: OK"), "{report}");

    // The operator's only pair broken: the appliance's own certificates, and the reason.
    let (_, data, dir) = appliance.stop();
    std::fs::write(data.join("tls/operator.key"), "not a key").unwrap();
    let appliance = Appliance::start_on(data, dir, &["--key-type", "dual"]);
    let report = openssl_handshake(appliance.https, &appliance.data.join("tls/ca.crt"), &[]);
    assert!(report.contains("Signature type: ECDSA\n") && report.contains("Verification: OK"), "{report}");
    assert!(appliance.wait_for_log("operator certificate not served"), "{}", appliance.log());
}
