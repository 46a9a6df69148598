//! Windows: `GetLastInputInfo`, the tick of the last keyboard or mouse input in the
//! calling process's session. That is why the helper reads it and the service does not:
//! in session 0 it would only see the service's own, empty, desktop.

use std::time::Duration;

use windows_sys::Win32::System::SystemInformation::GetTickCount;
use windows_sys::Win32::UI::Input::KeyboardAndMouse::{GetLastInputInfo, LASTINPUTINFO};

use super::{BoxFuture, IdleSource};

/// Every source for this session: the one Windows has.
pub fn sources() -> Vec<Box<dyn IdleSource>> {
    vec![Box::new(LastInput)]
}

/// [`IdleSource`] `getlastinputinfo`.
#[derive(Debug, Default, Clone, Copy)]
pub struct LastInput;

impl IdleSource for LastInput {
    fn name(&self) -> &'static str {
        "getlastinputinfo"
    }

    fn idle(&self) -> BoxFuture<'_, Option<Duration>> {
        // Two cheap calls that do not wait: no thread hop needed.
        let idle = read();
        Box::pin(async move { idle })
    }
}

fn read() -> Option<Duration> {
    let mut info = LASTINPUTINFO {
        cbSize: size_of::<LASTINPUTINFO>() as u32,
        dwTime: 0,
    };
    // SAFETY: `info` is a LASTINPUTINFO with its size set, as the call requires.
    if unsafe { GetLastInputInfo(&mut info) } == 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "GetLastInputInfo failed");
        return None;
    }
    // SAFETY: no arguments.
    let now = unsafe { GetTickCount() };
    Some(Duration::from_millis(u64::from(since(now, info.dwTime))))
}

/// Milliseconds from the tick `last` to the tick `now`. Both are 32-bit milliseconds
/// since boot and wrap every 49.7 days; the difference taken modulo 2^32 stays right
/// across a wrap, for any idle time under 49.7 days.
fn since(now: u32, last: u32) -> u32 {
    now.wrapping_sub(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_idle_time_is_right_across_the_tick_counter_wrap() {
        assert_eq!(since(5_000, 1_000), 4_000);
        // Last input 1 s before the wrap, now 2 s after it.
        assert_eq!(since(2_000, u32::MAX - 999), 3_000);
    }

    #[tokio::test]
    async fn get_last_input_info_answers_in_this_session() {
        assert!(
            LastInput.idle().await.is_some(),
            "GetLastInputInfo gave no answer"
        );
    }
}
