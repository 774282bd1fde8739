//! `provbox update ...`: signed root-image updates of the firmware image's A/B slots.

use std::path::PathBuf;

use clap::Subcommand;
use provbox::update;

use super::CliError;

#[derive(Subcommand)]
pub(super) enum UpdateCommand {
    /// Show the running root slot, whether it is on trial, and the image version.
    Status {
        /// The initramfs's description of the slots.
        #[arg(long, default_value = update::DEFAULT_BOOT_INFO)]
        boot_info: PathBuf,
    },
    /// Have the install service check a signed bundle and write it to the inactive slot;
    /// it starts at the next boot.
    Install {
        /// The bundle (`provbox-<board>-<version>.update`).
        bundle: PathBuf,
        /// The install service's socket.
        #[arg(long, default_value = update::service::DEFAULT_SOCKET)]
        installer: PathBuf,
    },
    /// Run the install service (as root, started by the image's init): the only process
    /// that writes the root slots and the A/B state, for provbox's account and root.
    Installer {
        /// The socket to listen on.
        #[arg(long, default_value = update::service::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// The unprivileged account that may send requests (provbox's); root always may.
        #[arg(long)]
        client: Option<String>,
        /// The initramfs's description of the slots.
        #[arg(long, default_value = update::DEFAULT_BOOT_INFO)]
        boot_info: PathBuf,
        /// The ed25519 public key bundles must be signed with (64 hex digits).
        #[arg(long, default_value = update::DEFAULT_KEY)]
        key: PathBuf,
    },
    /// Check a root slot against the signed header kept for it (the initramfs runs this
    /// before booting a slot): exit status 0 only if it verifies.
    VerifySlot {
        /// The signed header (`slot-a.head` or `slot-b.head` next to the A/B state).
        #[arg(long)]
        head: PathBuf,
        /// The slot's device.
        #[arg(long)]
        device: PathBuf,
        /// The board this is.
        #[arg(long)]
        board: String,
        /// The ed25519 public key bundles must be signed with (64 hex digits).
        #[arg(long, default_value = update::DEFAULT_KEY)]
        key: PathBuf,
    },
    /// Make a signing key: KEY (PKCS#8, mode 0600) and KEY.pub (for the image).
    Keygen {
        /// Where to write the private key.
        key: PathBuf,
    },
    /// Sign a root image (ext4, with the slot's boot files in /boot) into an update bundle.
    Sign {
        /// The private key (from `update keygen`).
        #[arg(long)]
        key: PathBuf,
        /// The board the image is for.
        #[arg(long)]
        board: String,
        /// The image's version.
        #[arg(long)]
        version: String,
        /// The release sequence: higher than every earlier release's (scripts/build-image
        /// uses the commit's time). Appliances refuse a bundle below their own.
        #[arg(long)]
        sequence: u64,
        /// Sign a deliberate downgrade: appliances running a later release accept it.
        #[arg(long)]
        allow_downgrade: bool,
        /// The root image.
        image: PathBuf,
        /// The bundle to write.
        #[arg(long)]
        out: PathBuf,
    },
}

pub(super) fn run(command: &UpdateCommand) -> Result<(), CliError> {
    match command {
        UpdateCommand::Status { boot_info } => {
            let boot = update::BootInfo::load(boot_info)?;
            println!("board        {}", boot.board);
            println!("image        {}", update::release().unwrap_or_else(|| "unknown".into()));
            println!("root slot    {}{}", boot.slot, if boot.trial { " (on trial)" } else { "" });
            if let Some(failed) = boot.rolled_back {
                println!("last update  slot {failed} did not come up healthy; rolled back");
            }
        }
        UpdateCommand::Install { bundle, installer } => {
            let mut file =
                std::fs::File::open(bundle).map_err(|source| CliError::Read { path: bundle.clone(), source })?;
            let installed = update::service::install(installer, &mut file)?;
            println!(
                "installed {} into root slot {}: reboot to start it (it stays only if it comes up healthy)",
                installed.version, installed.slot
            );
        }
        UpdateCommand::Installer { socket, client, boot_info, key } => {
            let client = match client {
                None => None,
                Some(name) => {
                    let user = nix::unistd::User::from_name(name)
                        .ok()
                        .flatten()
                        .ok_or_else(|| CliError::UnknownUser(name.clone()))?;
                    Some(update::service::Client { uid: user.uid, gid: user.gid })
                }
            };
            let service = update::service::Service {
                socket: socket.clone(),
                boot_info: boot_info.clone(),
                key: update::PublicKey::load(key)?,
                client,
            };
            service.run()?;
        }
        UpdateCommand::Keygen { key } => {
            let public = update::generate_key(key)?;
            println!("private key {} (keep it secret), public key {}", key.display(), public.display());
        }
        UpdateCommand::VerifySlot { head, device, board, key } => {
            let bytes = std::fs::read(head).map_err(|source| CliError::Read { path: head.clone(), source })?;
            let manifest = update::verify_slot(&bytes, &update::PublicKey::load(key)?, board, device)?;
            println!(
                "{}: {} (release {}), {} bytes, verified",
                device.display(),
                manifest.release.version,
                manifest.release.sequence,
                manifest.size
            );
        }
        UpdateCommand::Sign { key, board, version, sequence, allow_downgrade, image, out } => {
            let release = update::Release {
                board: board.clone(),
                version: version.clone(),
                sequence: *sequence,
                allow_downgrade: *allow_downgrade,
            };
            let manifest = update::sign(key, &release, image, out)?;
            println!(
                "{}: {board} {version} (release {sequence}{}), {} bytes of image",
                out.display(),
                if *allow_downgrade { ", may downgrade" } else { "" },
                manifest.size
            );
        }
    }
    Ok(())
}
