//! A regular file or a raw block partition as NOR flash.
//!
//! Erase writes 0xFF; a write may only clear bits, which is checked against what is on
//! disk, so the store behaves here exactly as on real NOR. Every write and erase is
//! followed by `fdatasync`, so an acknowledged write is on the medium.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use embedded_storage::nor_flash::{ErrorType, NorFlash, ReadNorFlash};
use nix::fcntl::Flock;

use super::{DeviceError, OpenError, SECTOR_SIZE, WORD_SIZE, check_access, lock};

/// A file-backed flash device, locked for this process.
pub struct FileFlash {
    file: Flock<File>,
    capacity: usize,
}

impl FileFlash {
    /// Opens `path`; a missing file is created blank (mode 0600) with `create_capacity`
    /// bytes when that is given.
    pub fn open(path: &Path, create_capacity: Option<usize>) -> Result<Self, OpenError> {
        let io = |source| OpenError::Io { path: path.to_path_buf(), source };
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create_capacity.is_some() => {
                Self::create(path, create_capacity.unwrap_or_default()).map_err(io)?
            }
            Err(e) => return Err(io(e)),
        };
        let mut file = lock(file, path)?;
        // Seeking to the end gives the size of block devices as well as of files.
        let size = file.seek(SeekFrom::End(0)).map_err(io)?;
        let capacity = (size as usize / SECTOR_SIZE) * SECTOR_SIZE;
        if capacity < 4 * SECTOR_SIZE {
            return Err(OpenError::BadSize { path: path.to_path_buf(), size });
        }
        Ok(FileFlash { file, capacity })
    }

    fn create(path: &Path, capacity: usize) -> std::io::Result<File> {
        let file = OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(path)?;
        file.write_all_at(&vec![0xFF; capacity], 0)?;
        file.sync_all()?;
        Ok(file)
    }
}

impl ErrorType for FileFlash {
    type Error = DeviceError;
}

impl ReadNorFlash for FileFlash {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), DeviceError> {
        check_access(offset as usize, bytes.len(), 1, self.capacity)?;
        self.file.read_exact_at(bytes, offset as u64).map_err(DeviceError::Io)
    }

    fn capacity(&self) -> usize {
        self.capacity
    }
}

impl NorFlash for FileFlash {
    const WRITE_SIZE: usize = WORD_SIZE;
    const ERASE_SIZE: usize = SECTOR_SIZE;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), DeviceError> {
        let len = (to as usize).saturating_sub(from as usize);
        check_access(from as usize, len, SECTOR_SIZE, self.capacity)?;
        self.file.write_all_at(&vec![0xFF; len], from as u64).map_err(DeviceError::Io)?;
        self.file.sync_data().map_err(DeviceError::Io)
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), DeviceError> {
        check_access(offset as usize, bytes.len(), WORD_SIZE, self.capacity)?;
        let mut current = vec![0; bytes.len()];
        self.file.read_exact_at(&mut current, offset as u64).map_err(DeviceError::Io)?;
        if let Some(i) = current.iter().zip(bytes).position(|(&old, &new)| old & new != new) {
            return Err(DeviceError::WouldSetBits { offset: offset as usize + i });
        }
        self.file.write_all_at(bytes, offset as u64).map_err(DeviceError::Io)?;
        self.file.sync_data().map_err(DeviceError::Io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_that_would_set_bits_is_refused_and_erase_restores_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.bin");
        let mut flash = FileFlash::open(&path, Some(16 * SECTOR_SIZE)).unwrap();
        flash.write(8, &[0x0F, 0xFF, 0xFF, 0xFF]).unwrap();
        assert!(matches!(flash.write(8, &[0xF0, 0xFF, 0xFF, 0xFF]), Err(DeviceError::WouldSetBits { offset: 8 })));
        flash.erase(0, SECTOR_SIZE as u32).unwrap();
        let mut back = [0; 4];
        flash.read(8, &mut back).unwrap();
        assert_eq!(back, [0xFF; 4]);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn second_opener_gets_a_lock_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.bin");
        let _first = FileFlash::open(&path, Some(16 * SECTOR_SIZE)).unwrap();
        assert!(matches!(FileFlash::open(&path, None), Err(OpenError::Locked(_))));
    }
}
