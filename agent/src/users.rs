//! Whose licence a session draws on: the account that runs the product process, by its
//! login name, mapped to the licence user the collector knows (`user_map`).
//!
//! One service meters every account of the machine, so the user cannot be a property
//! of the agent: a shared workstation's morning designer and evening designer are two
//! licence users. The owner is what the kernel says about the process (never what a
//! client says), read when the process is recognised. `user` in the configuration
//! overrides all of this for a single-user machine, as it always did.

use std::collections::BTreeMap;

use serde::Deserialize;

/// How a login name becomes a licence user.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum UserMap {
    /// The login name itself (the default).
    #[default]
    Login,
    /// A template with `{login}` in it (`"{login}@firm.com"`).
    Template(String),
    /// Login → licence user; logins not listed keep their login name.
    Table(BTreeMap<String, String>),
}

/// `user_map` as the configuration file writes it: a template string or a table.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum UserMapFile {
    Template(String),
    Table(BTreeMap<String, String>),
}

impl UserMap {
    /// Checks the file's value: a template must use `{login}` (else every account would
    /// be charged as the same user), a table's values must not be empty.
    pub fn from_file(file: UserMapFile) -> Result<UserMap, String> {
        match file {
            UserMapFile::Template(t) if t == "{login}" => Ok(UserMap::Login),
            UserMapFile::Template(t) if t.contains("{login}") => Ok(UserMap::Template(t)),
            UserMapFile::Template(t) => Err(format!(
                "`{t}` does not contain {{login}}: every account would be charged as one user (write a table to map logins one by one)"
            )),
            UserMapFile::Table(table) => {
                if let Some((login, _)) = table.iter().find(|(_, u)| u.trim().is_empty()) {
                    return Err(format!("login `{login}` maps to an empty user"));
                }
                Ok(UserMap::Table(table))
            }
        }
    }

    /// The licence user of an account with this login name.
    pub fn licence_user(&self, login: &str) -> String {
        match self {
            UserMap::Login => login.to_owned(),
            UserMap::Template(t) => t.replace("{login}", login),
            UserMap::Table(table) => table
                .get(login)
                .cloned()
                .unwrap_or_else(|| login.to_owned()),
        }
    }
}

/// The login name of a uid, from the system's user database (`getpwuid_r`: local
/// files, LDAP or SSSD alike); `None` for a uid it does not know.
#[cfg(unix)]
pub fn login_of(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: `pwd` and `result` are plain out-parameters; `buf` is valid for its
        // length and outlives every pointer getpwuid_r stores into `pwd`, which we read
        // (pw_name) before `buf` is dropped or reallocated.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = unsafe {
            libc::getpwuid_r(
                uid,
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
            return None;
        }
        // SAFETY: pw_name points into `buf`, NUL-terminated by getpwuid_r.
        let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
        return name.to_str().ok().map(str::to_owned);
    }
}

/// The login name of an account id on Windows: the account's name without its domain
/// (`sophie` for `FIRM\sophie`, so `user_map = "{login}@firm.com"` reads as on Linux),
/// from the account table the agent keeps in its journal ([`crate::accounts`]): named
/// once per SID and cached, so an offline machine names its users as before. `None`
/// for an id the table does not know or has not named yet.
#[cfg(windows)]
pub fn login_of(uid: u32) -> Option<String> {
    crate::accounts::installed()?.login_of(uid)
}

#[cfg(not(any(unix, windows)))]
pub fn login_of(_uid: u32) -> Option<String> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(pairs: &[(&str, &str)]) -> UserMapFile {
        UserMapFile::Table(
            pairs
                .iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn by_default_the_licence_user_is_the_login_name() {
        assert_eq!(UserMap::default().licence_user("sophie"), "sophie");
    }

    #[test]
    fn a_template_puts_the_login_in_place() {
        let m = UserMap::from_file(UserMapFile::Template("{login}@firm.com".into())).unwrap();
        assert_eq!(m.licence_user("sophie"), "sophie@firm.com");
    }

    #[test]
    fn a_template_without_the_login_is_refused() {
        let e = UserMap::from_file(UserMapFile::Template("cad@firm.com".into())).unwrap_err();
        assert!(e.contains("{login}"), "{e}");
    }

    #[test]
    fn a_table_maps_listed_logins_and_keeps_the_others() {
        let m = UserMap::from_file(table(&[("sm", "sophie.martin@firm.com")])).unwrap();
        assert_eq!(m.licence_user("sm"), "sophie.martin@firm.com");
        assert_eq!(m.licence_user("jd"), "jd");
        assert!(UserMap::from_file(table(&[("sm", " ")])).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn root_has_a_login_name_and_an_unknown_uid_has_none() {
        assert_eq!(login_of(0).as_deref(), Some("root"));
        assert_eq!(login_of(4_000_000_000), None);
    }
}
