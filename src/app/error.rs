//! Why an operation failed. Every variant reads as advice to the user, and [`AppError::kind`]
//! says whose fault it is: the request's (the API's 4xx) or the appliance's and the services
//! it depends on (5xx).

use crate::devices::{CsvProblem, DeviceError};
use crate::mac::Mac;
use crate::provision::templates::RenderError;
use crate::settings::SettingError;
use crate::store::StoreError;
use crate::store::records::{DbError, RecordError};

/// Why an operation failed; every variant reads as advice to the user.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The store refused or failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A stored record is unreadable.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// A device field was refused.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// A setting was refused.
    #[error(transparent)]
    Setting(#[from] SettingError),
    /// A template failed.
    #[error(transparent)]
    Render(#[from] RenderError),
    /// A malformed MAC.
    #[error(transparent)]
    Mac(#[from] crate::mac::MacError),
    /// No such device.
    #[error("no device with MAC {0}; `provbox device list` shows the known ones")]
    NoDevice(Mac),
    /// A device with that MAC exists.
    #[error("a device with MAC {0} already exists; remove it first or unlock it")]
    DeviceExists(Mac),
    /// The device's vendor serves no such file.
    #[error("{vendor} phones are not served a file named {file:?}")]
    NoSuchFile {
        /// The device's vendor.
        vendor: String,
        /// The requested name.
        file: String,
    },
    /// The admin password was refused.
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
    /// The request is well-formed, but the device, its vendor or the site's configuration
    /// does not allow it now (no redirect service for the vendor, enrollment locked, the
    /// phone's address unknown, ...).
    #[error("{0}")]
    Refused(String),
    /// Well-formed input that breaks a rule no type can say (a passphrase too short, ...).
    #[error("{0}")]
    Invalid(String),
    /// A service the appliance depends on (a vendor's redirect cloud) failed or refused.
    #[error("{0}")]
    Upstream(String),
    /// Not possible yet; the same request may succeed later (the clock is not set).
    #[error("{0}")]
    Unavailable(String),
    /// Something broke inside provbox (a task panicked, a socket could not open); logged.
    #[error("internal error: {0}")]
    Internal(String),
    /// A backup file was refused.
    #[error(transparent)]
    Backup(#[from] crate::backup::BackupError),
    /// A template edit that does not render, or renders a file its phones cannot parse.
    #[error("template refused, nothing saved: {0}")]
    Template(String),
    /// A template name that is not one of the vendor's editable templates.
    #[error("{vendor} has no editable template {file:?}; `provbox template list` shows them")]
    NoTemplate {
        /// The vendor.
        vendor: String,
        /// The name asked for.
        file: String,
    },
    /// A CSV import with problems, imported all-or-nothing.
    #[error("import refused, nothing imported: {} problem(s)", .0.len())]
    Import(Vec<CsvProblem>),
}

/// Whose fault a failure is, and so which HTTP status the API answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input is well-formed but breaks a rule (422). Malformed requests (not JSON, a
    /// path that is not a MAC) never get this far: the API refuses them with 400 itself.
    Invalid,
    /// The device does not exist (404).
    NotFound,
    /// The request clashes with the appliance's state or configuration (409).
    Conflict,
    /// A service the appliance depends on failed (502).
    Upstream,
    /// Try again later (503).
    Unavailable,
    /// The appliance itself failed (500).
    Internal,
}

impl AppError {
    /// Whose fault this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            AppError::NoDevice(_)
            | AppError::NoTemplate { .. }
            | AppError::Setting(crate::settings::SettingError::Unknown(_)) => ErrorKind::NotFound,
            AppError::DeviceExists(_)
            | AppError::Refused(_)
            | AppError::Db(
                DbError::TooManyDevices | DbError::NearlyFull { .. } | DbError::Store(StoreError::Full { .. }),
            ) => ErrorKind::Conflict,
            AppError::Device(_)
            | AppError::Setting(_)
            | AppError::Mac(_)
            | AppError::Admin(_)
            | AppError::NoSuchFile { .. }
            | AppError::Backup(_)
            | AppError::Template(_)
            | AppError::Import(_)
            | AppError::Invalid(_) => ErrorKind::Invalid,
            AppError::Upstream(_) => ErrorKind::Upstream,
            AppError::Unavailable(_) => ErrorKind::Unavailable,
            AppError::Db(_) | AppError::Record(_) | AppError::Render(_) | AppError::Internal(_) => ErrorKind::Internal,
        }
    }
}
