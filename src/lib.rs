//! provbox: a provisioning appliance for SIP desk phones.
//!
//! The crate is a library with a thin binary on top (`src/main.rs` and `src/cli/`).
//!
//! # A tour
//!
//! **Layers.** Modules import only downwards (`tests/module_graph.rs` refuses a cycle):
//! - front ends: [`daemon`] (`provbox serve`), [`server`] (HTTPS and HTTP listeners, the
//!   phones' routes), [`web`] (the technician's page and the JSON API), [`control`] (the CLI's
//!   Unix socket), [`mdns`], [`lan`] (the LAN address, and what follows it when it changes);
//! - [`app`]: every operation of the appliance;
//! - mechanisms that never see [`app::App`]: [`provision`] (vendor profiles, templates, the
//!   template context), [`redirect`] (vendor redirect clients and the outbox's rules),
//!   [`sip`] (plug-and-play and check-sync), [`admin`] (password hashes, API token formats),
//!   [`metrics`], [`pki`], [`peers`] (addresses that proved themselves), [`update`], [`backup`]
//!   (the encrypted backup file), [`ntp`] (the SNTP client), [`clock`];
//! - domain types and the store: [`devices`], [`settings`], [`locale`] (time zones and
//!   languages in each vendor's notation), [`policy`] (password levels), [`mac`], [`token`], [`hex`],
//!   [`random`], [`store`] (the power-loss-safe key-value store on flash).
//!
//! **One lock.** [`app::App`] keeps all mutable state (the mounted store, the token index,
//! buffered contacts) behind one mutex. Critical sections are short and never await; every
//! change is one store transaction committed under that lock, so what a reader sees is always
//! a committed state.
//!
//! **A device change and its redirect work commit together.** Adding, unlocking, rekeying or
//! removing a device, and a phone's fetch that locks enrollment, plan the registration or
//! deregistration with the vendor's redirect service (`app::redirect`) into the same
//! transaction. A power cut keeps both or neither; the worker then delivers the queue and
//! removes an item only in the commit that records its outcome.
//!
//! **A phone's request.** [`server`] accepts the connection (TLS, timeouts, connection cap);
//! `server::routes` matches `/e/<token>/FILE`, `/p/<token>/FILE` or `/FILE` and calls
//! [`app::fetches::fetch`]. That parses the [`token::Token`], finds its device (compared in
//! constant time), decides what one-time enrollment allows, renders the vendor's template
//! with the context of [`provision::context`], commits an enrollment change before the file
//! leaves, and buffers the contact. Every miss is the same bare 404, counted per address.
//!
//! **A technician's request.** The page, the API and the CLI (over [`control`], or on the
//! store directly when no server runs) call the same [`app::App`] method and show the same
//! [`app::views`] type.
#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod admin;
pub mod app;
pub mod backup;
pub mod clock;
pub mod control;
pub mod daemon;
pub mod devices;
pub mod hex;
pub mod lan;
pub mod locale;
pub mod mac;
pub mod mdns;
pub mod metrics;
pub mod ntp;
pub mod peers;
pub mod pki;
pub mod policy;
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
