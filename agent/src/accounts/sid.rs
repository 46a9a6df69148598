//! Who runs a process, as its access token says: the token user's SID, its name
//! (`LookupAccountSidW`) and whether the token is an elevated administrator's.

use std::io;

use windows_sys::Win32::Foundation::{CloseHandle, HANDLE, LocalFree};
use windows_sys::Win32::Security::Authorization::ConvertSidToStringSidW;
use windows_sys::Win32::Security::{
    GetLengthSid, GetTokenInformation, LookupAccountSidW, PSID, TOKEN_GROUPS,
    TOKEN_INFORMATION_CLASS, TOKEN_QUERY, TOKEN_USER, TokenGroups, TokenUser,
};
use windows_sys::Win32::System::Threading::{
    GetCurrentProcess, OpenProcess, OpenProcessToken, PROCESS_QUERY_LIMITED_INFORMATION,
};

/// BUILTIN\Administrators.
const ADMINISTRATORS: &str = "S-1-5-32-544";
/// A group that counts in access checks (`SE_GROUP_ENABLED`); a UAC-filtered token
/// holds Administrators for deny only, without it.
const GROUP_ENABLED: u32 = 0x4;

/// The account a process runs as.
#[derive(Debug, Clone)]
pub struct TokenOwner {
    /// `S-1-5-21-…`.
    pub sid: String,
    /// The binary SID, for the name lookup.
    bytes: Vec<u8>,
    /// An elevated member of BUILTIN\Administrators.
    pub admin: bool,
}

impl TokenOwner {
    /// `DOMAIN\name`, or `None` when the account cannot be named now (a domain account
    /// whose controller is out of reach).
    pub fn name(&self) -> Option<String> {
        name_of(self.bytes.as_ptr() as PSID)
    }
}

/// A handle closed when dropped.
pub struct Owned(pub HANDLE);

// SAFETY: a kernel handle is valid from any thread of the process; `Owned` only closes
// it, once.
unsafe impl Send for Owned {}

impl Drop for Owned {
    fn drop(&mut self) {
        // SAFETY: the handle was opened by us and is closed once, here.
        unsafe { CloseHandle(self.0) };
    }
}

/// Opens a process for `PROCESS_QUERY_LIMITED_INFORMATION` (what any account may ask of
/// most processes, and LocalSystem of all).
pub fn open_process(pid: u32) -> io::Result<Owned> {
    // SAFETY: plain call; a null result is the failure.
    let handle = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid) };
    if handle.is_null() {
        return Err(io::Error::last_os_error());
    }
    Ok(Owned(handle))
}

/// The owner of process `pid`.
pub fn of_pid(pid: u32) -> io::Result<TokenOwner> {
    of_open(&open_process(pid)?)
}

/// The owner of a process opened with [`open_process`].
pub fn of_open(process: &Owned) -> io::Result<TokenOwner> {
    of_process(process.0)
}

/// The owner of this process.
pub fn of_current_process() -> io::Result<TokenOwner> {
    // SAFETY: the pseudo handle needs no closing.
    of_process(unsafe { GetCurrentProcess() })
}

/// The owner of the process behind `process` (opened with at least
/// `PROCESS_QUERY_LIMITED_INFORMATION`, or this process's pseudo handle).
fn of_process(process: HANDLE) -> io::Result<TokenOwner> {
    let mut token: HANDLE = std::ptr::null_mut();
    // SAFETY: `token` is an out-parameter, closed below by `Owned`.
    if unsafe { OpenProcessToken(process, TOKEN_QUERY, &mut token) } == 0 {
        return Err(io::Error::last_os_error());
    }
    let token = Owned(token);
    let user = token_information(token.0, TokenUser)?;
    // SAFETY: GetTokenInformation(TokenUser) wrote a TOKEN_USER at the start of the
    // buffer, which is 8-byte aligned; its SID points into the same buffer.
    let sid = unsafe { (*(user.as_ptr() as *const TOKEN_USER)).User.Sid };
    let bytes = sid_bytes(sid);
    let text = sid_string(sid)?;
    let groups = token_information(token.0, TokenGroups)?;
    // SAFETY: as above, a TOKEN_GROUPS whose array holds GroupCount entries in the
    // buffer.
    let admin = unsafe {
        let groups = &*(groups.as_ptr() as *const TOKEN_GROUPS);
        let all = std::slice::from_raw_parts(groups.Groups.as_ptr(), groups.GroupCount as usize);
        all.iter().any(|g| {
            g.Attributes & GROUP_ENABLED != 0
                && sid_string(g.Sid).is_ok_and(|s| s == ADMINISTRATORS)
        })
    };
    Ok(TokenOwner {
        sid: text,
        bytes,
        admin,
    })
}

/// A token information class into an 8-byte-aligned buffer.
fn token_information(token: HANDLE, class: TOKEN_INFORMATION_CLASS) -> io::Result<Vec<u64>> {
    let mut size = 0u32;
    // SAFETY: asking for the size only (null buffer, length 0).
    unsafe { GetTokenInformation(token, class, std::ptr::null_mut(), 0, &mut size) };
    if size == 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buffer = vec![0u64; (size as usize).div_ceil(8)];
    // SAFETY: the buffer holds at least `size` bytes.
    if unsafe { GetTokenInformation(token, class, buffer.as_mut_ptr().cast(), size, &mut size) }
        == 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(buffer)
}

fn sid_bytes(sid: PSID) -> Vec<u8> {
    // SAFETY: `sid` is a valid SID (from a token); GetLengthSid gives its length.
    unsafe {
        let len = GetLengthSid(sid) as usize;
        std::slice::from_raw_parts(sid as *const u8, len).to_vec()
    }
}

/// `S-1-5-…` for a binary SID.
fn sid_string(sid: PSID) -> io::Result<String> {
    let mut text: *mut u16 = std::ptr::null_mut();
    // SAFETY: `sid` is valid; the string is allocated by the call and freed below.
    if unsafe { ConvertSidToStringSidW(sid, &mut text) } == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a NUL-terminated UTF-16 string from ConvertSidToStringSidW.
    let s = unsafe { wide_to_string(text) };
    // SAFETY: allocated with LocalAlloc by ConvertSidToStringSidW.
    unsafe { LocalFree(text.cast()) };
    Ok(s)
}

/// # Safety
/// `p` points to a NUL-terminated UTF-16 string.
unsafe fn wide_to_string(p: *const u16) -> String {
    let mut len = 0;
    // SAFETY: the caller promises a terminating NUL.
    unsafe {
        while *p.add(len) != 0 {
            len += 1;
        }
        String::from_utf16_lossy(std::slice::from_raw_parts(p, len))
    }
}

/// `DOMAIN\name` of a binary SID, from this machine's LSA (which asks a domain
/// controller for domain accounts it does not know).
fn name_of(sid: PSID) -> Option<String> {
    let mut name = [0u16; 256];
    let mut domain = [0u16; 256];
    let mut name_len = name.len() as u32;
    let mut domain_len = domain.len() as u32;
    let mut kind = 0;
    // SAFETY: both buffers are valid for the lengths given; `sid` is a valid SID.
    let ok = unsafe {
        LookupAccountSidW(
            std::ptr::null(),
            sid,
            name.as_mut_ptr(),
            &mut name_len,
            domain.as_mut_ptr(),
            &mut domain_len,
            &mut kind,
        )
    };
    if ok == 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "cannot name an account");
        return None;
    }
    let name = String::from_utf16_lossy(&name[..name_len as usize]);
    let domain = String::from_utf16_lossy(&domain[..domain_len as usize]);
    Some(if domain.is_empty() {
        name
    } else {
        format!("{domain}\\{name}")
    })
}

/// `DOMAIN\name` of a SID given as a string (`S-1-5-21-…`), as a process lister
/// reports it.
pub fn name_of_string(sid: &str) -> Option<String> {
    use windows_sys::Win32::Security::Authorization::ConvertStringSidToSidW;
    let wide: Vec<u16> = sid.encode_utf16().chain(Some(0)).collect();
    let mut binary: PSID = std::ptr::null_mut();
    // SAFETY: `wide` is NUL-terminated; the SID is allocated by the call and freed below.
    if unsafe { ConvertStringSidToSidW(wide.as_ptr(), &mut binary) } == 0 {
        return None;
    }
    let name = name_of(binary);
    // SAFETY: allocated with LocalAlloc by ConvertStringSidToSidW.
    unsafe { LocalFree(binary) };
    name
}
