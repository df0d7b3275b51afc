//! Warren's shared vocabulary, with no I/O.
//!
//! Everything that crosses a trust boundary is defined here, so both sides of the boundary
//! agree on it by construction and it can be tested without a kernel:
//!
//! - [`mount`]: the *namespace* of a cell — the explicit list of what exists inside it;
//! - [`jail`]: the configuration the host hands to a cell's supervisor, and the start-up
//!   report it sends back;
//! - [`guest`]: the framed, authenticated exec protocol between the host and a cell's init;
//! - [`exit`]: the documented exit codes of `warren exec`;
//! - [`api`]: the daemon API's requests, answers, event and audit kinds, error codes.
//!
//! Design choice: the guest protocol is a length-prefixed binary framing with JSON only for
//! control messages. Output bytes travel raw (no base64), and the decoder is a pure state
//! machine over byte slices, so a hostile peer can at worst make it return an error.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod api;
pub mod exit;
pub mod guest;
pub mod jail;
pub mod mount;
pub mod tools;
