//! The report behind `provbox store check`: every sector, every record, and where anything
//! is wrong.
//!
//! Power-cut residue (a torn last write, a sector whose erase or header write was
//! interrupted) is normal and reported as a notice; mount tolerates it and reuse clears it.
//! Corruption is anything a power cut cannot produce: unreadable data followed by more data,
//! a damaged header in front of entries of the log (whose records are recovered from their
//! own checksums), or a record whose body does not decode.

use std::collections::BTreeMap;
use std::fmt;

use embedded_storage::nor_flash::NorFlash;

use super::engine::{SectorScan, SectorState, Tail, geometry_of, recover_damaged_headers, scan_sector, valid_headers};
use super::format::HeaderState;
use super::records::{Kind, decode_json};
use super::{Store, StoreError};

/// One thing `check` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Where: a sector and byte offset, or a record key.
    pub location: String,
    /// What.
    pub what: String,
}

/// One sector's line in the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectorLine {
    /// Physical index.
    pub index: usize,
    /// Log position, for sectors in the log.
    pub seq: Option<u32>,
    /// Erases so far, when known.
    pub erase_count: Option<u32>,
    /// Bytes of records that are the latest for their key.
    pub live_bytes: u32,
    /// Bytes in use by anything else.
    pub dead_bytes: u32,
}

/// The full report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// Sector size in bytes.
    pub sector_size: usize,
    /// Every sector.
    pub sectors: Vec<SectorLine>,
    /// Live records by kind name.
    pub records: BTreeMap<&'static str, usize>,
    /// Normal power-cut residue.
    pub notices: Vec<Finding>,
    /// Damage.
    pub corruption: Vec<Finding>,
}

impl CheckReport {
    /// True when nothing is damaged.
    pub fn is_clean(&self) -> bool {
        self.corruption.is_empty()
    }
}

/// Reads every sector and record of the store on `flash`.
pub fn check<F: NorFlash>(mut flash: F) -> Result<CheckReport, StoreError> {
    let geometry = geometry_of(&flash)?;
    let mut image = vec![0xFF; geometry.capacity()];
    flash.read(0, &mut image).map_err(|e| StoreError::Flash {
        kind: embedded_storage::nor_flash::NorFlashError::kind(&e),
        detail: format!("{e:?}"),
    })?;
    let mut notices = Vec::new();
    let mut corruption = Vec::new();
    let mut scans: Vec<SectorScan<'_>> =
        image.chunks(geometry.sector_size).map(|b| scan_sector(&geometry, b)).collect();
    let recovered: Vec<(usize, u32, usize)> = recover_damaged_headers(&geometry, &image, &mut scans)
        .into_iter()
        .map(|(index, seq)| (index, seq, scans[index].entries.len()))
        .collect();
    for (duplicate, original) in valid_headers(&scans).duplicates {
        corruption.push(Finding {
            location: format!("sector {duplicate}, offset {:#x}", duplicate * geometry.sector_size),
            what: format!("repeats the log position of sector {original}; ignored"),
        });
    }
    for (index, scan) in scans.into_iter().enumerate() {
        let base = index * geometry.sector_size;
        let at = |offset: usize| format!("sector {index}, offset {:#x}", base + offset);
        let SectorScan { header, tail, .. } = scan;
        match (header, tail) {
            (HeaderState::Garbage, _) => notices.push(Finding {
                location: at(0),
                what: "unreadable header, and no entry of the log behind it (an interrupted erase or header \
                       write); reclaimed when reused"
                    .into(),
            }),
            (HeaderState::Valid(_), Tail::Torn { offset }) => notices.push(Finding {
                location: at(offset),
                what: "unfinished last write (a power cut); ignored, never written over".into(),
            }),
            (HeaderState::Valid(_), Tail::Corrupt { offset }) => corruption.push(Finding {
                location: at(offset),
                what: "unreadable entry followed by more data; records after it in this sector are lost".into(),
            }),
            _ => {}
        }
    }
    let store = Store::mount(flash)?;
    // A recovered sector none of whose records is the latest for its key is what an erase
    // cut short leaves of a sector being reused: power-cut residue. One that still holds
    // live records lost its header to damage.
    for (index, seq, entries) in recovered {
        let location = format!("sector {index}, offset {:#x}", index * geometry.sector_size);
        if store.sectors().get(index).is_some_and(|sector| sector.live_records > 0) {
            let what = format!(
                "damaged header in front of written data (not a power cut); its {entries} entries verify as log \
                 position {seq} and are read from there"
            );
            corruption.push(Finding { location, what });
        } else {
            let what = "unreadable header over records that all live on elsewhere (an interrupted erase); \
                        reclaimed when reused"
                .to_string();
            notices.push(Finding { location, what });
        }
    }
    let mut records = BTreeMap::new();
    for (key, value) in store.iter_prefix(&[]) {
        let kind = Kind::from_byte(key[0]);
        let decoded = kind.map_or(Ok(()), |kind| decode_json(kind, value).map(drop));
        *records.entry(kind.map_or("unknown", Kind::name)).or_insert(0) += 1;
        if let Err(error) = decoded {
            corruption
                .push(Finding { location: format!("record {}", crate::hex::encode(key)), what: error.to_string() });
        }
    }
    let sectors = store
        .sectors()
        .iter()
        .enumerate()
        .map(|(index, info)| {
            let seq = match info.state {
                SectorState::Active { seq, .. } => Some(seq),
                SectorState::Free { .. } => None,
            };
            let erase_count = info.state.erase_count();
            SectorLine {
                index,
                seq,
                erase_count,
                live_bytes: info.live_bytes,
                dead_bytes: info.used_bytes.saturating_sub(info.live_bytes),
            }
        })
        .collect();
    Ok(CheckReport { sector_size: geometry.sector_size, sectors, records, notices, corruption })
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} sectors of {} bytes", self.sectors.len(), self.sector_size)?;
        writeln!(f, "{:>6} {:>8} {:>7} {:>7} {:>7}", "sector", "seq", "erases", "live", "dead")?;
        // Active sectors one per line; runs of free sectors on one line.
        let mut lines = self.sectors.iter().peekable();
        while let Some(line) = lines.next() {
            let erases = |l: &SectorLine| l.erase_count.map_or("?".into(), |e| e.to_string());
            if let Some(seq) = line.seq {
                writeln!(
                    f,
                    "{:>6} {seq:>8} {:>7} {:>7} {:>7}",
                    line.index,
                    erases(line),
                    line.live_bytes,
                    line.dead_bytes
                )?;
                continue;
            }
            let mut last = line;
            while let Some(next) = lines.next_if(|n| n.seq.is_none() && n.erase_count == line.erase_count) {
                last = next;
            }
            let span = if last.index == line.index {
                line.index.to_string()
            } else {
                format!("{}-{}", line.index, last.index)
            };
            writeln!(f, "{span:>6} {:>8} {:>7}", "free", erases(line))?;
        }
        let live: u32 = self.sectors.iter().map(|s| s.live_bytes).sum();
        let dead: u32 = self.sectors.iter().map(|s| s.dead_bytes).sum();
        let erases: Vec<u32> = self.sectors.iter().filter_map(|s| s.erase_count).collect();
        let (min, max) = (erases.iter().min().unwrap_or(&0), erases.iter().max().unwrap_or(&0));
        writeln!(f, "live {live} bytes, dead {dead} bytes, erase counts {min}..={max}")?;
        let counts: Vec<String> = self.records.iter().map(|(kind, n)| format!("{kind} {n}")).collect();
        writeln!(f, "records: {}", if counts.is_empty() { "none".into() } else { counts.join(", ") })?;
        for finding in &self.notices {
            writeln!(f, "notice: {}: {}", finding.location, finding.what)?;
        }
        for finding in &self.corruption {
            writeln!(f, "CORRUPT: {}: {}", finding.location, finding.what)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::backend::sim::SimFlash;

    /// A sector of `key`'s old value (superseded in a later sector) and a sector of its
    /// latest: the first commit after a mount opens a fresh sector.
    fn two_sectors() -> Vec<u8> {
        let mut store = Store::mount(SimFlash::<4096>::new(8)).unwrap();
        // A key of no record kind: check reads it as it is, without decoding a record.
        store.put(b"\x7fkey", b"old").unwrap();
        let mut store = Store::mount(store.into_flash()).unwrap();
        store.put(b"\x7fkey", b"new").unwrap();
        store.into_flash().image().to_vec()
    }

    #[test]
    fn a_damaged_header_over_live_records_is_corruption() {
        let mut image = two_sectors();
        image[4096 + 9] ^= 0x01; // the sector of the latest value
        let report = check(SimFlash::<4096>::from_image(image)).unwrap();
        assert_eq!(report.corruption.len(), 1, "{report}");
        assert!(report.corruption[0].location.starts_with("sector 1,"), "{report}");
        assert_eq!(report.records.get("unknown"), Some(&1), "the record is read back");
    }

    #[test]
    fn a_damaged_header_over_superseded_records_is_an_interrupted_erase() {
        let mut image = two_sectors();
        image[9] ^= 0x01; // the sector of the old value: what an erase cut short leaves
        let report = check(SimFlash::<4096>::from_image(image)).unwrap();
        assert!(report.is_clean(), "{report}");
        assert!(report.notices.iter().any(|notice| notice.what.contains("interrupted erase")), "{report}");
    }
}
