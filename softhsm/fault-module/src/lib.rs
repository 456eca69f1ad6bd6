//! A PKCS#11 module for hsmca's fault tests. It loads a real module (SoftHSM2 by default),
//! forwards every call to it, and makes chosen calls fail, slow down or hang as a control file
//! says. hsmca loads it like any vendor module (`hsm.module`), so the tests exercise the same
//! session, login and recovery code that meets a real HSM's faults.
//!
//! Environment:
//! - `HSMCA_FAULT_REAL_MODULE`: the module to forward to (default: SoftHSM2's).
//! - `HSMCA_FAULT_MAX_SESSIONS`: a session limit (`ulMaxSessionCount`, then
//!   `CKR_SESSION_COUNT`), as small HSMs and TPMs have.
//! - `HSMCA_FAULTS`: the control file. Read before every intercepted call, so a test changes
//!   faults by rewriting it; absent or empty means no faults. Every injected fault is appended
//!   to `HSMCA_FAULTS.log` as `FUNCTION ACTION`, so a test can tell that its faults happened.
//!
//! Control file, one rule per line (`#` starts a comment):
//!
//! ```text
//! C_Sign CKR_DEVICE_ERROR times=1   # the next call fails, then C_Sign works again
//! C_Sign delay=50ms                 # every C_Sign waits 50 ms first
//! C_Sign hang                       # C_Sign blocks until the file changes
//! * CKR_DEVICE_REMOVED              # every intercepted function fails
//! ```
//!
//! Errors: `CKR_DEVICE_ERROR`, `CKR_DEVICE_REMOVED`, `CKR_SESSION_HANDLE_INVALID`,
//! `CKR_USER_NOT_LOGGED_IN`, `CKR_GENERAL_ERROR`. `times=N` counts calls from when the file
//! last changed; the first matching rule with calls left applies.
//!
//! This crate is the PKCS#11 boundary of the tests: `unsafe` is confined to forwarding raw
//! PKCS#11 arguments unchanged.

#![deny(unsafe_op_in_unsafe_fn)]

mod control;
mod forward;

pub use forward::C_GetFunctionList;
