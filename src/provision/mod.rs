//! Provisioning: vendor profiles, templates, what each request may have, and rendering.

pub mod context;
pub mod fetch;
pub mod templates;
pub mod throttle;
pub mod vendor;
