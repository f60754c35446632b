//! playrelay: one normalized player event stream in, many analytics vendors out.
#![forbid(unsafe_code)]

pub mod dest;
pub mod event;
