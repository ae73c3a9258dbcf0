//! `sensorlink client`.
pub mod source;
pub mod state;
pub mod stats;
