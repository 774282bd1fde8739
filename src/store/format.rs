//! The on-flash format: sector headers, log entries and the operations they carry.
//!
//! A sector starts with a header that names the format and gives the sector its place in
//! the log (`seq`) and its wear (`erase_count`). Entries follow, each aligned to the write
//! granularity:
//!
//! ```text
//! sector: | magic "PVBX" | version u16 | align_log2 u8 | sector_log2 u8 | seq u32 | erases u32 | crc u32 | pad |
//! entry:  | len u16 | !len u16 | crc32(seq, len, payload) u32 | payload (postcard Vec<Op>) | 0xFF pad |
//! ```
//!
//! One entry is one atomic batch of operations: a cut leaves either the whole entry valid or
//! its CRC broken. `len` is stored twice (plain and inverted) so that a torn header is never
//! mistaken for a length, and an all-0xFF word is never a header.

use serde::{Deserialize, Serialize};

/// Identifies a provbox sector; a foreign image never carries it.
pub const MAGIC: [u8; 4] = *b"PVBX";
/// The on-flash format version. Bump it, and teach `mount` to read the old one, when the
/// layout of headers or entries changes.
pub const FORMAT_VERSION: u16 = 1;
/// Bytes of the sector header before padding.
const SECTOR_HEADER_LEN: usize = 20;
/// Bytes of an entry header.
pub const ENTRY_HEADER_LEN: usize = 8;
/// The largest key the store accepts.
pub const MAX_KEY_LEN: usize = 32;
/// Room kept free in every sector beyond the largest user entry, so that compaction can
/// always add its low-water record to a full sector's worth of copied data.
const COMPACTION_SLACK: usize = 64;

/// Computes the CRC-32 (IEEE) of the concatenation of `parts`.
pub fn crc32(parts: &[&[u8]]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize()
}

/// Rounds `n` up to a multiple of `align` (a power of two).
pub fn align_up(n: usize, align: usize) -> usize {
    (n + align - 1) & !(align - 1)
}

/// True when every byte is erased (0xFF).
pub fn is_blank(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0xFF)
}

/// The shape of a flash device as the store uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Bytes per erasable sector.
    pub sector_size: usize,
    /// Number of sectors.
    pub sector_count: usize,
    /// Alignment of every write: the flash's write size, at least 4.
    pub align: usize,
}

impl Geometry {
    /// Bytes taken by the sector header, padded to the alignment.
    pub fn header_len(&self) -> usize {
        align_up(SECTOR_HEADER_LEN, self.align)
    }

    /// The largest payload one entry (one transaction) may carry.
    pub fn max_entry_payload(&self) -> usize {
        let room = self.sector_size - self.header_len() - ENTRY_HEADER_LEN - COMPACTION_SLACK;
        room.min(u16::MAX as usize)
    }

    /// Bytes an entry with `payload_len` bytes of payload occupies on flash.
    pub fn entry_len(&self, payload_len: usize) -> usize {
        align_up(ENTRY_HEADER_LEN + payload_len, self.align)
    }

    /// Total bytes of the device.
    pub fn capacity(&self) -> usize {
        self.sector_size * self.sector_count
    }
}

/// A decoded, CRC-checked sector header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SectorHeader {
    /// Position of the sector in the log; larger is newer.
    pub seq: u32,
    /// How often this sector has been erased, including the erase before this header.
    pub erase_count: u32,
}

/// What the first bytes of a sector say about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderState {
    /// All 0xFF: never written since the last erase.
    Blank,
    /// A valid provbox header.
    Valid(SectorHeader),
    /// Provbox magic and a good CRC, but a format version this build cannot read.
    UnknownVersion(u16),
    /// Provbox magic and a good CRC, but written for another sector size or alignment.
    OtherGeometry,
    /// Anything else: an interrupted erase or header write, or foreign data.
    Garbage,
}

impl SectorHeader {
    /// Encodes the header into `header_len` bytes (the padding stays 0xFF).
    pub fn encode(&self, geometry: &Geometry) -> Vec<u8> {
        let mut out = vec![0xFF; geometry.header_len()];
        out[0..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[6] = geometry.align.trailing_zeros() as u8;
        out[7] = geometry.sector_size.trailing_zeros() as u8;
        out[8..12].copy_from_slice(&self.seq.to_le_bytes());
        out[12..16].copy_from_slice(&self.erase_count.to_le_bytes());
        let crc = crc32(&[&out[0..16]]);
        out[16..20].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Classifies the first bytes of a sector.
    pub fn decode(bytes: &[u8], geometry: &Geometry) -> HeaderState {
        if bytes.len() < SECTOR_HEADER_LEN {
            return HeaderState::Garbage;
        }
        if is_blank(&bytes[..geometry.header_len().min(bytes.len())]) {
            return HeaderState::Blank;
        }
        let field = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        if bytes[0..4] != MAGIC || field(16) != crc32(&[&bytes[0..16]]) {
            return HeaderState::Garbage;
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if version != FORMAT_VERSION {
            return HeaderState::UnknownVersion(version);
        }
        let align_log2 = geometry.align.trailing_zeros() as u8;
        let sector_log2 = geometry.sector_size.trailing_zeros() as u8;
        if bytes[6] != align_log2 || bytes[7] != sector_log2 {
            return HeaderState::OtherGeometry;
        }
        HeaderState::Valid(SectorHeader { seq: field(8), erase_count: field(12) })
    }
}

/// One operation inside a batch entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op<'a> {
    /// Sets `key` to `value`.
    Put {
        /// The key.
        key: &'a [u8],
        /// The new value.
        value: &'a [u8],
    },
    /// Removes `key`.
    Delete {
        /// The key.
        key: &'a [u8],
    },
}

impl<'a> Op<'a> {
    /// Sets `key` to `value`, or removes it when `value` is `None`.
    pub fn set(key: &'a [u8], value: Option<&'a [u8]>) -> Self {
        match value {
            Some(value) => Op::Put { key, value },
            None => Op::Delete { key },
        }
    }

    /// The key this operation touches.
    pub fn key(&self) -> &'a [u8] {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }
}

/// Encodes a whole entry (header, payload and 0xFF padding) for a sector with `seq`.
pub fn encode_entry(geometry: &Geometry, seq: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u16;
    let mut out = vec![0xFF; geometry.entry_len(payload.len())];
    out[0..2].copy_from_slice(&len.to_le_bytes());
    out[2..4].copy_from_slice(&(!len).to_le_bytes());
    let crc = crc32(&[&seq.to_le_bytes(), &len.to_le_bytes(), payload]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out[ENTRY_HEADER_LEN..ENTRY_HEADER_LEN + payload.len()].copy_from_slice(payload);
    out
}

/// Encodes a batch of operations as an entry payload.
pub fn encode_ops(ops: &[Op<'_>]) -> Vec<u8> {
    // Serializing borrowed slices into a Vec cannot fail: postcard only errors on a full
    // fixed buffer or on types it cannot represent, and `Op` has neither.
    postcard::to_allocvec(ops).expect("postcard encodes Op batches into a Vec")
}

/// Decodes an entry payload; `None` when it is not a valid batch.
pub fn decode_ops(payload: &[u8]) -> Option<Vec<Op<'_>>> {
    postcard::from_bytes(payload).ok()
}

/// What sits at one aligned position inside a sector's data area.
#[derive(Debug, PartialEq, Eq)]
pub enum Slot<'a> {
    /// A valid entry: its payload and its total length on flash.
    Entry {
        /// The batch of operations, still encoded.
        payload: &'a [u8],
        /// Bytes the entry occupies, padding included.
        len: usize,
    },
    /// An erased word: skip it (a gap left after a remount) or, if the rest is blank, stop.
    BlankWord,
    /// A header that cannot be read: a torn write, or corruption. Nothing after it in this
    /// sector is trusted.
    BadHeader,
    /// A readable header whose payload fails its CRC or does not decode: a torn write.
    BadPayload {
        /// Bytes the entry claims to occupy.
        len: usize,
    },
}

/// Reads the slot at `at` in `sector` (a whole sector's bytes) written under `seq`.
pub fn read_slot<'a>(geometry: &Geometry, sector: &'a [u8], seq: u32, at: usize) -> Slot<'a> {
    let Some(header) = sector.get(at..at + ENTRY_HEADER_LEN) else {
        return if is_blank(&sector[at..]) { Slot::BlankWord } else { Slot::BadHeader };
    };
    if is_blank(&header[0..4]) {
        return Slot::BlankWord;
    }
    let len = u16::from_le_bytes([header[0], header[1]]);
    let len_inverted = u16::from_le_bytes([header[2], header[3]]);
    let total = geometry.entry_len(len as usize);
    if len != !len_inverted || at + total > sector.len() {
        return Slot::BadHeader;
    }
    let payload = &sector[at + ENTRY_HEADER_LEN..at + ENTRY_HEADER_LEN + len as usize];
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if crc != crc32(&[&seq.to_le_bytes(), &len.to_le_bytes(), payload]) || decode_ops(payload).is_none() {
        return Slot::BadPayload { len: total };
    }
    Slot::Entry { payload, len: total }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GEOMETRY: Geometry = Geometry { sector_size: 4096, sector_count: 4, align: 4 };

    #[test]
    fn sector_header_round_trips_and_rejects_a_flipped_bit() {
        let header = SectorHeader { seq: 7, erase_count: 3 };
        let mut bytes = header.encode(&GEOMETRY);
        assert_eq!(SectorHeader::decode(&bytes, &GEOMETRY), HeaderState::Valid(header));
        bytes[9] ^= 0x10;
        assert_eq!(SectorHeader::decode(&bytes, &GEOMETRY), HeaderState::Garbage);
    }

    #[test]
    fn header_of_another_sector_size_is_not_valid() {
        let other = Geometry { sector_size: 65536, ..GEOMETRY };
        let bytes = SectorHeader { seq: 1, erase_count: 1 }.encode(&other);
        assert_eq!(SectorHeader::decode(&bytes, &GEOMETRY), HeaderState::OtherGeometry);
    }

    #[test]
    fn entry_round_trips_and_a_torn_payload_is_detected() {
        let ops = [Op::Put { key: b"k", value: b"value" }, Op::Delete { key: b"gone" }];
        let payload = encode_ops(&ops);
        let mut sector = vec![0xFF; 256];
        let entry = encode_entry(&GEOMETRY, 9, &payload);
        sector[..entry.len()].copy_from_slice(&entry);
        match read_slot(&GEOMETRY, &sector, 9, 0) {
            Slot::Entry { payload: read, len } => {
                assert_eq!(len, entry.len());
                assert_eq!(decode_ops(read).as_deref(), Some(&ops[..]));
            }
            other => panic!("expected an entry, got {other:?}"),
        }
        // The same bytes under another sector seq are stale, not valid.
        assert!(matches!(read_slot(&GEOMETRY, &sector, 10, 0), Slot::BadPayload { .. }));
        sector[ENTRY_HEADER_LEN + 2] ^= 0x01;
        assert!(matches!(read_slot(&GEOMETRY, &sector, 9, 0), Slot::BadPayload { .. }));
    }

    #[test]
    fn torn_length_is_a_bad_header_and_blank_is_a_blank_word() {
        let mut sector = vec![0xFF; 64];
        assert_eq!(read_slot(&GEOMETRY, &sector, 1, 0), Slot::BlankWord);
        sector[0] = 0x05; // len written, !len still erased
        assert_eq!(read_slot(&GEOMETRY, &sector, 1, 0), Slot::BadHeader);
    }
}
