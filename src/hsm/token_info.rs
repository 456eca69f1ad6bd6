//! The token's `CK_TOKEN_INFO`, read field by field, for the token whose info cryptoki cannot
//! parse.
//!
//! cryptoki parses every field of `C_GetTokenInfo`'s answer and fails the whole call on one it
//! cannot read: opencryptoki's soft token, for one, reports its clock as `08:29:11` instead of
//! `YYYYMMDDhhmmss00`, and hsmca could then neither find the token by its label nor size its
//! pool. For such a token hsmca reads only the fields it uses (label, serial, model,
//! manufacturer, the session limit, whether it is initialised) and never the clock, by calling
//! `C_GetTokenInfo` itself through the module's function list. That relies on the module
//! handing out the instance cryptoki initialised, which opencryptoki and SoftHSM2 do and
//! p11-kit's client does not (a new instance per `C_GetFunctionList`): so this is a fallback,
//! used only when cryptoki fails to parse. This is the one place outside cryptoki where hsmca
//! calls into a PKCS#11 module, so it is the one place `unsafe` is allowed.

#![allow(unsafe_code)]

use std::path::Path;

use cryptoki::context::Function;
use cryptoki::error::Rv;
use cryptoki::slot::Slot;
use cryptoki_sys::{
    CK_C_GetFunctionList, CK_EFFECTIVELY_INFINITE, CK_FUNCTION_LIST, CK_RV, CK_TOKEN_INFO,
    CK_UNAVAILABLE_INFORMATION, CKF_TOKEN_INITIALIZED,
};

use super::error::HsmError;

/// The fields of a token's `CK_TOKEN_INFO` hsmca uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TokenFields {
    /// `label`, blank padding removed.
    pub label: String,
    /// `serialNumber`, blank padding removed.
    pub serial: String,
    /// `model`, blank padding removed.
    pub model: String,
    /// `manufacturerID`, blank padding removed.
    pub manufacturer: String,
    /// `ulMaxSessionCount`: `None` when unlimited or not said.
    pub max_sessions: Option<u64>,
    /// `CKF_TOKEN_INITIALIZED` is set.
    pub initialized: bool,
}

/// Reads `slot`'s token info from the module at `module_path`, which cryptoki has loaded and
/// initialised already in this process (for a module whose `C_GetFunctionList` hands out that
/// same instance).
pub(crate) fn read(module_path: &Path, slot: Slot) -> Result<TokenFields, HsmError> {
    let failed = |reason: String| HsmError::ModuleLoad {
        path: module_path.to_owned(),
        reason,
    };
    // SAFETY: the library is a PKCS#11 module that cryptoki has loaded already (so loading it
    // runs no initialiser a second time); `C_GetFunctionList` has the signature the standard
    // gives it.
    let library = unsafe { libloading::Library::new(module_path) }
        .map_err(|e| failed(format!("cannot load it again to read the token info: {e}")))?;
    // SAFETY: as above; the symbol is only used while `library` is alive.
    let get_function_list = unsafe { library.get::<CK_C_GetFunctionList>(b"C_GetFunctionList") }
        .map_err(|e| failed(format!("it has no C_GetFunctionList: {e}")))?;
    let get_function_list =
        (*get_function_list).ok_or_else(|| failed("C_GetFunctionList is null".into()))?;
    let mut list: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
    // SAFETY: `list` is a valid place for the module to write its function list's address.
    check(
        unsafe { get_function_list(&mut list) },
        Function::GetFunctionList,
    )?;
    if list.is_null() {
        return Err(failed("C_GetFunctionList returned no list".into()));
    }
    // SAFETY: a non-null list from C_GetFunctionList stays valid while the module is loaded;
    // `library` keeps it loaded until this function returns.
    let get_token_info = unsafe { (*list).C_GetTokenInfo }
        .ok_or_else(|| failed("its function list has no C_GetTokenInfo".into()))?;
    let mut info = CK_TOKEN_INFO::default();
    // SAFETY: `info` is a valid, writable CK_TOKEN_INFO; the slot came from this module.
    check(
        unsafe { get_token_info(slot.id(), &mut info) },
        Function::GetTokenInfo,
    )?;
    Ok(TokenFields {
        label: blank_padded(&info.label),
        serial: blank_padded(&info.serialNumber),
        model: blank_padded(&info.model),
        manufacturer: blank_padded(&info.manufacturerID),
        max_sessions: match info.ulMaxSessionCount {
            CK_UNAVAILABLE_INFORMATION | CK_EFFECTIVELY_INFINITE => None,
            max => Some(max),
        },
        initialized: info.flags & CKF_TOKEN_INITIALIZED != 0,
    })
}

fn check(rv: CK_RV, function: Function) -> Result<(), HsmError> {
    Ok(Rv::from(rv).into_result(function)?)
}

/// A fixed-size PKCS#11 text field: UTF-8 (lossy) with its blank padding removed.
fn blank_padded(field: &[u8]) -> String {
    String::from_utf8_lossy(field)
        .trim_end_matches([' ', '\0'])
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_is_removed_and_bad_bytes_do_not_fail() {
        assert_eq!(blank_padded(b"hsmca-online    "), "hsmca-online");
        assert_eq!(blank_padded(b"a\xffb  "), "a\u{fffd}b");
    }
}
