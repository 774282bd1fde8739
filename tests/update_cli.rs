//! `provbox update` from the command line, on file-backed root slots: keygen, sign,
//! install (accepted, refused with a foreign key, refused when older), and status.

mod fleet;

use fleet::{cli, cli_ok};

#[test]
fn keygen_sign_install_and_status_work_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    for slot in ["a", "b"] {
        std::fs::write(path(slot), vec![0u8; 64 * 1024]).unwrap();
    }
    std::fs::write(path("state"), "active=a\n").unwrap();
    std::fs::write(
        path("boot"),
        format!(
            "board=rpi4\nslot=a\ntrial=0\nrolled_back=\nslot_a={}\nslot_b={}\nstate={}\nsequence=1000\n",
            path("a"),
            path("b"),
            path("state")
        ),
    )
    .unwrap();
    let mut image = b"hsqs".to_vec();
    image.extend(std::iter::repeat_n(0x5a, 20_000));
    std::fs::write(path("root.squashfs"), &image).unwrap();
    let data = fleet::data_dir(dir.path());

    let made = cli_ok(&data, &["update", "keygen", &path("signing.key")]);
    assert!(made.contains("signing.key.pub"), "{made}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(path("signing.key")).unwrap().permissions().mode() & 0o777, 0o600);
    // `update sign` of the root image as release `sequence`, into `out`.
    let sign = |version: &str, sequence: &str, out: &str| {
        let (key, out, image) = (path("signing.key"), path(out), path("root.squashfs"));
        let args = ["update", "sign", "--key", &key, "--board", "rpi4", "--version", version, "--sequence", sequence];
        cli_ok(&data, &[&args[..], &["--out", &out, &image]].concat())
    };
    let signed = sign("2.0", "1001", "u.update");
    assert!(signed.contains("20004 bytes of image"), "{signed}");
    // An older release, signed the same way: refused, nothing staged.
    sign("1.9", "999", "old.update");
    let (ok, _, err) = cli(
        &data,
        &["update", "install", &path("old.update"), "--boot-info", &path("boot"), "--key", &path("signing.key.pub")],
    );
    assert!(!ok && err.contains("older than the running image (release 1000)"), "{err}");
    assert_eq!(std::fs::read_to_string(path("state")).unwrap(), "active=a\n");

    // A key the appliance does not trust: refused, nothing staged.
    cli_ok(&data, &["update", "keygen", &path("other.key")]);
    let (ok, _, err) = cli(
        &data,
        &["update", "install", &path("u.update"), "--boot-info", &path("boot"), "--key", &path("other.key.pub")],
    );
    assert!(!ok);
    assert!(err.contains("signature does not verify"), "{err}");
    assert_eq!(std::fs::read_to_string(path("state")).unwrap(), "active=a\n");

    let installed = cli_ok(
        &data,
        &["update", "install", &path("u.update"), "--boot-info", &path("boot"), "--key", &path("signing.key.pub")],
    );
    assert!(installed.contains("installed 2.0 into root slot b"), "{installed}");
    assert_eq!(std::fs::read_to_string(path("state")).unwrap(), "active=a\nnext=b\n");
    assert_eq!(&std::fs::read(path("b")).unwrap()[..image.len()], &image[..]);

    let status = cli_ok(&data, &["update", "status", "--boot-info", &path("boot")]);
    assert!(status.contains("board        rpi4") && status.contains("root slot    a"), "{status}");
    let (ok, _, err) = cli(&data, &["update", "status", "--boot-info", &path("missing")]);
    assert!(!ok && err.contains("updates need the provbox firmware image"), "{err}");
}
