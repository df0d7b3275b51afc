//! Integration tests of the process tier: one binary, modules in `suite/`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod suite;
