//! `scripts/lint-boot-partition` against the Raspberry Pi firmware's rules, and
//! `scripts/check-boot-room` against where U-Boot loads the kernel: the shipped config.txt
//! passes for every model the board files name, and each rule catches the fault it exists
//! for. Each case cites where the rule comes from:
//! - raspberrypi/documentation, `documentation/asciidoc/computers/config_txt/boot.adoc`
//!   ("start_file, fixup_file", "upstream_kernel", "arm_64bit", "initramfs") and
//!   `.../config_txt/memory.adoc` ("gpu_mem");
//! - raspberrypi/firmware#984 (a Pi 4 with gpu_mem=16 and no start4cd.elf does not boot);
//! - Linux `Documentation/arch/arm64/booting.rst` (the "ARMd" magic at offset 0x38), and
//!   the Arm Architecture Reference Manual for A-profile, C6.2 "B" (the AArch64 branch that
//!   U-Boot's arm64 builds start with);
//! - Linux `Documentation/admin-guide/serial-console.rst` (the last console= is /dev/console);
//! - U-Boot `arch/arm/lib/image.c` (booti_setup: where booti moves an arm64 Image) and
//!   `include/configs/rpi.h` (where the Pi builds load the kernel, script and initramfs).

use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A boot partition as scripts/build-image stages it for a board: the shipped config.txt,
/// the board's firmware and device trees, an AArch64 U-Boot as the kernel; and next to it
/// (`bootargs.env`, standing in for the root slot's /boot) the command line with the
/// board's consoles.
fn staged(board: &str) -> tempfile::TempDir {
    let conf = std::fs::read_to_string(Path::new(ROOT).join("board").join(format!("{board}.conf"))).unwrap();
    let value = |key: &str| {
        conf.lines()
            .find_map(|line| line.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{board}.conf has no {key}"))
            .trim_matches('"')
            .to_string()
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(Path::new(ROOT).join("image/boot/config.txt"), dir.path().join("config.txt")).unwrap();
    for file in value("FIRMWARE").split_whitespace() {
        std::fs::write(dir.path().join(file), b"firmware").unwrap();
    }
    for dtb in value("DTBS").split_whitespace() {
        std::fs::write(dir.path().join(Path::new(dtb).file_name().unwrap()), b"dtb").unwrap();
    }
    let consoles: Vec<String> = value("CONSOLE").split_whitespace().map(|c| format!("console={c}")).collect();
    std::fs::write(bootargs(dir.path()), format!("bootargs={} panic=5 quiet\n", consoles.join(" "))).unwrap();
    // U-Boot's arm64 builds start with `b reset`: 0x1400000a, little-endian.
    let mut u_boot = vec![0u8; 64];
    u_boot[..4].copy_from_slice(&0x1400_000a_u32.to_le_bytes());
    std::fs::write(dir.path().join("u-boot.bin"), u_boot).unwrap();
    dir
}

/// Where [`staged`] keeps the command line: in a directory of its own, standing in for the
/// root slot's /boot (the lint reads only the files the firmware loads from the partition).
fn bootargs(boot: &Path) -> PathBuf {
    let slot = boot.join("slot-boot");
    std::fs::create_dir_all(&slot).unwrap();
    slot.join("bootargs.env")
}

fn models(board: &str) -> Vec<String> {
    let conf = std::fs::read_to_string(Path::new(ROOT).join("board").join(format!("{board}.conf"))).unwrap();
    conf.lines()
        .find_map(|line| line.strip_prefix("PI_MODELS="))
        .unwrap()
        .trim_matches('"')
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// Runs the lint; (passed, what it printed).
fn lint(boot: &Path, models: &[String]) -> (bool, String) {
    let output = Command::new(PathBuf::from(ROOT).join("scripts/lint-boot-partition"))
        .arg(boot)
        .arg(bootargs(boot))
        .args(models)
        .output()
        .expect("python3 runs scripts/lint-boot-partition");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

fn edit_config(boot: &Path, edit: impl FnOnce(String) -> String) {
    let path = boot.join("config.txt");
    std::fs::write(&path, edit(std::fs::read_to_string(&path).unwrap())).unwrap();
}

#[test]
fn the_shipped_boot_partitions_pass_for_every_model() {
    for board in ["rpi3", "rpi4"] {
        let boot = staged(board);
        let (passed, text) = lint(boot.path(), &models(board));
        assert!(passed, "{board}: {text}");
    }
}

#[test]
fn gpu_mem_below_32_needs_the_cut_down_firmware() {
    for (board, wanted) in [("rpi4", "start4cd.elf"), ("rpi3", "start_cd.elf")] {
        let boot = staged(board);
        edit_config(boot.path(), |config| config + "gpu_mem=16\n");
        let (passed, text) = lint(boot.path(), &models(board));
        assert!(!passed && text.contains(wanted), "{board}: {text}");
        // With the cut-down pair present, the same setting is fine.
        let fixup = wanted.replace("start", "fixup").replace(".elf", ".dat");
        std::fs::write(boot.path().join(wanted), b"firmware").unwrap();
        std::fs::write(boot.path().join(fixup), b"firmware").unwrap();
        let (passed, text) = lint(boot.path(), &models(board));
        assert!(passed, "{board}: {text}");
    }
}

#[test]
fn without_upstream_kernel_the_pi3_and_cm4_look_for_downstream_device_trees() {
    for (board, model, downstream) in [
        ("rpi3", "3b", "bcm2710-rpi-3-b.dtb"),
        ("rpi3", "zero2w", "bcm2710-rpi-zero-2-w.dtb"),
        ("rpi4", "cm4", "bcm2711-rpi-cm4.dtb"),
    ] {
        let boot = staged(board);
        edit_config(boot.path(), |config| config.replace("upstream_kernel=1", ""));
        let (passed, text) = lint(boot.path(), &[model.to_string()]);
        assert!(!passed && text.contains(downstream), "{model}: {text}");
    }
    // The Pi 4B's device tree has the same name either way.
    let boot = staged("rpi4");
    edit_config(boot.path(), |config| config.replace("upstream_kernel=1", ""));
    assert!(lint(boot.path(), &["4b".to_string()]).0);
}

#[test]
fn an_aarch64_kernel_needs_arm_64bit() {
    let boot = staged("rpi4");
    edit_config(boot.path(), |config| config.replace("arm_64bit=1", ""));
    let (passed, text) = lint(boot.path(), &models("rpi4"));
    assert!(!passed && text.contains("u-boot.bin is AArch64 code but arm_64bit=1 is not set"), "{text}");
    // A Linux arm64 Image as the kernel: found by its header's magic.
    let mut image = vec![0u8; 64];
    image[0x38..0x3c].copy_from_slice(b"ARMd");
    std::fs::write(boot.path().join("u-boot.bin"), image).unwrap();
    let (passed, text) = lint(boot.path(), &models("rpi4"));
    assert!(!passed && text.contains("is AArch64 code"), "{text}");
    // 32-bit code (an A32 branch, 0xea000000) is not held to it.
    std::fs::write(boot.path().join("u-boot.bin"), 0xea00_0000_u32.to_le_bytes()).unwrap();
    assert!(lint(boot.path(), &models("rpi4")).0);
}

#[test]
fn the_initramfs_and_overlays_must_be_on_the_partition() {
    let boot = staged("rpi4");
    edit_config(boot.path(), |config| config + "initramfs initrd.img followkernel\n");
    let (passed, text) = lint(boot.path(), &models("rpi4"));
    assert!(!passed && text.contains("initramfs initrd.img is missing"), "{text}");

    let boot = staged("rpi3");
    edit_config(boot.path(), |config| config + "dtoverlay=disable-bt\n");
    let (passed, text) = lint(boot.path(), &models("rpi3"));
    assert!(!passed && text.contains("overlays/disable-bt.dtbo"), "{text}");
    std::fs::create_dir(boot.path().join("overlays")).unwrap();
    std::fs::write(boot.path().join("overlays/disable-bt.dtbo"), b"overlay").unwrap();
    assert!(lint(boot.path(), &models("rpi3")).0);
}

#[test]
fn the_serial_console_is_enabled_and_last() {
    let boot = staged("rpi4");
    edit_config(boot.path(), |config| config.replace("enable_uart=1", ""));
    let (passed, text) = lint(boot.path(), &models("rpi4"));
    assert!(!passed && text.contains("enable_uart=1"), "{text}");

    let boot = staged("rpi3");
    std::fs::write(bootargs(boot.path()), "bootargs=console=ttyS1,115200 console=tty1 quiet\n").unwrap();
    let (passed, text) = lint(boot.path(), &models("rpi3"));
    assert!(!passed && text.contains("must be the serial one"), "{text}");
}

#[test]
fn a_pi3_without_bootcode_does_not_boot() {
    let boot = staged("rpi3");
    std::fs::remove_file(boot.path().join("bootcode.bin")).unwrap();
    let (passed, text) = lint(boot.path(), &models("rpi3"));
    assert!(!passed && text.contains("bootcode.bin"), "{text}");
}

/// A U-Boot binary as far as `scripts/check-boot-room` reads it: the built-in environment of
/// Debian's u-boot-rpi 2023.01 `rpi_arm64` (U-Boot `include/configs/rpi.h`, ENV_MEM_LAYOUT_SETTINGS).
fn rpi_uboot(dir: &Path) -> PathBuf {
    let path = dir.join("u-boot.bin");
    let env = "\0kernel_addr_r=0x00080000\0scriptaddr=0x02400000\0pxefile_addr_r=0x02500000\0\
               fdt_addr_r=0x02600000\0ramdisk_addr_r=0x02700000\0";
    std::fs::write(&path, [&[0x14u8, 0, 0, 0x14][..], env.as_bytes()].concat()).unwrap();
    path
}

/// An arm64 Image of `file_size` bytes whose header (Linux `booting.rst`) claims `image_size`
/// and may be placed anywhere (flags bit 3), as Debian's 6.1 kernels are.
fn arm64_image(dir: &Path, file_size: usize, image_size: u64) -> PathBuf {
    let path = dir.join("vmlinuz");
    let mut image = vec![0u8; file_size];
    image[16..24].copy_from_slice(&image_size.to_le_bytes());
    image[24..32].copy_from_slice(&10u64.to_le_bytes());
    image[56..60].copy_from_slice(b"ARMd");
    std::fs::write(&path, image).unwrap();
    path
}

fn check_room(dir: &Path, uboot: &Path, kernel: &Path) -> (bool, String) {
    let initrd = dir.join("initrd.img");
    std::fs::write(&initrd, vec![0u8; 6 << 20]).unwrap();
    let out = Command::new(Path::new(ROOT).join("scripts/check-boot-room"))
        .arg(uboot)
        .arg(kernel)
        .arg(&initrd)
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn the_kernel_fits_where_u_boot_loads_and_moves_it() {
    let dir = tempfile::tempdir().unwrap();
    let uboot = rpi_uboot(dir.path());
    // Debian's 6.1.0-57 arm64 kernel: 32,956,352 bytes, image_size 0x2010000.
    let (passed, text) = check_room(dir.path(), &uboot, &arm64_image(dir.path(), 32_956_352, 0x2010000));
    assert!(passed && text.contains("4.1 MiB before scriptaddr"), "{text}");
    // A kernel file that would load over the running boot script.
    let (passed, text) = check_room(dir.path(), &uboot, &arm64_image(dir.path(), 37_500_000, 0x2400000));
    assert!(!passed && text.contains("into scriptaddr"), "{text}");
    // A file that loads, but whose image_size, moved to 0x200000, runs into the initramfs.
    let (passed, text) = check_room(dir.path(), &uboot, &arm64_image(dir.path(), 32_956_352, 0x2600000));
    assert!(!passed && text.contains("into the initramfs"), "{text}");
    // Not an arm64 Image at all.
    std::fs::write(dir.path().join("vmlinuz"), vec![0u8; 4096]).unwrap();
    let (passed, text) = check_room(dir.path(), &uboot, &dir.path().join("vmlinuz"));
    assert!(!passed && text.contains("ARMd"), "{text}");
}
