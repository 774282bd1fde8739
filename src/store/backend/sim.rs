//! A simulated NOR flash for tests, fuzzing and benchmarks.
//!
//! It enforces what real NOR flash demands (aligned writes, each word written at most once
//! between erases, erase leaves 0xFF), counts reads, writes and erases per sector, and cuts
//! the power on request:
//!
//! - [`Cut::AfterByte`]: a clean cut after byte `k` of a write or an erase;
//! - [`Cut::TornWord`]: the words before `word` land, `word` gets a random subset of its 1→0
//!   bits, the rest is untouched;
//! - [`Cut::InterruptedErase`]: an erase leaves random bits in the whole sector;
//! - [`Cut::BeforeOp`]: the cut falls between two whole operations.
//!
//! After a cut every operation fails with [`SimError::PowerCut`] until [`SimFlash::power_cycle`].
//! Every operation can also be recorded ([`SimFlash::record`]) and replayed, which lets a test
//! rebuild the flash as it was at any cut point without rerunning the workload.

use embedded_storage::nor_flash::{ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash};

use super::{Misaccess, check_access};

/// The write granularity of the simulated flash, in bytes.
pub const WORD: usize = 4;

/// Why a simulated operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimError {
    /// The power was cut; nothing more happens until a power cycle.
    PowerCut,
    /// Offset or length not aligned to the word or sector size.
    NotAligned,
    /// Outside the device.
    OutOfBounds,
    /// A word was written twice without an erase in between.
    WordWrittenTwice {
        /// Byte offset of the word.
        offset: usize,
    },
}

impl NorFlashError for SimError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            SimError::NotAligned => NorFlashErrorKind::NotAligned,
            SimError::OutOfBounds => NorFlashErrorKind::OutOfBounds,
            SimError::PowerCut | SimError::WordWrittenTwice { .. } => NorFlashErrorKind::Other,
        }
    }
}

/// One recorded flash operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlashOp {
    /// A write of `data` at `offset`.
    Write {
        /// Byte offset.
        offset: usize,
        /// Bytes written.
        data: Vec<u8>,
    },
    /// An erase of `[from, to)`.
    Erase {
        /// First byte.
        from: usize,
        /// One past the last byte.
        to: usize,
    },
}

/// How a power cut damages the operation it interrupts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Bytes before `k` land (for an erase: are erased); the rest is untouched.
    AfterByte(usize),
    /// Words before `word` land; `word` gets a random subset of its bits; the rest is untouched.
    TornWord {
        /// Index of the torn word within the write.
        word: usize,
        /// Seed for the random bits.
        seed: u64,
    },
    /// The erased range is left holding random bits.
    InterruptedErase {
        /// Seed for the random bits.
        seed: u64,
    },
    /// Nothing of the operation happens.
    BeforeOp,
}

/// Per-sector operation counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SectorCounters {
    /// Read calls touching the sector.
    pub reads: u64,
    /// Write calls touching the sector.
    pub writes: u64,
    /// Erases of the sector.
    pub erases: u64,
}

/// A simulated NOR flash of `ERASE`-byte sectors.
#[derive(Debug, Clone)]
pub struct SimFlash<const ERASE: usize> {
    data: Vec<u8>,
    /// Words programmed since their last erase; a torn write counts as programmed.
    programmed: Vec<bool>,
    counters: Vec<SectorCounters>,
    bytes_written: u64,
    armed: Option<(u64, Cut)>,
    ops_done: u64,
    dead: bool,
    recording: Option<Vec<FlashOp>>,
    multiwrite: bool,
}

impl<const ERASE: usize> SimFlash<ERASE> {
    /// A blank (all 0xFF) flash of `sectors` sectors.
    pub fn new(sectors: usize) -> Self {
        Self::from_image(vec![0xFF; sectors * ERASE])
    }

    /// A flash holding `image`; words that are not 0xFF count as programmed. The image is
    /// truncated to whole sectors.
    pub fn from_image(mut image: Vec<u8>) -> Self {
        image.truncate(image.len() / ERASE * ERASE);
        let programmed = image.chunks(WORD).map(|word| word.iter().any(|&b| b != 0xFF)).collect();
        let sectors = image.len() / ERASE;
        SimFlash {
            data: image,
            programmed,
            counters: vec![SectorCounters::default(); sectors],
            bytes_written: 0,
            armed: None,
            ops_done: 0,
            dead: false,
            recording: None,
            multiwrite: false,
        }
    }

    /// The raw contents.
    pub fn image(&self) -> &[u8] {
        &self.data
    }

    /// Allows words to be written again, each write ANDing bits into the word, as
    /// `MultiwriteNorFlash` devices do (for stores that require it).
    pub fn allow_rewrites(&mut self) {
        self.multiwrite = true;
    }

    /// Starts recording every write and erase.
    pub fn record(&mut self) {
        self.recording = Some(Vec::new());
    }

    /// Stops recording and returns what was recorded.
    pub fn take_recording(&mut self) -> Vec<FlashOp> {
        self.recording.take().unwrap_or_default()
    }

    /// Cuts the power during the write or erase that comes `after_ops` operations from now.
    pub fn arm_cut(&mut self, after_ops: u64, cut: Cut) {
        self.armed = Some((self.ops_done + after_ops, cut));
    }

    /// True once a cut has happened.
    pub fn is_cut(&self) -> bool {
        self.dead
    }

    /// Restores power: clears the cut and any armed cut, keeps the contents.
    pub fn power_cycle(&mut self) {
        self.dead = false;
        self.armed = None;
    }

    /// Writes and erases performed so far.
    pub fn ops_done(&self) -> u64 {
        self.ops_done
    }

    /// Counters per sector.
    pub fn counters(&self) -> &[SectorCounters] {
        &self.counters
    }

    /// Total bytes passed to `write`.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// Applies `op` in full, as if it had been issued through the NorFlash traits.
    pub fn replay(&mut self, op: &FlashOp) -> Result<(), SimError> {
        match op {
            FlashOp::Write { offset, data } => self.do_write(*offset, data, None),
            FlashOp::Erase { from, to } => self.do_erase(*from, *to, None),
        }
    }

    /// Applies `op` up to the damage `cut` describes, and leaves the flash cut.
    pub fn replay_cut(&mut self, op: &FlashOp, cut: Cut) {
        // The result is always `PowerCut`: the damage is the point.
        let _ = match op {
            FlashOp::Write { offset, data } => self.do_write(*offset, data, Some(cut)),
            FlashOp::Erase { from, to } => self.do_erase(*from, *to, Some(cut)),
        };
    }

    fn check(&self, offset: usize, len: usize, align: usize) -> Result<(), SimError> {
        if self.dead {
            return Err(SimError::PowerCut);
        }
        check_access(offset, len, align, self.data.len()).map_err(|misaccess| match misaccess {
            Misaccess::NotAligned => SimError::NotAligned,
            Misaccess::OutOfBounds => SimError::OutOfBounds,
        })
    }

    /// Takes the armed cut if it falls on this operation.
    fn cut_for_this_op(&mut self) -> Option<Cut> {
        let cut = match self.armed {
            Some((at, cut)) if at == self.ops_done => Some(cut),
            _ => None,
        };
        self.ops_done += 1;
        cut
    }

    fn do_write(&mut self, offset: usize, bytes: &[u8], cut: Option<Cut>) -> Result<(), SimError> {
        self.check(offset, bytes.len(), WORD)?;
        let first_word = offset / WORD;
        for word in first_word..first_word + bytes.len() / WORD {
            if self.programmed[word] && !self.multiwrite {
                return Err(SimError::WordWrittenTwice { offset: word * WORD });
            }
        }
        for sector in offset / ERASE..(offset + bytes.len()).div_ceil(ERASE) {
            self.counters[sector].writes += 1;
        }
        self.bytes_written += bytes.len() as u64;
        if let Some(log) = &mut self.recording {
            log.push(FlashOp::Write { offset, data: bytes.to_vec() });
        }
        let landed = match cut {
            None | Some(Cut::InterruptedErase { .. }) => bytes.len(),
            Some(Cut::AfterByte(k)) => k.min(bytes.len()),
            Some(Cut::TornWord { word, .. }) => (word * WORD).min(bytes.len()),
            Some(Cut::BeforeOp) => 0,
        };
        for (i, &b) in bytes[..landed].iter().enumerate() {
            self.data[offset + i] &= b;
        }
        let touched_end = match cut {
            Some(Cut::TornWord { seed, .. }) if landed < bytes.len() => {
                // One seed in four leaves the word weakly programmed: it still reads 0xFF,
                // but it has been written and must not be written again.
                if seed % 4 != 0 {
                    let mut rng = Bits(seed);
                    for (i, &wanted) in bytes.iter().enumerate().skip(landed).take(WORD) {
                        let clear = !wanted & rng.byte();
                        self.data[offset + i] &= !clear;
                    }
                }
                landed + WORD
            }
            Some(Cut::BeforeOp) => 0,
            _ => align_up_word(landed),
        };
        for word in first_word..first_word + touched_end / WORD {
            self.programmed[word] = true;
        }
        if cut.is_some() {
            self.dead = true;
            return Err(SimError::PowerCut);
        }
        Ok(())
    }

    fn do_erase(&mut self, from: usize, to: usize, cut: Option<Cut>) -> Result<(), SimError> {
        self.check(from, to.saturating_sub(from), ERASE)?;
        for sector in from / ERASE..to / ERASE {
            self.counters[sector].erases += 1;
        }
        if let Some(log) = &mut self.recording {
            log.push(FlashOp::Erase { from, to });
        }
        let (erased_end, scrambled) = match cut {
            None => (to, false),
            Some(Cut::AfterByte(k)) => ((from + k).min(to), false),
            Some(Cut::TornWord { .. } | Cut::InterruptedErase { .. }) => (from, true),
            Some(Cut::BeforeOp) => (from, false),
        };
        self.data[from..erased_end].fill(0xFF);
        for word in from / WORD..erased_end.div_ceil(WORD) {
            self.programmed[word] = false;
        }
        if let (true, Some(Cut::TornWord { seed, .. } | Cut::InterruptedErase { seed })) = (scrambled, cut) {
            let mut rng = Bits(seed);
            for byte in &mut self.data[from..to] {
                // Erase drives bits towards 1: an interrupted one leaves some set, some not.
                *byte |= rng.byte() & rng.byte();
            }
            for word in from / WORD..to / WORD {
                self.programmed[word] = true;
            }
        }
        if cut.is_some() {
            self.dead = true;
            return Err(SimError::PowerCut);
        }
        Ok(())
    }
}

/// SplitMix64: a tiny deterministic generator, so that a seed names one exact cut.
struct Bits(u64);

impl Bits {
    fn byte(&mut self) -> u8 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) as u8
    }
}

fn align_up_word(n: usize) -> usize {
    n.div_ceil(WORD) * WORD
}

impl<const ERASE: usize> ErrorType for SimFlash<ERASE> {
    type Error = SimError;
}

impl<const ERASE: usize> ReadNorFlash for SimFlash<ERASE> {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), SimError> {
        let offset = offset as usize;
        self.check(offset, bytes.len(), 1)?;
        for sector in offset / ERASE..(offset + bytes.len()).div_ceil(ERASE) {
            self.counters[sector].reads += 1;
        }
        bytes.copy_from_slice(&self.data[offset..offset + bytes.len()]);
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.data.len()
    }
}

impl<const ERASE: usize> NorFlash for SimFlash<ERASE> {
    const WRITE_SIZE: usize = WORD;
    const ERASE_SIZE: usize = ERASE;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), SimError> {
        let cut = self.cut_for_this_op();
        self.do_erase(from as usize, to as usize, cut)
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), SimError> {
        let cut = self.cut_for_this_op();
        self.do_write(offset as usize, bytes, cut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_write_to_a_word_is_refused() {
        let mut flash = SimFlash::<256>::new(2);
        flash.write(0, &[0x0F; 4]).unwrap();
        assert_eq!(flash.write(0, &[0x0F; 4]), Err(SimError::WordWrittenTwice { offset: 0 }));
        flash.erase(0, 256).unwrap();
        flash.write(0, &[0x0F; 4]).unwrap();
    }

    #[test]
    fn misaligned_write_and_erase_are_refused() {
        let mut flash = SimFlash::<256>::new(2);
        assert_eq!(flash.write(2, &[0; 4]), Err(SimError::NotAligned));
        assert_eq!(flash.erase(0, 100), Err(SimError::NotAligned));
        assert_eq!(flash.write(512, &[0; 4]), Err(SimError::OutOfBounds));
    }

    #[test]
    fn clean_cut_lands_a_prefix_and_kills_the_device() {
        let mut flash = SimFlash::<256>::new(1);
        flash.arm_cut(0, Cut::AfterByte(5));
        assert_eq!(flash.write(0, &[0; 8]), Err(SimError::PowerCut));
        assert_eq!(&flash.image()[..8], &[0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF]);
        assert_eq!(flash.write(8, &[0; 4]), Err(SimError::PowerCut));
        flash.power_cycle();
        // The torn second word counts as programmed even though three bytes still read 0xFF.
        assert_eq!(flash.write(4, &[0; 4]), Err(SimError::WordWrittenTwice { offset: 4 }));
    }

    #[test]
    fn torn_word_only_clears_bits_the_write_wanted_cleared() {
        let mut flash = SimFlash::<256>::new(1);
        flash.arm_cut(0, Cut::TornWord { word: 1, seed: 42 });
        let _ = flash.write(0, &[0xA5; 12]);
        assert_eq!(&flash.image()[..4], &[0xA5; 4]);
        assert!(flash.image()[4..8].iter().all(|&b| b & 0xA5 == 0xA5));
        assert_eq!(&flash.image()[8..12], &[0xFF; 4]);
    }

    #[test]
    fn interrupted_erase_leaves_random_bits_and_counters_count() {
        let mut flash = SimFlash::<256>::new(2);
        flash.write(256, &[0; 256]).unwrap();
        flash.arm_cut(0, Cut::InterruptedErase { seed: 7 });
        assert_eq!(flash.erase(256, 512), Err(SimError::PowerCut));
        let sector = &flash.image()[256..];
        assert!(sector.iter().any(|&b| b != 0xFF) && sector.iter().any(|&b| b != 0));
        assert_eq!(flash.counters()[1], SectorCounters { reads: 0, writes: 1, erases: 1 });
    }
}
