//! The log engine: mount, atomic commits, compaction and wear levelling over any
//! [`NorFlash`].
//!
//! # How it stays correct across power cuts
//!
//! - **One entry, one transaction.** A commit is a single entry (see `format`); its CRC
//!   decides whether all of its operations happened or none did.
//! - **Never append after doubt.** A sector written before this mount is never written
//!   again until it has been erased: a cut can leave words that read erased but are
//!   programmed, so the first commit after mount opens a freshly erased sector.
//! - **Retirement is a record.** Compaction copies the live records of the oldest sector
//!   forward and, in the same last entry, raises the *low-water mark*: every sector whose
//!   seq is below it is dead. A cut before that entry is whole leaves the old sector live
//!   (its copies are harmless duplicates); a cut after leaves it retired. An interrupted
//!   erase that leaves an old header readable cannot resurrect anything, because its seq
//!   is below the mark.
//! - **Tombstones die with the oldest sector.** A delete is dropped only when the sector
//!   holding it is the oldest live one, so nothing older can come back.
//! - **Space for compaction is reserved.** A put may open a new sector only while two
//!   others stay reclaimable; compaction needs at most what is kept.

use std::collections::BTreeMap;

use embedded_storage::nor_flash::{NorFlash, NorFlashError, NorFlashErrorKind};

use super::format::{
    self, ENTRY_HEADER_LEN, Geometry, HeaderState, MAX_KEY_LEN, Op, SectorHeader, Slot as FlashSlot, is_blank,
};

/// Keys beginning with this byte belong to the engine itself.
const ENGINE_KEY_PREFIX: u8 = 0x00;
/// The engine's record of its low-water mark (a little-endian u32 sector seq).
const LOW_WATER_KEY: &[u8] = &[ENGINE_KEY_PREFIX, b'L'];
/// Reclaimable sectors a put must leave behind when it opens a new sector: one for
/// compaction to copy into, one so that deletes can still free space on a full store.
const KEEP_FREE_FOR_PUTS: usize = 2;
/// Reclaimable sectors a delete-only commit must leave behind.
const KEEP_FREE_FOR_DELETES: usize = 1;
/// How many erases the oldest live sector may lag behind the most-worn sector before its
/// (static) records are moved, so that its sector rejoins the rotation.
const WEAR_LAG_LIMIT: u32 = 2;

/// A key as the store holds it.
pub type Key = heapless::Vec<u8, MAX_KEY_LEN>;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// The flash device reported an error.
    #[error("flash error ({kind:?}): {detail}")]
    Flash {
        /// The error class.
        kind: NorFlashErrorKind,
        /// The backend's own description.
        detail: String,
    },
    /// Not enough space even after compaction; nothing was written.
    #[error("store full: {live_bytes} bytes of live data leave no room for {needed} more; remove records first")]
    Full {
        /// Bytes the rejected commit needed.
        needed: usize,
        /// Live bytes held.
        live_bytes: usize,
    },
    /// A key longer than [`MAX_KEY_LEN`] or empty.
    #[error("key length {0} is outside 1..={MAX_KEY_LEN}")]
    BadKeyLength(usize),
    /// A key in the engine's reserved range.
    #[error("keys starting with 0x00 are reserved for the store itself")]
    ReservedKey,
    /// A transaction too large for one sector.
    #[error("transaction of {size} bytes exceeds the {max}-byte limit of one entry")]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The image carries no provbox sector but is not blank either.
    #[error("not a provbox store: {0}; refusing to touch it (`provbox store format` erases it)")]
    NotRecognised(String),
    /// A sector written by a newer provbox.
    #[error("sector {sector} uses store format version {version}, which this provbox cannot read; upgrade provbox")]
    UnknownVersion {
        /// Sector index.
        sector: usize,
        /// The version found.
        version: u16,
    },
    /// A sector written with another sector size or write alignment.
    #[error("sector {0} was written for another flash geometry; use the device it was made for")]
    OtherGeometry(usize),
    /// The flash shape cannot hold a store.
    #[error("unsupported flash geometry: {0}")]
    Geometry(String),
}

fn flash_error<E: NorFlashError>(error: E) -> StoreError {
    StoreError::Flash { kind: error.kind(), detail: format!("{error:?}") }
}

/// What a sector holds, as the engine tracks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SectorState {
    /// Erased, retired or unreadable; erased again before use. `erase_count` is unknown for
    /// a sector whose header was lost.
    Free {
        /// Erases so far, when known.
        erase_count: Option<u32>,
    },
    /// Part of the log.
    Active {
        /// Position in the log.
        seq: u32,
        /// Erases so far.
        erase_count: u32,
    },
}

impl SectorState {
    /// Erases so far, when known.
    pub fn erase_count(&self) -> Option<u32> {
        match *self {
            SectorState::Active { erase_count, .. } => Some(erase_count),
            SectorState::Free { erase_count } => erase_count,
        }
    }
}

/// Bookkeeping for one sector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SectorInfo {
    /// Its state.
    pub state: SectorState,
    /// Records in it that are the latest for their key.
    pub live_records: u32,
    /// Encoded bytes of those records.
    pub live_bytes: u32,
    /// Bytes of the data area in use (entries, gaps and torn tails).
    pub used_bytes: u32,
}

#[derive(Debug, Clone)]
struct Slot {
    /// `None` for a tombstone that must outlive older copies of the key.
    value: Option<Box<[u8]>>,
    sector: usize,
    op_len: u32,
}

#[derive(Debug, Clone, Copy)]
struct Head {
    sector: usize,
    seq: u32,
    offset: usize,
}

/// Counters for write amplification.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteCounters {
    /// Key and value bytes handed to `commit`.
    pub logical_bytes: u64,
    /// Bytes written to flash, headers and compaction copies included.
    pub flash_bytes: u64,
    /// Sector erases issued.
    pub erases: u64,
}

/// A mounted store over the flash `F`.
pub struct Store<F: NorFlash> {
    flash: F,
    geometry: Geometry,
    sectors: Vec<SectorInfo>,
    index: BTreeMap<Key, Slot>,
    head: Option<Head>,
    next_seq: u32,
    counters: WriteCounters,
}

/// The size of `op` inside a postcard batch.
fn op_len(op: &Op<'_>) -> u32 {
    fn varint_len(n: usize) -> usize {
        let bits = usize::BITS - n.leading_zeros();
        (bits.max(1) as usize).div_ceil(7)
    }
    let key = op.key();
    let len = 1 + varint_len(key.len()) + key.len();
    match op {
        Op::Put { value, .. } => (len + varint_len(value.len()) + value.len()) as u32,
        Op::Delete { .. } => len as u32,
    }
}

/// Reads the geometry of `flash` and checks that a store fits on it.
pub fn geometry_of<F: NorFlash>(flash: &F) -> Result<Geometry, StoreError> {
    let align = F::WRITE_SIZE.max(4);
    let sector_size = F::ERASE_SIZE;
    let sector_count = flash.capacity() / sector_size.max(1);
    let fits = align.is_power_of_two()
        && align <= 64
        && align.is_multiple_of(F::READ_SIZE.max(1))
        && sector_size.is_power_of_two()
        && (512..=1 << 20).contains(&sector_size);
    if !fits {
        return Err(StoreError::Geometry(format!(
            "write size {}, read size {}, sector size {sector_size}",
            F::WRITE_SIZE,
            F::READ_SIZE
        )));
    }
    if sector_count < 4 {
        return Err(StoreError::Geometry(format!("{sector_count} sectors; the store needs at least 4")));
    }
    Ok(Geometry { sector_size, sector_count, align })
}

/// How the data area of one active sector ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// Erased from `free_from` to the end.
    Clean {
        /// First erased byte.
        free_from: usize,
    },
    /// An unfinished write at `offset`, erased after it: what a power cut leaves.
    Torn {
        /// Sector-relative offset.
        offset: usize,
    },
    /// Unreadable data at `offset` followed by more data: damage, not a cut.
    Corrupt {
        /// Sector-relative offset.
        offset: usize,
    },
}

/// One sector as read from flash.
#[derive(Debug)]
pub struct SectorScan<'a> {
    /// Its header.
    pub header: HeaderState,
    /// Payloads of its valid entries, in order.
    pub entries: Vec<&'a [u8]>,
    /// How its data ends (meaningless unless the header is valid).
    pub tail: Tail,
}

/// Reads one sector's header and entries.
pub fn scan_sector<'a>(geometry: &Geometry, bytes: &'a [u8]) -> SectorScan<'a> {
    let header = SectorHeader::decode(bytes, geometry);
    let HeaderState::Valid(SectorHeader { seq, .. }) = header else {
        return SectorScan { header, entries: Vec::new(), tail: Tail::Clean { free_from: bytes.len() } };
    };
    scan_entries(geometry, bytes, header, seq)
}

/// Reads the entries of a sector at log position `seq` (their checksums include it).
fn scan_entries<'a>(geometry: &Geometry, bytes: &'a [u8], header: HeaderState, seq: u32) -> SectorScan<'a> {
    let mut entries = Vec::new();
    let mut at = geometry.header_len();
    let tail = loop {
        if at >= bytes.len() {
            break Tail::Clean { free_from: bytes.len() };
        }
        let damaged_until = match format::read_slot(geometry, bytes, seq, at) {
            FlashSlot::Entry { payload, len } => {
                entries.push(payload);
                at += len;
                continue;
            }
            FlashSlot::BlankWord if is_blank(&bytes[at..]) => break Tail::Clean { free_from: at },
            FlashSlot::BlankWord => {
                at += geometry.align;
                continue;
            }
            FlashSlot::BadHeader => at + format::align_up(ENTRY_HEADER_LEN, geometry.align),
            FlashSlot::BadPayload { len } => at + len,
        };
        let after = bytes.get(damaged_until..).unwrap_or_default();
        break if is_blank(after) { Tail::Torn { offset: at } } else { Tail::Corrupt { offset: at } };
    };
    SectorScan { header, entries, tail }
}

/// The low-water mark the entries of `scans`' valid sectors record: sectors below it are
/// retired.
fn low_water_of(scans: &[SectorScan<'_>]) -> u32 {
    valid_headers(scans)
        .headers
        .iter()
        .flat_map(|(i, _)| scans[*i].entries.iter().filter_map(|payload| format::decode_ops(payload)))
        .flatten()
        .filter_map(|op| match op {
            Op::Put { key, value } if key == LOW_WATER_KEY => <[u8; 4]>::try_from(value).ok().map(u32::from_le_bytes),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

/// Gives back the records of sectors whose header is damaged (one flipped bit fails its
/// CRC) but whose entries still verify: an entry's checksum covers its sector's log
/// position, so the one unused live position under which the first entry verifies is the
/// sector's. Such a sector is read as if its header were whole (and is rewritten, with a
/// new header, when compaction reaches it). A retired sector whose erase was cut cannot come
/// back this way: its entries verify only under its old position, below the low-water mark.
/// Returns each recovered sector with its position; `scans` then holds them as valid.
pub fn recover_damaged_headers<'a>(
    geometry: &Geometry,
    image: &'a [u8],
    scans: &mut [SectorScan<'a>],
) -> Vec<(usize, u32)> {
    if !scans.iter().any(|scan| scan.header == HeaderState::Garbage) {
        return Vec::new();
    }
    let valid = valid_headers(scans).headers;
    // With no whole header left (a store of one sector), positions are counted from 0.
    let highest = valid.iter().map(|(_, header)| header.seq).max().unwrap_or(0);
    let erase_count = valid.iter().map(|(_, header)| header.erase_count).max().unwrap_or(0);
    let mut used: std::collections::HashSet<u32> = valid.iter().map(|(_, header)| header.seq).collect();
    let low_water = low_water_of(scans);
    // Live positions lie near the highest whole one; a forged image must not make mount try
    // billions (a few thousand CRCs of one entry per damaged sector at most).
    let span = 4 * scans.len() as u32;
    let candidates = low_water.max(highest.saturating_sub(span))..=highest.saturating_add(scans.len() as u32);
    let mut recovered = Vec::new();
    for (index, bytes) in image.chunks(geometry.sector_size).enumerate() {
        if scans.get(index).is_none_or(|scan| scan.header != HeaderState::Garbage) {
            continue;
        }
        let verifies = |seq: u32| {
            matches!(format::read_slot(geometry, bytes, seq, geometry.header_len()), FlashSlot::Entry { .. })
        };
        if let Some(seq) = candidates.clone().find(|seq| !used.contains(seq) && verifies(*seq)) {
            scans[index] = scan_entries(geometry, bytes, HeaderState::Valid(SectorHeader { seq, erase_count }), seq);
            used.insert(seq);
            recovered.push((index, seq));
        }
    }
    recovered
}

impl<F: NorFlash> Store<F> {
    /// Mounts the store on `flash`, reading every sector once; later reads come from RAM.
    ///
    /// Blank flash mounts as an empty store. Mount never writes: repairs happen lazily as
    /// sectors are reused, so a cut during recovery is no different from any other cut.
    pub fn mount(mut flash: F) -> Result<Self, StoreError> {
        let geometry = geometry_of(&flash)?;
        let mut image = vec![0xFF; geometry.capacity()];
        for (i, sector) in image.chunks_mut(geometry.sector_size).enumerate() {
            flash.read((i * geometry.sector_size) as u32, sector).map_err(flash_error)?;
        }
        let mut scans: Vec<SectorScan<'_>> =
            image.chunks(geometry.sector_size).map(|bytes| scan_sector(&geometry, bytes)).collect();
        recognise(&geometry, &scans)?;
        recover_damaged_headers(&geometry, &image, &mut scans);

        let mut headers = valid_headers(&scans).headers;
        headers.sort_by_key(|(_, h)| h.seq);
        let max_seq = headers.iter().map(|(_, h)| h.seq).max();
        let next_seq = match max_seq {
            None => 0,
            Some(seq) => seq.checked_add(1).ok_or_else(|| {
                StoreError::Geometry("sector sequence numbers are exhausted; reformat the store".into())
            })?,
        };
        let known_erases = headers.iter().map(|(_, h)| h.erase_count).max();
        let mut sectors: Vec<SectorInfo> = scans
            .iter()
            .map(|scan| SectorInfo {
                state: SectorState::Free {
                    erase_count: if scan.header == HeaderState::Blank { Some(0) } else { known_erases },
                },
                live_records: 0,
                live_bytes: 0,
                used_bytes: 0,
            })
            .collect();

        let decoded: Vec<Vec<Vec<Op<'_>>>> = headers
            .iter()
            .map(|&(i, _)| scans[i].entries.iter().filter_map(|p| format::decode_ops(p)).collect())
            .collect();
        let low_water = decoded
            .iter()
            .flat_map(|entries| entries.iter().flatten())
            .filter_map(|op| match op {
                Op::Put { key, value } if *key == LOW_WATER_KEY => {
                    <[u8; 4]>::try_from(*value).ok().map(u32::from_le_bytes)
                }
                _ => None,
            })
            .max()
            .unwrap_or(0);

        let mut index = BTreeMap::new();
        for ((i, header), entries) in headers.iter().zip(&decoded) {
            let info = &mut sectors[*i];
            info.state = SectorState::Free { erase_count: Some(header.erase_count) };
            if header.seq < low_water {
                continue;
            }
            info.state = SectorState::Active { seq: header.seq, erase_count: header.erase_count };
            info.used_bytes = match scans[*i].tail {
                Tail::Clean { free_from } => free_from - geometry.header_len(),
                Tail::Torn { .. } | Tail::Corrupt { .. } => geometry.sector_size - geometry.header_len(),
            } as u32;
            for op in entries.iter().flatten() {
                apply(&mut index, &mut sectors, *i, op);
            }
        }
        // Never resume appending in a sector written before this mount: a write cut at its
        // first word can leave words that read erased but are programmed ("weak"), and
        // repeated cuts stack them past any fixed gap. The first commit opens a freshly
        // erased sector instead; compaction reclaims the rest of the old one.
        let head = None;
        Ok(Store { flash, geometry, sectors, index, head, next_seq, counters: WriteCounters::default() })
    }

    /// Erases every sector and mounts the result as an empty store.
    pub fn format(mut flash: F) -> Result<Self, StoreError> {
        let geometry = geometry_of(&flash)?;
        flash.erase(0, geometry.capacity() as u32).map_err(flash_error)?;
        Self::mount(flash)
    }

    /// The flash, for inspection.
    pub fn flash(&self) -> &F {
        &self.flash
    }

    /// Gives the flash back.
    pub fn into_flash(self) -> F {
        self.flash
    }

    /// The value of `key`, from RAM.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.index.get(key)?.value.as_deref()
    }

    /// All live user records whose key starts with `prefix`, in key order.
    pub fn iter_prefix<'s>(&'s self, prefix: &'s [u8]) -> impl Iterator<Item = (&'s [u8], &'s [u8])> + 's {
        self.index
            .range::<[u8], _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
            .take_while(move |(key, _)| key.starts_with(prefix))
            .filter(|(key, _)| key.first() != Some(&ENGINE_KEY_PREFIX))
            .filter_map(|(key, slot)| Some((key.as_slice(), slot.value.as_deref()?)))
    }

    /// The live user record with the greatest key that starts with `prefix`, found from the
    /// end of the range (queues ask for their tail on every append).
    pub fn last_with_prefix<'s>(&'s self, prefix: &[u8]) -> Option<(&'s [u8], &'s [u8])> {
        let mut end = prefix.to_vec();
        // The first key past every key that starts with `prefix`: the prefix with its last
        // byte below 0xff raised by one (and the 0xff bytes after it dropped); none if the
        // prefix is all 0xff, where the range runs to the end.
        while end.last() == Some(&0xff) {
            end.pop();
        }
        let upper = match end.last_mut() {
            Some(byte) => {
                *byte += 1;
                std::ops::Bound::Excluded(end.as_slice())
            }
            None => std::ops::Bound::Unbounded,
        };
        self.index
            .range::<[u8], _>((std::ops::Bound::Included(prefix), upper))
            .rev()
            .filter(|(key, _)| key.first() != Some(&ENGINE_KEY_PREFIX))
            .find_map(|(key, slot)| Some((key.as_slice(), slot.value.as_deref()?)))
    }

    /// Bytes of live records the store can still take, packed (what compaction can make
    /// room for while keeping its own spare sectors).
    pub fn room(&self) -> usize {
        let usable = self.sectors.len().saturating_sub(KEEP_FREE_FOR_PUTS + 1);
        (usable * self.geometry.max_entry_payload()).saturating_sub(self.live_bytes())
    }

    /// Bytes of live records the store can take when empty.
    pub fn usable_capacity(&self) -> usize {
        self.sectors.len().saturating_sub(KEEP_FREE_FOR_PUTS + 1) * self.geometry.max_entry_payload()
    }

    /// Number of live user records.
    pub fn len(&self) -> usize {
        self.iter_prefix(&[]).count()
    }

    /// True when no user record is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sets `key` to `value`.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.commit(&[Op::Put { key, value }])
    }

    /// Removes `key`; removing a missing key is not an error.
    pub fn delete(&mut self, key: &[u8]) -> Result<(), StoreError> {
        self.commit(&[Op::Delete { key }])
    }

    /// Applies `ops` atomically: after any power cut, all of them or none are visible.
    /// Returns once the entry is on flash.
    pub fn commit(&mut self, ops: &[Op<'_>]) -> Result<(), StoreError> {
        for op in ops {
            let key = op.key();
            if key.is_empty() || key.len() > MAX_KEY_LEN {
                return Err(StoreError::BadKeyLength(key.len()));
            }
            if key[0] == ENGINE_KEY_PREFIX {
                return Err(StoreError::ReservedKey);
            }
        }
        // A delete of a key that holds nothing, before or earlier in this batch, changes
        // nothing; leave it out.
        let ops: Vec<Op<'_>> = ops
            .iter()
            .enumerate()
            .filter(|(i, op)| {
                matches!(op, Op::Put { .. })
                    || self.get(op.key()).is_some()
                    || ops[..*i].iter().any(|earlier| earlier.key() == op.key())
            })
            .map(|(_, op)| op.clone())
            .collect();
        if ops.is_empty() {
            return Ok(());
        }
        let payload = format::encode_ops(&ops);
        let max = self.geometry.max_entry_payload();
        if payload.len() > max {
            return Err(StoreError::TooLarge { size: payload.len(), max });
        }
        let deletes_only = ops.iter().all(|op| matches!(op, Op::Delete { .. }));
        let keep_free = if deletes_only { KEEP_FREE_FOR_DELETES } else { KEEP_FREE_FOR_PUTS };
        self.make_room(self.geometry.entry_len(payload.len()), keep_free)?;
        let sector = self.append(&payload)?;
        self.counters.logical_bytes += ops.iter().map(|op| op_len(op) as u64).sum::<u64>();
        for op in &ops {
            apply(&mut self.index, &mut self.sectors, sector, op);
        }
        Ok(())
    }

    /// Compacts every sector but the newest once, reclaiming all dead space.
    pub fn compact(&mut self) -> Result<(), StoreError> {
        let rounds = self.active_sectors().len();
        for _ in 0..rounds {
            if !self.compact_oldest()? {
                break;
            }
        }
        Ok(())
    }

    /// The largest encoded batch [`Store::commit`] accepts: one sector's payload.
    pub fn max_commit_len(&self) -> usize {
        self.geometry.max_entry_payload()
    }

    /// Per-sector bookkeeping, by physical index.
    pub fn sectors(&self) -> &[SectorInfo] {
        &self.sectors
    }

    /// Write-amplification counters since mount.
    pub fn counters(&self) -> WriteCounters {
        self.counters
    }

    /// Live user records and their bytes, by first key byte.
    pub fn records_by_prefix(&self) -> BTreeMap<u8, (usize, usize)> {
        let mut counts = BTreeMap::new();
        for (key, value) in self.iter_prefix(&[]) {
            let entry = counts.entry(key[0]).or_insert((0, 0));
            entry.0 += 1;
            entry.1 += key.len() + value.len();
        }
        counts
    }

    fn active_sectors(&self) -> Vec<(u32, usize)> {
        let mut active: Vec<(u32, usize)> = self
            .sectors
            .iter()
            .enumerate()
            .filter_map(|(i, info)| match info.state {
                SectorState::Active { seq, .. } => Some((seq, i)),
                SectorState::Free { .. } => None,
            })
            .collect();
        active.sort_unstable();
        active
    }

    /// A sector can be erased and reused: it is free, or active with nothing live and not
    /// the head.
    fn is_reclaimable(&self, i: usize) -> bool {
        let info = &self.sectors[i];
        match info.state {
            SectorState::Free { .. } => true,
            SectorState::Active { .. } => info.live_records == 0 && self.head.is_none_or(|h| h.sector != i),
        }
    }

    fn reclaimable_count(&self) -> usize {
        (0..self.sectors.len()).filter(|&i| self.is_reclaimable(i)).count()
    }

    fn head_room(&self) -> usize {
        self.head.map_or(0, |h| self.geometry.sector_size - h.offset)
    }

    fn live_bytes(&self) -> usize {
        self.sectors.iter().map(|s| s.live_bytes as usize).sum()
    }

    /// Ensures the head can take `entry_len` bytes, opening or compacting sectors as needed
    /// while leaving `keep_free` sectors reclaimable.
    fn make_room(&mut self, entry_len: usize, keep_free: usize) -> Result<(), StoreError> {
        // Packed, the live data needs about this many sectors; refuse early rather than
        // rotating the whole store to find out.
        let per_sector = self.geometry.max_entry_payload();
        let needed_sectors = (self.live_bytes() + entry_len).div_ceil(per_sector);
        if needed_sectors + keep_free + 1 > self.sectors.len() {
            return Err(StoreError::Full { needed: entry_len, live_bytes: self.live_bytes() });
        }
        for _ in 0..=self.sectors.len() {
            if self.head_room() >= entry_len {
                return Ok(());
            }
            if self.reclaimable_count() > keep_free {
                self.level_wear()?;
                if self.head_room() < entry_len {
                    self.open_sector()?;
                }
                return Ok(());
            }
            if !self.compact_oldest()? {
                break;
            }
        }
        Err(StoreError::Full { needed: entry_len, live_bytes: self.live_bytes() })
    }

    /// Moves the records of the least-worn live sector when its erase count lags too far
    /// behind the most-worn sector, so that sectors holding data that never changes still
    /// take their share of erases.
    fn level_wear(&mut self) -> Result<(), StoreError> {
        let most_worn = self.sectors.iter().filter_map(|info| info.state.erase_count()).max().unwrap_or(0);
        let least_worn_live =
            self.live_sectors().filter_map(|(_, i)| Some((self.sectors[i].state.erase_count()?, i))).min();
        let Some((count, sector)) = least_worn_live else { return Ok(()) };
        if count + WEAR_LAG_LIMIT > most_worn {
            return Ok(());
        }
        match self.oldest_live() {
            Some((seq, oldest)) if oldest == sector => self.move_records(sector, Some(seq)),
            _ => self.move_records(sector, None),
        }
    }

    /// Erases a reclaimable sector, the least worn one, and makes it the head.
    fn open_sector(&mut self) -> Result<usize, StoreError> {
        // A sector whose header was lost has an unknown count: use it last, and assume
        // it is as worn as the most-worn known sector.
        let erase_estimate = |i: usize| self.sectors[i].state.erase_count().unwrap_or(u32::MAX);
        let count = self.sectors.len();
        let after_head = self.head.map_or(0, |h| h.sector + 1);
        let chosen = (0..count)
            .map(|step| (after_head + step) % count)
            .filter(|&i| self.is_reclaimable(i))
            .min_by_key(|&i| erase_estimate(i))
            .ok_or(StoreError::Full { needed: self.geometry.sector_size, live_bytes: self.live_bytes() })?;
        let known_max = self.sectors.iter().filter_map(|info| info.state.erase_count()).max().unwrap_or(0);
        let erase_count = self.sectors[chosen].state.erase_count().unwrap_or(known_max).saturating_add(1);

        let seq = self.next_seq;
        let next_seq = seq
            .checked_add(1)
            .ok_or_else(|| StoreError::Geometry("sector sequence numbers are exhausted; reformat the store".into()))?;
        let start = chosen * self.geometry.sector_size;
        self.sectors[chosen] = SectorInfo {
            state: SectorState::Free { erase_count: None },
            live_records: 0,
            live_bytes: 0,
            used_bytes: 0,
        };
        self.counters.erases += 1;
        self.flash.erase(start as u32, (start + self.geometry.sector_size) as u32).map_err(flash_error)?;
        let header = SectorHeader { seq, erase_count }.encode(&self.geometry);
        self.counters.flash_bytes += header.len() as u64;
        self.flash.write(start as u32, &header).map_err(flash_error)?;
        self.next_seq = next_seq;
        self.sectors[chosen].state = SectorState::Active { seq, erase_count };
        self.head = Some(Head { sector: chosen, seq, offset: self.geometry.header_len() });
        Ok(chosen)
    }

    /// Writes one entry at the head, which must have room. On a flash error the head is
    /// abandoned: what the failed write left behind is never written over.
    fn append(&mut self, payload: &[u8]) -> Result<usize, StoreError> {
        let head = self.head.take().ok_or(StoreError::Full { needed: payload.len(), live_bytes: self.live_bytes() })?;
        let entry = format::encode_entry(&self.geometry, head.seq, payload);
        let offset = head.sector * self.geometry.sector_size + head.offset;
        self.counters.flash_bytes += entry.len() as u64;
        self.sectors[head.sector].used_bytes += entry.len() as u32;
        self.flash.write(offset as u32, &entry).map_err(flash_error)?;
        self.head = Some(Head { offset: head.offset + entry.len(), ..head });
        Ok(head.sector)
    }

    /// The oldest sector holding live records, other than the head.
    fn oldest_live(&self) -> Option<(u32, usize)> {
        self.live_sectors().next()
    }

    /// Sectors other than the head holding live records, as `(seq, index)`, oldest first.
    fn live_sectors(&self) -> impl Iterator<Item = (u32, usize)> + '_ {
        let head_sector = self.head.map(|h| h.sector);
        self.active_sectors()
            .into_iter()
            .filter(move |&(_, i)| Some(i) != head_sector && self.sectors[i].live_records > 0)
    }

    /// Copies the live records of the oldest sector that has any to the head and retires
    /// it (and every older sector) by raising the low-water mark in the last entry written.
    /// Returns false when there is nothing to compact.
    fn compact_oldest(&mut self) -> Result<bool, StoreError> {
        let Some((seq, victim)) = self.oldest_live() else {
            return Ok(false);
        };
        self.move_records(victim, Some(seq))?;
        Ok(true)
    }

    /// Copies the live records of `victim` to the head, filling fresh sectors as needed.
    ///
    /// With `retire_seq` (the victim is the oldest live sector), its tombstones are dropped
    /// and the last entry raises the low-water mark past it, retiring it in the same entry
    /// that completes the copies. Without, tombstones are copied too and the victim is left
    /// with nothing live, to be reclaimed like any dead sector.
    fn move_records(&mut self, victim: usize, retire_seq: Option<u32>) -> Result<(), StoreError> {
        let moving: Vec<(Key, Option<Box<[u8]>>)> = self
            .index
            .iter()
            .filter(|(_, slot)| slot.sector == victim)
            // Retiring drops tombstones and writes a new low-water record instead of the old.
            .filter(|(key, slot)| retire_seq.is_none() || (slot.value.is_some() && key.as_slice() != LOW_WATER_KEY))
            .map(|(key, slot)| (key.clone(), slot.value.clone()))
            .collect();
        let low_water = retire_seq.map(|seq| (seq + 1).to_le_bytes());
        let mut ops: Vec<Op<'_>> = moving
            .iter()
            .map(|(key, value)| match value {
                Some(value) => Op::Put { key: key.as_slice(), value: &value[..] },
                None => Op::Delete { key: key.as_slice() },
            })
            .collect();
        if let Some(low_water) = &low_water {
            ops.push(Op::Put { key: LOW_WATER_KEY, value: low_water });
        }

        // Fill the head, then fresh sectors; the low-water record goes in the last entry,
        // so the victim is retired only once every copy is on flash.
        let mut written: Vec<(usize, std::ops::Range<usize>)> = Vec::new();
        let mut start = 0;
        while start < ops.len() {
            let room = self.head_room().saturating_sub(ENTRY_HEADER_LEN);
            let mut end = start;
            let mut size = 4; // postcard's length prefix, generously
            while end < ops.len() && size + op_len(&ops[end]) as usize <= room {
                size += op_len(&ops[end]) as usize;
                end += 1;
            }
            if end == start {
                if self.head.is_some_and(|h| h.offset == self.geometry.header_len()) {
                    return Err(StoreError::TooLarge { size: op_len(&ops[start]) as usize, max: room });
                }
                self.open_sector()?;
                continue;
            }
            let sector = self.append(&format::encode_ops(&ops[start..end]))?;
            written.push((sector, start..end));
            start = end;
        }
        for (sector, range) in written {
            for op in &ops[range] {
                apply(&mut self.index, &mut self.sectors, sector, op);
            }
        }
        let Some(victim_seq) = retire_seq else { return Ok(()) };
        let low_water = victim_seq + 1;
        // Tombstones in the victim have nothing older left to hide: drop them.
        let sectors = &mut self.sectors;
        self.index.retain(|_, slot| {
            let stale = slot.sector == victim && slot.value.is_none();
            if stale {
                sectors[victim].live_records -= 1;
                sectors[victim].live_bytes -= slot.op_len;
            }
            !stale
        });
        // Everything below the mark is retired, the victim and any dead sector before it.
        for info in self.sectors.iter_mut() {
            if let SectorState::Active { seq, erase_count } = info.state
                && seq < low_water
            {
                debug_assert_eq!(info.live_records, 0, "a retired sector held live records");
                *info = SectorInfo {
                    state: SectorState::Free { erase_count: Some(erase_count) },
                    live_records: 0,
                    live_bytes: 0,
                    used_bytes: 0,
                };
            }
        }
        Ok(())
    }
}

/// The sectors whose headers can be trusted.
pub struct ValidHeaders {
    /// `(sector, header)` for each trusted sector.
    pub headers: Vec<(usize, SectorHeader)>,
    /// `(duplicate, original)` for sectors repeating the seq of an earlier one. Cuts never
    /// produce a repeat; a damaged or forged image can, and then only the first is trusted.
    pub duplicates: Vec<(usize, usize)>,
}

/// Finds the trusted sector headers among `scans`.
pub fn valid_headers(scans: &[SectorScan<'_>]) -> ValidHeaders {
    let mut seen = std::collections::HashMap::new();
    let mut headers = Vec::new();
    let mut duplicates = Vec::new();
    for (i, scan) in scans.iter().enumerate() {
        if let HeaderState::Valid(header) = scan.header {
            match seen.entry(header.seq) {
                std::collections::hash_map::Entry::Occupied(first) => duplicates.push((i, *first.get())),
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(i);
                    headers.push((i, header));
                }
            }
        }
    }
    ValidHeaders { headers, duplicates }
}

/// Makes `op`, found in `sector`, the latest record of its key.
fn apply(index: &mut BTreeMap<Key, Slot>, sectors: &mut [SectorInfo], sector: usize, op: &Op<'_>) {
    let Ok(key) = Key::from_slice(op.key()) else {
        return; // Keys the store wrote always fit; a forged image just loses the record.
    };
    let value = match op {
        Op::Put { value, .. } => Some(Box::from(*value)),
        Op::Delete { .. } => None,
    };
    let op_len = op_len(op);
    if let Some(old) = index.insert(key, Slot { value, sector, op_len }) {
        sectors[old.sector].live_records -= 1;
        sectors[old.sector].live_bytes -= old.op_len;
    }
    sectors[sector].live_records += 1;
    sectors[sector].live_bytes += op_len;
}

/// Refuses images that are neither blank nor provbox's.
fn recognise(geometry: &Geometry, scans: &[SectorScan<'_>]) -> Result<(), StoreError> {
    for (sector, scan) in scans.iter().enumerate() {
        match scan.header {
            HeaderState::UnknownVersion(version) => {
                return Err(StoreError::UnknownVersion { sector, version });
            }
            HeaderState::OtherGeometry => return Err(StoreError::OtherGeometry(sector)),
            _ => {}
        }
    }
    if scans.iter().any(|s| matches!(s.header, HeaderState::Valid(_))) {
        return Ok(());
    }
    // No valid sector: blank flash, or blank but for the very first sector being opened
    // when the power went. Anything more is someone else's data.
    let foreign: Vec<usize> =
        scans.iter().enumerate().filter(|(_, s)| s.header != HeaderState::Blank).map(|(i, _)| i).collect();
    match foreign[..] {
        [first, _, ..] => Err(StoreError::NotRecognised(format!(
            "no sector carries a provbox header, yet {} sectors hold data, the first at sector {first} (offset {:#x})",
            foreign.len(),
            first * geometry.sector_size
        ))),
        _ => Ok(()),
    }
}
