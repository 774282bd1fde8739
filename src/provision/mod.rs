//! Provisioning mechanisms: vendor profiles and file naming, templates and their context,
//! the cache of rendered files, the syntax check of rendered files, diffs of overrides
//! against stock, and token-miss throttling. What each request may have is decided in `crate::app::fetches`.

pub mod cache;
pub mod context;
pub mod diff;
pub mod format;
pub mod templates;
pub mod throttle;
pub mod vendor;
