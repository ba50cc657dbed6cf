//! The one integration test binary: shared helpers in `common`, one module per area.

mod cases;
mod common;
mod intake;
mod round_trip;
mod schema_files;
mod vite;
