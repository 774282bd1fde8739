//! provbox: a provisioning appliance for SIP desk phones.
//!
//! The crate is a library with a thin binary on top (`src/main.rs`, the CLI only).
//!
//! - [`store`]: the power-loss-safe key-value store on flash that holds all state.
//! - [`app`]: the appliance's state and every operation on it.
//! - [`provision`]: vendor profiles, templates and the per-request enrollment decision.
//! - [`server`]: the HTTPS and HTTP listeners; [`pki`]: the certificates they serve.
//! - [`web`]: the technician's page and the JSON API; [`admin`]: the page's password, setup
//!   code and API tokens; [`metrics`]: the counters behind `/metrics`.
//! - [`redirect`]: vendor redirect services and the durable outbox that feeds them;
//!   [`clock`]: the wall clock they depend on.
//! - [`sip`]: SIP plug-and-play and check-sync on the LAN; [`mdns`]: the technicians' `.local`
//!   name.
//! - [`control`]: the CLI's protocol over a Unix socket; [`daemon`]: `provbox serve`.
//! - [`devices`], [`settings`], [`mac`]: validated input.
#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod admin;
pub mod app;
pub mod clock;
pub mod control;
pub mod daemon;
pub mod devices;
pub mod hex;
pub mod mac;
pub mod mdns;
pub mod metrics;
pub mod pki;
pub mod provision;
pub mod random;
pub mod redirect;
pub mod server;
pub mod settings;
pub mod sip;
pub mod store;
pub mod token;
pub mod update;
pub mod web;
