//! The Raspberry Pi images' initramfs against the boards' own device trees (run by
//! scripts/test-image on the images it builds: `PROVBOX_RPI3_IMAGE_DIR`,
//! `PROVBOX_RPI4_IMAGE_DIR`, each with the `kernel/` and `initramfs-modules` that
//! scripts/build-image leaves next to the image).
//!
//! The suppliers are read twice: by scripts/board-drivers, and independently here with
//! device-tree-compiler's `fdtget`. The facts they must agree on come from the device trees
//! in Debian's kernel (Linux `arch/arm64/boot/dts/broadcom/bcm2711-rpi-4-b.dts`:
//! emmc2's `vmmc-supply = <&sd_vcc_reg>` (regulator-fixed) and `vqmmc-supply =
//! <&sd_io_1v8_reg>` (regulator-gpio); `bcm283x-rpi-usb-host.dtsi` and
//! `bcm2835-rpi.dtsi`: the dwc2 controller's `phys = <&usbphy>`, a `usb-nop-xceiv`), and
//! the drivers from the kernel's modules.alias (`fixed`, `gpio_regulator`, `phy_generic`).

use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn image_dir(variable: &str) -> PathBuf {
    PathBuf::from(std::env::var_os(variable).unwrap_or_else(|| panic!("{variable} names a built image directory")))
}

fn fdtget(dtb: &Path, node: &str, property: &str, kind: &str) -> String {
    let output =
        Command::new("fdtget").args(["-t", kind]).arg(dtb).args([node, property]).output().expect("fdtget runs");
    assert!(output.status.success(), "fdtget {node} {property}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// The path of the node whose phandle is `phandle`, found with fdtget alone.
fn node_with_phandle(dtb: &Path, phandle: &str) -> String {
    let mut pending = vec!["/".to_string()];
    while let Some(node) = pending.pop() {
        let own = Command::new("fdtget").args(["-t", "x"]).arg(dtb).args([&node, "phandle"]).output().unwrap();
        if own.status.success() && String::from_utf8_lossy(&own.stdout).trim() == phandle {
            return node;
        }
        let children = Command::new("fdtget").arg("-l").arg(dtb).arg(&node).output().unwrap();
        for child in String::from_utf8_lossy(&children.stdout).lines() {
            pending.push(format!("{}/{child}", node.trim_end_matches('/')));
        }
    }
    panic!("no node has phandle {phandle}");
}

/// The node whose `compatible` includes `compatible`, found with fdtget alone.
fn node_with_compatible(dtb: &Path, compatible: &str) -> String {
    let mut pending = vec!["/".to_string()];
    while let Some(node) = pending.pop() {
        let own = Command::new("fdtget").arg(dtb).args([&node, "compatible"]).output().unwrap();
        if own.status.success() && String::from_utf8_lossy(&own.stdout).split_whitespace().any(|c| c == compatible) {
            return node;
        }
        let children = Command::new("fdtget").arg("-l").arg(dtb).arg(&node).output().unwrap();
        for child in String::from_utf8_lossy(&children.stdout).lines() {
            pending.push(format!("{}/{child}", node.trim_end_matches('/')));
        }
    }
    panic!("no node is compatible with {compatible}");
}

/// scripts/board-drivers for one device tree and boot devices; (passed, output).
fn board_drivers(image: &Path, dtb: &str, devices: &[&str], check: Option<&Path>) -> (bool, String) {
    let kernel = image.join("kernel");
    let mut command = Command::new(Path::new(ROOT).join("scripts/board-drivers"));
    command.arg(&kernel).arg(kernel.join(dtb)).arg("--devices").args(devices);
    if let Some(list) = check {
        command.arg("--check").arg(list);
    }
    let output = command.output().expect("python3 runs scripts/board-drivers");
    (
        output.status.success(),
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)),
    )
}

fn initramfs_modules(image: &Path) -> Vec<String> {
    std::fs::read_to_string(image.join("initramfs-modules"))
        .unwrap()
        .lines()
        .map(|name| name.replace('-', "_"))
        .collect()
}

/// One supplier, both ways: fdtget follows `property` of the node compatible with
/// `consumer` to a node whose compatible is `supplier_compatible`, and board-drivers derives
/// `module` for that consumer; the image's initramfs loads it.
fn supplier_is_loaded(
    image: &Path,
    dtb: &str,
    consumer: &str,
    property: &str,
    supplier_compatible: &str,
    module: &str,
) {
    let tree = image.join("kernel").join(dtb);
    let node = node_with_compatible(&tree, consumer);
    let phandle = fdtget(&tree, &node, property, "x");
    let phandle = phandle.split_whitespace().next().unwrap().to_string();
    let supplier = node_with_phandle(&tree, &phandle);
    let compatible = fdtget(&tree, &supplier, "compatible", "s");
    assert!(
        compatible.split_whitespace().any(|c| c == supplier_compatible),
        "{node} {property} -> {supplier} [{compatible}]"
    );

    let (passed, derived) = board_drivers(image, dtb, &[consumer], None);
    assert!(passed, "{derived}");
    assert!(derived.lines().any(|line| line == module), "{consumer}'s {property} needs {module}; derived:\n{derived}");
    assert!(initramfs_modules(image).iter().any(|m| m == module), "the initramfs lacks {module}");
}

#[test]
#[ignore = "needs the rpi4 image: scripts/test-image"]
fn the_pi4_sd_card_regulators_are_in_the_initramfs() {
    let image = image_dir("PROVBOX_RPI4_IMAGE_DIR");
    let dtb = "bcm2711-rpi-4-b.dtb";
    supplier_is_loaded(&image, dtb, "brcm,bcm2711-emmc2", "vmmc-supply", "regulator-fixed", "fixed");
    supplier_is_loaded(&image, dtb, "brcm,bcm2711-emmc2", "vqmmc-supply", "regulator-gpio", "gpio_regulator");

    // The check fails, naming the driver, when the initramfs lacks one.
    let scratch = tempfile::tempdir().unwrap();
    let short = scratch.path().join("modules");
    let without: Vec<String> = initramfs_modules(&image).into_iter().filter(|m| m != "gpio_regulator").collect();
    std::fs::write(&short, without.join("\n")).unwrap();
    let (passed, table) = board_drivers(&image, dtb, &["brcm,bcm2711-emmc2"], Some(&short));
    assert!(!passed, "{table}");
    assert!(
        table.lines().any(|l| l.contains("sd_io_1v8_reg") && l.contains("MISSING") && l.contains("gpio_regulator")),
        "{table}"
    );
}

#[test]
#[ignore = "needs the rpi3 image: scripts/test-image"]
fn the_pi3_usb_phy_is_in_the_initramfs() {
    let image = image_dir("PROVBOX_RPI3_IMAGE_DIR");
    for dtb in ["bcm2837-rpi-3-b.dtb", "bcm2837-rpi-3-b-plus.dtb"] {
        supplier_is_loaded(&image, dtb, "brcm,bcm2835-usb", "phys", "usb-nop-xceiv", "phy_generic");
    }
}

/// The check build-image ran passes on each image, and covers the boot-critical devices.
#[test]
#[ignore = "needs the rpi3 and rpi4 images: scripts/test-image"]
fn every_boot_critical_driver_is_built_in_or_in_the_initramfs() {
    for (variable, wanted) in [
        ("PROVBOX_RPI4_IMAGE_DIR", &["sdhci_iproc", "genet", "mdio_bcm_unimac", "iproc_rng200"][..]),
        ("PROVBOX_RPI3_IMAGE_DIR", &["bcm2835", "dwc2", "smsc95xx", "lan78xx", "bcm2835_rng"][..]),
    ] {
        let image = image_dir(variable);
        let table = std::fs::read_to_string(image.join("drivers.txt")).unwrap();
        assert!(!table.contains("MISSING"), "{table}");
        for module in wanted {
            assert!(
                table.lines().any(|l| l.contains("initramfs:") && l.contains(module)),
                "{variable}: {module}\n{table}"
            );
        }
    }
}
