//! provbox: a provisioning appliance for SIP desk phones.
//!
//! The crate is a library with a thin binary on top (`src/main.rs`, the CLI only).
//!
//! - [`store`]: the power-loss-safe key-value store on flash that holds all state.
//! - [`mac`]: the `Mac` type, parsed once at the edge.
#![deny(missing_docs)]

pub mod mac;
pub mod store;
