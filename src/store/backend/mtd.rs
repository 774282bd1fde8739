//! A Linux MTD character device (`/dev/mtdN`), for boards with SPI NOR.
//!
//! Geometry comes from the `MEMGETINFO` ioctl and erases go through `MEMERASE`; reads and
//! writes are plain `pread`/`pwrite`, which the MTD layer performs synchronously. The
//! store's 4 KiB sectors must be whole erase blocks: SPI NOR chips erase 4 KiB subsectors
//! when the kernel has `CONFIG_MTD_SPI_NOR_USE_4K_SECTORS` (the default).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use embedded_storage::nor_flash::{ErrorType, NorFlash, ReadNorFlash};
use nix::fcntl::Flock;

use super::{DeviceError, OpenError, SECTOR_SIZE, WORD_SIZE, check_access, lock};

/// `struct mtd_info_user` from `<mtd/mtd-abi.h>`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct MtdInfoUser {
    /// `MTD_NORFLASH`, `MTD_NANDFLASH`, ...
    pub kind: u8,
    /// `MTD_WRITEABLE` and friends.
    pub flags: u32,
    /// Total size in bytes.
    pub size: u32,
    /// Erase block size in bytes.
    pub erasesize: u32,
    /// Minimal write unit in bytes.
    pub writesize: u32,
    /// Out-of-band bytes per page.
    pub oobsize: u32,
    /// Reserved by the kernel ABI.
    pub padding: u64,
}

/// `struct erase_info_user` from `<mtd/mtd-abi.h>`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EraseInfoUser {
    /// First byte to erase.
    pub start: u32,
    /// Bytes to erase, a multiple of the erase size.
    pub length: u32,
}

/// The two MTD ioctls the store needs: with their two call sites, the crate's other FFI edge.
#[allow(unsafe_code)]
mod ioctl {
    use super::{EraseInfoUser, MtdInfoUser};
    nix::ioctl_read!(mem_get_info, b'M', 1, MtdInfoUser);
    nix::ioctl_write_ptr!(mem_erase, b'M', 2, EraseInfoUser);
}
use ioctl::{mem_erase, mem_get_info};

/// `MTD_RAM` devices (mtdram, for testing) behave like NOR.
const MTD_RAM: u8 = 1;
/// `MTD_NORFLASH`.
const MTD_NORFLASH: u8 = 3;
/// `MTD_WRITEABLE`.
const MTD_WRITEABLE: u32 = 0x400;

/// True for paths naming an MTD character device.
pub fn is_mtd_path(path: &Path) -> bool {
    path.to_str()
        .and_then(|p| p.strip_prefix("/dev/mtd"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// An MTD device, locked for this process.
pub struct MtdFlash {
    file: Flock<File>,
    capacity: usize,
}

impl MtdFlash {
    /// Opens `/dev/mtdN` and checks that its geometry suits the store.
    #[allow(unsafe_code)] // MEMGETINFO, see the SAFETY note below.
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        let io = |source| OpenError::Io { path: path.to_path_buf(), source };
        let file = OpenOptions::new().read(true).write(true).open(path).map_err(io)?;
        let file = lock(file, path)?;
        let mut info = MtdInfoUser::default();
        // SAFETY: the fd is an open MTD device and `info` is a properly sized, writable
        // `mtd_info_user` that outlives the call.
        unsafe { mem_get_info(file.as_raw_fd(), &mut info) }.map_err(|e| io(e.into()))?;
        let unsupported = |reason: String| OpenError::UnsupportedMtd { path: path.to_path_buf(), reason };
        if info.kind != MTD_NORFLASH && info.kind != MTD_RAM {
            return Err(unsupported(format!(
                "MTD type {} is not NOR flash; NAND needs UBI, which provbox does not use",
                info.kind
            )));
        }
        if info.flags & MTD_WRITEABLE == 0 {
            return Err(unsupported("the partition is read-only".into()));
        }
        if info.erasesize == 0
            || info.erasesize as usize > SECTOR_SIZE
            || !SECTOR_SIZE.is_multiple_of(info.erasesize as usize)
        {
            return Err(unsupported(format!(
                "erase block of {} bytes does not divide the store's {SECTOR_SIZE}-byte sector; enable CONFIG_MTD_SPI_NOR_USE_4K_SECTORS",
                info.erasesize
            )));
        }
        if info.writesize == 0 || !WORD_SIZE.is_multiple_of(info.writesize as usize) {
            return Err(unsupported(format!("write size {} does not divide {WORD_SIZE}", info.writesize)));
        }
        let capacity = info.size as usize / SECTOR_SIZE * SECTOR_SIZE;
        if capacity < 4 * SECTOR_SIZE {
            return Err(OpenError::BadSize { path: path.to_path_buf(), size: info.size as u64 });
        }
        Ok(MtdFlash { file, capacity })
    }
}

impl ErrorType for MtdFlash {
    type Error = DeviceError;
}

impl ReadNorFlash for MtdFlash {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), DeviceError> {
        check_access(offset as usize, bytes.len(), 1, self.capacity)?;
        self.file.read_exact_at(bytes, offset as u64).map_err(DeviceError::Io)
    }

    fn capacity(&self) -> usize {
        self.capacity
    }
}

impl NorFlash for MtdFlash {
    const WRITE_SIZE: usize = WORD_SIZE;
    const ERASE_SIZE: usize = SECTOR_SIZE;

    #[allow(unsafe_code)] // MEMERASE, see the SAFETY note below.
    fn erase(&mut self, from: u32, to: u32) -> Result<(), DeviceError> {
        check_access(from as usize, (to as usize).saturating_sub(from as usize), SECTOR_SIZE, self.capacity)?;
        let request = EraseInfoUser { start: from, length: to - from };
        // SAFETY: the fd is an open MTD device and `request` is a valid `erase_info_user`
        // that the kernel only reads during the call.
        unsafe { mem_erase(self.file.as_raw_fd(), &request) }.map_err(|e| DeviceError::Io(e.into()))?;
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), DeviceError> {
        check_access(offset as usize, bytes.len(), WORD_SIZE, self.capacity)?;
        self.file.write_all_at(bytes, offset as u64).map_err(DeviceError::Io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_request_codes_match_the_kernel_abi() {
        // Values of MEMGETINFO and MEMERASE as <mtd/mtd-abi.h> defines them on Linux.
        assert_eq!(std::mem::size_of::<MtdInfoUser>(), 32);
        assert_eq!(std::mem::size_of::<EraseInfoUser>(), 8);
        assert_eq!(nix::request_code_read!(b'M', 1, std::mem::size_of::<MtdInfoUser>()) as u32, 0x8020_4d01);
        assert_eq!(nix::request_code_write!(b'M', 2, std::mem::size_of::<EraseInfoUser>()) as u32, 0x4008_4d02);
    }

    #[test]
    fn only_dev_mtd_n_paths_are_mtd() {
        assert!(is_mtd_path(Path::new("/dev/mtd3")));
        assert!(!is_mtd_path(Path::new("/dev/mtdblock3")));
        assert!(!is_mtd_path(Path::new("/dev/mtd")));
        assert!(!is_mtd_path(Path::new("./provbox-data/store.bin")));
    }
}
