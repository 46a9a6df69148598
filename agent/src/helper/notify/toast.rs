//! A toast notification's XML (the `ToastGeneric` schema of Windows 10 and later), as a
//! pure function: Windows shows it (`super::windows`), tests read it on any system.

use super::Notification;

/// The status action's `arguments`, as the toast's `Activated` event returns them.
pub const STATUS_ARGUMENT: &str = "status";
pub const STATUS_LABEL: &str = "Open daymeter status";

/// The toast for `note`. Its `launch` attribute carries the kind (`kind=grace_expired`),
/// which is what a click on the toast's body hands back and what tests look for. An
/// urgent note stays on screen for the long duration (25 s instead of 7 s).
pub fn xml(note: &Notification) -> String {
    let mut xml = format!(
        "<toast launch=\"kind={}\"{}><visual><binding template=\"ToastGeneric\"><text>{}</text><text>{}</text></binding></visual>",
        escape(&note.kind),
        if note.urgent {
            " duration=\"long\""
        } else {
            ""
        },
        escape(&note.summary),
        escape(&note.body),
    );
    if note.offer_status {
        xml.push_str(&format!(
            "<actions><action content=\"{STATUS_LABEL}\" arguments=\"{STATUS_ARGUMENT}\" activationType=\"foreground\"/></actions>"
        ));
    }
    xml.push_str("</toast>");
    xml
}

/// Text as XML character data or an attribute value.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters other than tab and newline are not allowed in XML 1.0.
            c if c.is_control() && c != '\n' && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(urgent: bool, offer_status: bool) -> Notification {
        Notification {
            summary: "AutoCAD <Civil 3D> will be asked to close".to_owned(),
            body: "The offline grace ran out at 14:05 & the product closes \"now\".".to_owned(),
            kind: "grace_expired".to_owned(),
            urgent,
            offer_status,
        }
    }

    #[test]
    fn a_toast_carries_the_kind_the_product_text_and_the_status_action() {
        let xml = xml(&note(true, true));
        let doc = roxmltree::Document::parse(&xml).expect("well-formed XML");
        let toast = doc.root_element();
        assert_eq!(toast.tag_name().name(), "toast");
        assert_eq!(toast.attribute("launch"), Some("kind=grace_expired"));
        assert_eq!(toast.attribute("duration"), Some("long"));
        let texts: Vec<&str> = toast
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text())
            .collect();
        assert_eq!(
            texts,
            [
                "AutoCAD <Civil 3D> will be asked to close",
                "The offline grace ran out at 14:05 & the product closes \"now\".",
            ]
        );
        let binding = toast
            .descendants()
            .find(|n| n.has_tag_name("binding"))
            .expect("a binding");
        assert_eq!(binding.attribute("template"), Some("ToastGeneric"));
        let actions: Vec<(Option<&str>, Option<&str>)> = toast
            .descendants()
            .filter(|n| n.has_tag_name("action"))
            .map(|n| (n.attribute("content"), n.attribute("arguments")))
            .collect();
        assert_eq!(actions, [(Some("Open daymeter status"), Some("status"))]);
    }

    #[test]
    fn a_plain_toast_has_no_action_and_the_short_duration() {
        let xml = xml(&note(false, false));
        let doc = roxmltree::Document::parse(&xml).expect("well-formed XML");
        let toast = doc.root_element();
        assert_eq!(toast.attribute("duration"), None);
        assert!(!toast.descendants().any(|n| n.has_tag_name("actions")));
    }
}
