//! `daymeter-collector` as a library, so tests and benchmarks can drive its commands.
//!
//! Map:
//! - [`replay`] — `daymeter-collector replay FILE|-`: accounting without a server.

pub mod replay;
