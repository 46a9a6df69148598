//! Windows: toast notifications (`Windows.UI.Notifications`) under the helper's own
//! AppUserModelID, or a plain message box where toasts are unavailable (Windows
//! Server Core, Windows before 10, Wine). [`choose`] decides once, at the helper's
//! start, and the log says which.
//!
//! An unpackaged program may show toasts under an AppUserModelID registered under
//! `HKCU\Software\Classes\AppUserModelId\<id>` with a `DisplayName`; the MSI cannot
//! write the Start-menu shortcut property that is the other way (wixl lacks it), so
//! the helper writes the key itself at each start ([`register`]).
//!
//! The "Open daymeter status" action comes back through the toast's `Activated`
//! event, which Windows raises in this process while it runs; a message box offers it
//! as its Yes button. Either way it reaches [`Notifier::next_action`] through a channel.

use std::io;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use windows::Data::Xml::Dom::XmlDocument;
use windows::Foundation::TypedEventHandler;
use windows::UI::Notifications::{
    ToastActivatedEventArgs, ToastNotification, ToastNotificationManager, ToastNotifier,
};
use windows::core::{HSTRING, IInspectable, Interface};
use windows_sys::Win32::UI::WindowsAndMessaging::{
    IDYES, MB_ICONINFORMATION, MB_ICONWARNING, MB_OK, MB_SETFOREGROUND, MB_TOPMOST, MB_YESNO,
    MessageBoxW,
};

use super::{Action, Notification, Notifier, NotifyError, toast};
use crate::helper::idle::BoxFuture;

/// The helper's AppUserModelID: the name toasts are shown and grouped under.
pub const APP_ID: &str = "Daymeter.Agent";
/// What Windows shows as the toasts' sender.
pub const DISPLAY_NAME: &str = "daymeter";

/// How reminders are shown in this session.
pub enum Choice {
    Toast(ToastNotifier),
    /// Toasts are unavailable, for this reason.
    MessageBox {
        why: String,
    },
}

/// Registers [`APP_ID`] and asks for its toast notifier; the message box when either
/// fails.
pub fn choose() -> Choice {
    // WinRT needs COM on this thread; the helper's one-thread runtime makes every call
    // from here. Any answer will do: an already initialised apartment serves as well.
    // SAFETY: no pointers; paired with nothing, as COM lives as long as the helper.
    let _ = unsafe {
        windows::Win32::System::Com::CoInitializeEx(
            None,
            windows::Win32::System::Com::COINIT_MULTITHREADED,
        )
    };
    if let Err(e) = register(APP_ID) {
        return Choice::MessageBox {
            why: format!("cannot register the AppUserModelID {APP_ID}: {e}"),
        };
    }
    match ToastNotificationManager::CreateToastNotifierWithId(&HSTRING::from(APP_ID)) {
        Ok(notifier) => Choice::Toast(notifier),
        Err(e) => Choice::MessageBox {
            why: format!("Windows.UI.Notifications is not available: {e}"),
        },
    }
}

/// Writes `HKCU\Software\Classes\AppUserModelId\<id>` with its `DisplayName`.
fn register(id: &str) -> io::Result<()> {
    let user = winreg::RegKey::predef(winreg::enums::HKEY_CURRENT_USER);
    let (key, _) = user.create_subkey(format!(r"Software\Classes\AppUserModelId\{id}"))?;
    key.set_value("DisplayName", &DISPLAY_NAME)
}

/// The Windows [`Notifier`].
pub struct Windows {
    toasts: Option<ToastNotifier>,
    actions_tx: UnboundedSender<Action>,
    actions: UnboundedReceiver<Action>,
}

impl Windows {
    /// From [`choose`]'s answer, which it logs (once: the helper builds one notifier).
    pub fn new(choice: Choice) -> Windows {
        let toasts = match choice {
            Choice::Toast(notifier) => {
                tracing::info!(
                    app_id = APP_ID,
                    "reminders are shown as toast notifications"
                );
                Some(notifier)
            }
            Choice::MessageBox { why } => {
                tracing::info!(reason = %why, "toast notifications are unavailable; reminders are shown as message boxes");
                None
            }
        };
        let (actions_tx, actions) = unbounded_channel();
        Windows {
            toasts,
            actions_tx,
            actions,
        }
    }

    fn toast(&self, notifier: &ToastNotifier, note: &Notification) -> windows::core::Result<()> {
        let doc = XmlDocument::new()?;
        doc.LoadXml(&HSTRING::from(toast::xml(note)))?;
        let toast = ToastNotification::CreateToastNotification(&doc)?;
        toast.SetGroup(&HSTRING::from(note.kind.as_str()))?;
        if note.offer_status {
            let tx = self.actions_tx.clone();
            toast.Activated(&TypedEventHandler::<ToastNotification, IInspectable>::new(
                move |_, args| {
                    let asked = args
                        .as_ref()
                        .and_then(|a| a.cast::<ToastActivatedEventArgs>().ok())
                        .and_then(|a| a.Arguments().ok())
                        .is_some_and(|a| a == toast::STATUS_ARGUMENT);
                    if asked {
                        let _ = tx.send(Action::Status);
                    }
                    Ok(())
                },
            ))?;
        }
        notifier.Show(&toast)
    }
}

impl Notifier for Windows {
    fn show<'a>(&'a self, note: &'a Notification) -> BoxFuture<'a, Result<(), NotifyError>> {
        let shown = match &self.toasts {
            Some(notifier) => match self.toast(notifier, note) {
                Ok(()) => Ok(()),
                Err(e) => {
                    // A reminder is worth more than the form it takes.
                    tracing::warn!(error = %e, "a toast could not be shown; showing a message box instead");
                    message_box(note, self.actions_tx.clone())
                }
            },
            None => message_box(note, self.actions_tx.clone()),
        };
        Box::pin(async move { shown.map_err(|e| NotifyError::Server(Box::new(e))) })
    }

    fn next_action(&mut self) -> BoxFuture<'_, Option<Action>> {
        Box::pin(self.actions.recv())
    }
}

/// Shows `note` in a message box on a thread of its own: the box waits for its OK,
/// the helper must not. Yes on a box that offers the status sends [`Action::Status`].
fn message_box(note: &Notification, actions: UnboundedSender<Action>) -> io::Result<()> {
    let (text, style) = message_box_text(note);
    let title = note.summary.clone();
    let offer = note.offer_status;
    std::thread::Builder::new()
        .name("daymeter-message-box".to_owned())
        .spawn(move || {
            let text = wide(&text);
            let title = wide(&title);
            // SAFETY: two NUL-terminated strings that outlive the call; no owner window.
            let answer =
                unsafe { MessageBoxW(std::ptr::null_mut(), text.as_ptr(), title.as_ptr(), style) };
            if offer && answer == IDYES {
                let _ = actions.send(Action::Status);
            }
        })
        .map(|_| ())
}

/// The box's text and style: the body, and the status question where offered.
fn message_box_text(note: &Notification) -> (String, u32) {
    let icon = if note.urgent {
        MB_ICONWARNING
    } else {
        MB_ICONINFORMATION
    };
    // A reminder not noticed is not a reminder: on top, in front.
    let style = icon | MB_SETFOREGROUND | MB_TOPMOST;
    if note.offer_status {
        (
            format!("{}\n\n{}?", note.body, toast::STATUS_LABEL),
            style | MB_YESNO,
        )
    } else {
        (note.body.clone(), style | MB_OK)
    }
}

fn wide(text: &str) -> Vec<u16> {
    text.encode_utf16().chain(Some(0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wine_has_no_toasts_so_the_message_box_is_chosen() {
        // Wine implements no Windows.UI.Notifications; the tests run there.
        match choose() {
            Choice::MessageBox { why } => assert!(!why.is_empty()),
            Choice::Toast(_) => panic!("toasts are not expected under Wine"),
        }
    }

    #[test]
    fn a_message_box_asks_about_the_status_with_yes_and_no() {
        let note = Notification {
            summary: "AutoCAD".to_owned(),
            body: "Offline grace ends at 14:05".to_owned(),
            kind: "grace_warning".to_owned(),
            urgent: true,
            offer_status: true,
        };
        let (text, style) = message_box_text(&note);
        assert_eq!(text, "Offline grace ends at 14:05\n\nOpen daymeter status?");
        assert_eq!(style & MB_YESNO, MB_YESNO);
        assert_eq!(style & MB_ICONWARNING, MB_ICONWARNING);
    }
}
