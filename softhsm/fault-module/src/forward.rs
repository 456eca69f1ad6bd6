//! The exported `C_GetFunctionList`: the real module's function list with the intercepted
//! entries replaced by hooks that consult the control file first.

use std::sync::OnceLock;

use cryptoki_sys::{
    CK_ATTRIBUTE_PTR, CK_BBOOL, CK_BYTE_PTR, CK_FLAGS, CK_FUNCTION_LIST, CK_FUNCTION_LIST_PTR_PTR,
    CK_MECHANISM_PTR, CK_NOTIFY, CK_OBJECT_HANDLE, CK_OBJECT_HANDLE_PTR, CK_RV, CK_SESSION_HANDLE,
    CK_SESSION_HANDLE_PTR, CK_SLOT_ID, CK_SLOT_ID_PTR, CK_TOKEN_INFO_PTR, CK_ULONG, CK_ULONG_PTR,
    CK_USER_TYPE, CK_UTF8CHAR_PTR, CK_VOID_PTR, CKR_ARGUMENTS_BAD, CKR_FUNCTION_NOT_SUPPORTED,
    CKR_GENERAL_ERROR, CKR_OK,
};

use crate::control;

/// The module forwarded to when `HSMCA_FAULT_REAL_MODULE` is not set.
const DEFAULT_REAL_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// The real module's function list, and ours.
struct Lists {
    real: CK_FUNCTION_LIST,
    ours: CK_FUNCTION_LIST,
    /// Kept loaded for the life of the process: `real` points into it.
    _library: libloading::Library,
}

static LISTS: OnceLock<Option<Lists>> = OnceLock::new();

fn load() -> Option<Lists> {
    let path =
        std::env::var_os("HSMCA_FAULT_REAL_MODULE").unwrap_or_else(|| DEFAULT_REAL_MODULE.into());
    // SAFETY: loading a PKCS#11 module runs its initialisers, as any PKCS#11 consumer does.
    let library = match unsafe { libloading::Library::new(&path) } {
        Ok(library) => library,
        Err(err) => {
            eprintln!("hsmca-fault-pkcs11: cannot load {}: {err}", path.display());
            return None;
        }
    };
    // SAFETY: C_GetFunctionList has this signature in every PKCS#11 module; the list it
    // returns is static in the module, which stays loaded, and is copied here.
    let real = unsafe {
        let get: libloading::Symbol<unsafe extern "C" fn(CK_FUNCTION_LIST_PTR_PTR) -> CK_RV> =
            library.get(b"C_GetFunctionList\0").ok()?;
        let mut list = std::ptr::null_mut();
        if get(&mut list) != CKR_OK || list.is_null() {
            return None;
        }
        *list
    };
    let mut ours = real;
    ours.C_GetFunctionList = Some(C_GetFunctionList);
    ours.C_GetSlotList = Some(hooks::C_GetSlotList);
    ours.C_GetTokenInfo = Some(limit::C_GetTokenInfo);
    ours.C_OpenSession = Some(limit::C_OpenSession);
    ours.C_CloseSession = Some(limit::C_CloseSession);
    ours.C_Login = Some(hooks::C_Login);
    ours.C_GetAttributeValue = Some(hooks::C_GetAttributeValue);
    ours.C_FindObjectsInit = Some(hooks::C_FindObjectsInit);
    ours.C_FindObjects = Some(hooks::C_FindObjects);
    ours.C_SignInit = Some(hooks::C_SignInit);
    ours.C_Sign = Some(hooks::C_Sign);
    ours.C_GenerateRandom = Some(hooks::C_GenerateRandom);
    Some(Lists {
        real,
        ours,
        _library: library,
    })
}

fn lists() -> Option<&'static Lists> {
    LISTS.get_or_init(load).as_ref()
}

/// The PKCS#11 entry point: hands out the forwarding function list.
///
/// # Safety
///
/// `list` must be null or valid for writing one pointer, as PKCS#11 requires.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetFunctionList(list: CK_FUNCTION_LIST_PTR_PTR) -> CK_RV {
    if list.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    let Some(lists) = lists() else {
        return CKR_GENERAL_ERROR;
    };
    // SAFETY: checked non-null above; the caller guarantees it is writable. The list is
    // never written through the pointer (PKCS#11 lists are read-only to applications).
    unsafe { *list = &lists.ours as *const CK_FUNCTION_LIST as *mut CK_FUNCTION_LIST };
    CKR_OK
}

/// One hook per intercepted function: ask the control file, then call the real function with
/// the same arguments.
macro_rules! hooks {
    ($($name:ident($($arg:ident: $ty:ty),* $(,)?);)*) => {
        #[allow(non_snake_case)]
        pub(super) mod hooks {
            use super::*;
            $(
                pub(super) unsafe extern "C" fn $name($($arg: $ty),*) -> CK_RV {
                    if let Some(rv) = control::before(stringify!($name)) {
                        return rv;
                    }
                    match lists().and_then(|lists| lists.real.$name) {
                        // SAFETY: the arguments come unchanged from the PKCS#11 caller, who
                        // owes the real module exactly what it owed us.
                        Some(real) => unsafe { real($($arg),*) },
                        None => CKR_FUNCTION_NOT_SUPPORTED,
                    }
                }
            )*
        }
    };
}

hooks! {
    C_GetSlotList(token_present: CK_BBOOL, slots: CK_SLOT_ID_PTR, count: CK_ULONG_PTR);
    C_GetTokenInfo(slot: CK_SLOT_ID, info: CK_TOKEN_INFO_PTR);
    C_OpenSession(
        slot: CK_SLOT_ID,
        flags: CK_FLAGS,
        application: CK_VOID_PTR,
        notify: CK_NOTIFY,
        session: CK_SESSION_HANDLE_PTR,
    );
    C_CloseSession(session: CK_SESSION_HANDLE);
    C_Login(session: CK_SESSION_HANDLE, user: CK_USER_TYPE, pin: CK_UTF8CHAR_PTR, pin_len: CK_ULONG);
    C_GetAttributeValue(
        session: CK_SESSION_HANDLE,
        object: CK_OBJECT_HANDLE,
        template: CK_ATTRIBUTE_PTR,
        count: CK_ULONG,
    );
    C_FindObjectsInit(session: CK_SESSION_HANDLE, template: CK_ATTRIBUTE_PTR, count: CK_ULONG);
    C_FindObjects(
        session: CK_SESSION_HANDLE,
        objects: CK_OBJECT_HANDLE_PTR,
        max: CK_ULONG,
        count: CK_ULONG_PTR,
    );
    C_SignInit(session: CK_SESSION_HANDLE, mechanism: CK_MECHANISM_PTR, key: CK_OBJECT_HANDLE);
    C_Sign(
        session: CK_SESSION_HANDLE,
        data: CK_BYTE_PTR,
        data_len: CK_ULONG,
        signature: CK_BYTE_PTR,
        signature_len: CK_ULONG_PTR,
    );
    C_GenerateRandom(session: CK_SESSION_HANDLE, out: CK_BYTE_PTR, len: CK_ULONG);
}

/// `HSMCA_FAULT_MAX_SESSIONS=N`: a token that allows N sessions, as small HSMs and TPMs do. The
/// token info says so (`ulMaxSessionCount`), and `C_OpenSession` answers `CKR_SESSION_COUNT`
/// while N are open. Unset: no limit beyond the real module's.
#[allow(non_snake_case)]
mod limit {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use cryptoki_sys::CKR_SESSION_COUNT;

    fn max_sessions() -> Option<u64> {
        static MAX: OnceLock<Option<u64>> = OnceLock::new();
        *MAX.get_or_init(|| {
            std::env::var("HSMCA_FAULT_MAX_SESSIONS")
                .ok()
                .and_then(|n| n.parse().ok())
        })
    }

    /// Sessions open through this module.
    static OPEN: AtomicU64 = AtomicU64::new(0);

    pub(super) unsafe extern "C" fn C_GetTokenInfo(
        slot: CK_SLOT_ID,
        info: CK_TOKEN_INFO_PTR,
    ) -> CK_RV {
        // SAFETY: the arguments come unchanged from the caller.
        let rv = unsafe { hooks::C_GetTokenInfo(slot, info) };
        if let (CKR_OK, Some(max)) = (rv, max_sessions())
            && !info.is_null()
        {
            // SAFETY: the real module just filled the caller's CK_TOKEN_INFO.
            unsafe { (*info).ulMaxSessionCount = max };
        }
        rv
    }

    pub(super) unsafe extern "C" fn C_OpenSession(
        slot: CK_SLOT_ID,
        flags: CK_FLAGS,
        application: CK_VOID_PTR,
        notify: CK_NOTIFY,
        session: CK_SESSION_HANDLE_PTR,
    ) -> CK_RV {
        let reserved = OPEN.fetch_add(1, Ordering::SeqCst);
        if max_sessions().is_some_and(|max| reserved >= max) {
            OPEN.fetch_sub(1, Ordering::SeqCst);
            return CKR_SESSION_COUNT;
        }
        // SAFETY: the arguments come unchanged from the caller.
        let rv = unsafe { hooks::C_OpenSession(slot, flags, application, notify, session) };
        if rv != CKR_OK {
            OPEN.fetch_sub(1, Ordering::SeqCst);
        }
        rv
    }

    pub(super) unsafe extern "C" fn C_CloseSession(session: CK_SESSION_HANDLE) -> CK_RV {
        // SAFETY: the argument comes unchanged from the caller.
        let rv = unsafe { hooks::C_CloseSession(session) };
        if rv == CKR_OK {
            OPEN.fetch_sub(1, Ordering::SeqCst);
        }
        rv
    }
}
