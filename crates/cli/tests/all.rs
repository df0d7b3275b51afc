//! Integration tests of the `warren` binary: one test binary, modules in `suite/`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod suite;
