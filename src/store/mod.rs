//! The compact on-flash store: a log-structured, power-loss-safe key-value store written
//! against the `embedded-storage` NOR flash traits.
//!
//! - `format`: the bytes on flash (sector headers, entries, operations).
//! - [`engine`]: mount, atomic commits, compaction and wear levelling.
//! - [`records`]: the typed records provbox keeps (devices, settings, credentials, outbox,
//!   audit log), each with a schema version.
//! - [`backend`]: the flash devices: a file or raw partition, a Linux MTD device, and a
//!   fault-injecting simulator for tests.
//! - [`check`]: the report behind `provbox store check`.

pub mod backend;
pub mod check;
pub mod engine;
pub mod format;
pub mod records;

pub use engine::{Key, Store, StoreError};
pub use format::Op;
