//! The typed records provbox keeps in the store.
