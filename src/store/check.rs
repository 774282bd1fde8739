//! The report behind `provbox store check`.
