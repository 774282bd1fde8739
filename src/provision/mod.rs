//! Provisioning mechanisms: vendor profiles and file naming, templates and their context,
//! and token-miss throttling. What each request may have is decided in `crate::app::fetches`.

pub mod context;
pub mod templates;
pub mod throttle;
pub mod vendor;
