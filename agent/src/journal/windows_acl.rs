//! The journal directory's access list on Windows, standing in for mode 0700: the
//! account running the agent (LocalSystem for the service), LocalSystem and the
//! Administrators have full control, nobody else anything, and nothing is inherited.
//!
//! Without it the directory inherits `%ProgramData%`'s list, which lets every local
//! user read files created there: the device token (`enrolment.json`) would be readable
//! by anyone who logs on to the workstation. The list is set again at every start, so a
//! directory an admin made by hand, or one copied in from a backup, is tightened too;
//! the entries are inheritable (`OICI`), so the files in it get the same list, and
//! `SetNamedSecurityInfoW` carries it down to files that exist already.

use std::io;
use std::path::Path;

use windows_sys::Win32::Foundation::{ERROR_SUCCESS, LocalFree};
use windows_sys::Win32::Security::Authorization::{
    ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1, SE_FILE_OBJECT,
    SetNamedSecurityInfoW,
};
use windows_sys::Win32::Security::{
    ACL, DACL_SECURITY_INFORMATION, GetSecurityDescriptorDacl, PROTECTED_DACL_SECURITY_INFORMATION,
    PSECURITY_DESCRIPTOR,
};

use crate::accounts::sid;

/// The directory's list for the account `sid`, as SDDL.
fn private_sddl(sid: &str) -> String {
    format!("D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)(A;OICI;FA;;;{sid})")
}

/// Gives `dir` the private list described above.
pub(crate) fn make_private(dir: &Path) -> io::Result<()> {
    let me = sid::of_current_process()?;
    let descriptor = Descriptor::from_sddl(&private_sddl(&me.sid))?;
    let mut present = 0;
    let mut dacl: *mut ACL = std::ptr::null_mut();
    let mut defaulted = 0;
    // SAFETY: a valid descriptor and three out-parameters; the ACL points into it.
    if unsafe { GetSecurityDescriptorDacl(descriptor.0, &mut present, &mut dacl, &mut defaulted) }
        == 0
    {
        return Err(io::Error::last_os_error());
    }
    let path = wide(dir);
    // SAFETY: a NUL-terminated path and an ACL that outlives the call (held by
    // `descriptor`); owner, group and SACL are left as they are (null).
    let code = unsafe {
        SetNamedSecurityInfoW(
            path.as_ptr(),
            SE_FILE_OBJECT,
            DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            dacl,
            std::ptr::null(),
        )
    };
    if code != ERROR_SUCCESS {
        return Err(io::Error::from_raw_os_error(code as i32));
    }
    Ok(())
}

/// A security descriptor allocated by the system, freed when dropped.
struct Descriptor(PSECURITY_DESCRIPTOR);

impl Descriptor {
    fn from_sddl(sddl: &str) -> io::Result<Descriptor> {
        let text: Vec<u16> = sddl.encode_utf16().chain(Some(0)).collect();
        let mut descriptor: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
        // SAFETY: a NUL-terminated string; the descriptor is allocated by the call.
        if unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                text.as_ptr(),
                SDDL_REVISION_1,
                &mut descriptor,
                std::ptr::null_mut(),
            )
        } == 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(Descriptor(descriptor))
    }
}

#[cfg(test)]
impl Descriptor {
    /// The access list as SDDL, in the system's own spelling: what a support request
    /// or a test compares.
    fn dacl_sddl(&self) -> io::Result<String> {
        let mut text: *mut u16 = std::ptr::null_mut();
        // SAFETY: a valid descriptor; the string is allocated by the call and freed
        // below.
        if unsafe {
            windows_sys::Win32::Security::Authorization::ConvertSecurityDescriptorToStringSecurityDescriptorW(
                self.0,
                SDDL_REVISION_1,
                DACL_SECURITY_INFORMATION,
                &mut text,
                std::ptr::null_mut(),
            )
        } == 0
        {
            return Err(io::Error::last_os_error());
        }
        let mut len = 0;
        // SAFETY: a NUL-terminated UTF-16 string from the conversion, freed once after.
        let sddl = unsafe {
            while *text.add(len) != 0 {
                len += 1;
            }
            let s = String::from_utf16_lossy(std::slice::from_raw_parts(text, len));
            LocalFree(text.cast());
            s
        };
        Ok(sddl)
    }
}

impl Drop for Descriptor {
    fn drop(&mut self) {
        // SAFETY: allocated with LocalAlloc by the system; freed once.
        unsafe { LocalFree(self.0) };
    }
}

fn wide(path: &Path) -> Vec<u16> {
    use std::os::windows::ffi::OsStrExt;
    path.as_os_str().encode_wide().chain(Some(0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Windows makes of the list the agent asks for. Wine keeps no access lists
    /// on files (it maps them to Unix modes and makes one up when asked), so what a
    /// directory holds afterwards is checked on Windows only; here the list itself is.
    #[test]
    fn the_journal_directory_list_admits_only_the_agent_system_and_administrators() {
        let me = sid::of_current_process().expect("this process's account");
        let descriptor = Descriptor::from_sddl(&private_sddl(&me.sid)).expect("a valid list");
        let sddl = descriptor.dacl_sddl().expect("the list as SDDL");
        assert!(sddl.starts_with("D:P"), "nothing inherited: {sddl}");
        for (who, sid) in [("LocalSystem", "SY"), ("Administrators", "BA")] {
            assert!(
                sddl.contains(&format!("(A;OICI;FA;;;{sid})")),
                "{who}: {sddl}"
            );
        }
        assert!(
            sddl.contains(&format!("(A;OICI;FA;;;{})", me.sid)),
            "the agent's own account: {sddl}"
        );
        assert_eq!(sddl.matches("(A;").count(), 3, "no one else: {sddl}");
    }

    #[test]
    fn the_list_is_set_on_a_real_directory() {
        let dir = tempfile::tempdir().expect("scratch folder");
        make_private(dir.path()).expect("SetNamedSecurityInfoW accepts the list");
        // And again: at every start.
        make_private(dir.path()).expect("set again");
    }
}
