//! Flash devices the store runs on, each a [`NorFlash`].
//!
//! The appliance opens its store through [`open`], which picks the MTD backend for
//! `/dev/mtdN` and the file backend for anything else (a regular file or a raw block
//! partition). Both present 4 KiB sectors and 4-byte words, so a store moves between
//! them unchanged.

pub mod file;
pub mod mtd;
pub mod sim;

use std::path::{Path, PathBuf};

use embedded_storage::nor_flash::{ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash};

/// Sector size of the appliance's store, in bytes.
pub const SECTOR_SIZE: usize = 4096;
/// Write granularity of the appliance's store, in bytes.
pub const WORD_SIZE: usize = 4;
/// Size of a store file created on first start: 1,024 sectors, room for the full 5,000
/// devices with space to rewrite them.
pub const DEFAULT_CAPACITY: usize = 4 << 20;

/// An I/O failure of a real flash device.
#[derive(Debug)]
pub enum DeviceError {
    /// Offset or length not aligned to the word or sector size.
    NotAligned,
    /// Outside the device.
    OutOfBounds,
    /// The write would turn a 0 bit back into 1, which NOR flash cannot do without an erase.
    WouldSetBits {
        /// Byte offset of the first offending byte.
        offset: usize,
    },
    /// The operating system reported an error.
    Io(std::io::Error),
}

impl NorFlashError for DeviceError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            DeviceError::NotAligned => NorFlashErrorKind::NotAligned,
            DeviceError::OutOfBounds => NorFlashErrorKind::OutOfBounds,
            DeviceError::WouldSetBits { .. } | DeviceError::Io(_) => NorFlashErrorKind::Other,
        }
    }
}

/// An access that breaks the flash's rules before any I/O happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Misaccess {
    NotAligned,
    OutOfBounds,
}

impl From<Misaccess> for DeviceError {
    fn from(misaccess: Misaccess) -> Self {
        match misaccess {
            Misaccess::NotAligned => DeviceError::NotAligned,
            Misaccess::OutOfBounds => DeviceError::OutOfBounds,
        }
    }
}

/// Checks alignment and bounds of an access.
fn check_access(offset: usize, len: usize, align: usize, capacity: usize) -> Result<(), Misaccess> {
    if !offset.is_multiple_of(align) || !len.is_multiple_of(align) {
        return Err(Misaccess::NotAligned);
    }
    if offset.checked_add(len).is_none_or(|end| end > capacity) {
        return Err(Misaccess::OutOfBounds);
    }
    Ok(())
}

/// Why a store device could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The OS refused.
    #[error("cannot open {path}: {source}")]
    Io {
        /// The device path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Another process holds the store.
    #[error("{0} is in use by another provbox process; stop it first (only one process may write the store)")]
    Locked(PathBuf),
    /// The device is too small or oddly sized.
    #[error("{path} holds {size} bytes; a store needs a multiple of {SECTOR_SIZE} bytes, at least 16 KiB")]
    BadSize {
        /// The device path.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// An MTD device the store cannot use.
    #[error("{path}: {reason}")]
    UnsupportedMtd {
        /// The device path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Any device the appliance can keep its store on.
pub enum AnyFlash {
    /// A regular file or a raw block partition.
    File(file::FileFlash),
    /// A Linux MTD character device.
    Mtd(mtd::MtdFlash),
}

/// Opens the store device at `path`, locked for this process alone. A missing regular file
/// is created blank with `create_capacity` bytes when that is given.
pub fn open(path: &Path, create_capacity: Option<usize>) -> Result<AnyFlash, OpenError> {
    if mtd::is_mtd_path(path) {
        mtd::MtdFlash::open(path).map(AnyFlash::Mtd)
    } else {
        file::FileFlash::open(path, create_capacity).map(AnyFlash::File)
    }
}

impl ErrorType for AnyFlash {
    type Error = DeviceError;
}

impl ReadNorFlash for AnyFlash {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), DeviceError> {
        match self {
            AnyFlash::File(flash) => flash.read(offset, bytes),
            AnyFlash::Mtd(flash) => flash.read(offset, bytes),
        }
    }

    fn capacity(&self) -> usize {
        match self {
            AnyFlash::File(flash) => flash.capacity(),
            AnyFlash::Mtd(flash) => flash.capacity(),
        }
    }
}

impl NorFlash for AnyFlash {
    const WRITE_SIZE: usize = WORD_SIZE;
    const ERASE_SIZE: usize = SECTOR_SIZE;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), DeviceError> {
        match self {
            AnyFlash::File(flash) => flash.erase(from, to),
            AnyFlash::Mtd(flash) => flash.erase(from, to),
        }
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), DeviceError> {
        match self {
            AnyFlash::File(flash) => flash.write(offset, bytes),
            AnyFlash::Mtd(flash) => flash.write(offset, bytes),
        }
    }
}

/// Takes an exclusive, non-blocking `flock` on `file`.
fn lock(file: std::fs::File, path: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, OpenError> {
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        if errno == nix::errno::Errno::EWOULDBLOCK {
            OpenError::Locked(path.to_path_buf())
        } else {
            OpenError::Io { path: path.to_path_buf(), source: errno.into() }
        }
    })
}
