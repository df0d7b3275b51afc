//! Host side of Warren's cells.
pub mod check;
