//! Reading a key's values from the registry (winreg): string values only, every name
//! passed on to [`Settings::parse`] so that an unknown one is refused by name.

use std::io::ErrorKind;

use winreg::RegKey;
use winreg::enums::{HKEY_LOCAL_MACHINE, KEY_READ, REG_SZ};
use winreg::types::FromRegValue;

use super::{GroupPolicyError, Settings};

/// The settings under `HKLM\subkey`; none when the key does not exist (no GPO, or an
/// install without properties).
pub fn read(subkey: &str) -> Result<Settings, GroupPolicyError> {
    let hklm = RegKey::predef(HKEY_LOCAL_MACHINE);
    let read_error = |source| GroupPolicyError::Read {
        key: subkey.to_owned(),
        source,
    };
    let key = match hklm.open_subkey_with_flags(subkey, KEY_READ) {
        Ok(key) => key,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Settings::default()),
        Err(e) => return Err(read_error(e)),
    };
    let mut values = Vec::new();
    for entry in key.enum_values() {
        let (name, value) = entry.map_err(read_error)?;
        // REG_EXPAND_SZ is refused too: the agent would have to expand it, and the
        // ADMX template writes plain strings.
        if value.vtype != REG_SZ {
            return Err(GroupPolicyError::NotString {
                key: subkey.to_owned(),
                name,
                kind: format!("{:?}", value.vtype),
            });
        }
        let text = String::from_reg_value(&value).map_err(read_error)?;
        values.push((name, text));
    }
    Settings::parse(subkey, &values)
}
