//! A Windows command line (one string, as the process was started with it) split into
//! the arguments after argv\[0\], the way [`super::Seen::args`] wants them: joined by
//! single spaces, quotes removed.
//!
//! The rules are the Microsoft C runtime's, as programs parse their own command line:
//! whitespace separates arguments outside double quotes; `2n` backslashes before a
//! quote are `n` backslashes and the quote delimits, `2n+1` are `n` and a literal
//! quote; other backslashes are literal. argv\[0\] is simpler: up to the closing quote
//! if it starts with one, else up to the first whitespace.

/// The arguments after argv\[0\] of `line`, joined by single spaces.
pub fn args_of(line: &str) -> String {
    let rest = skip_program(line);
    split(rest).join(" ")
}

fn skip_program(line: &str) -> &str {
    let line = line.trim_start();
    if let Some(quoted) = line.strip_prefix('"') {
        return quoted.split_once('"').map_or("", |(_, rest)| rest);
    }
    line.split_once(char::is_whitespace)
        .map_or("", |(_, rest)| rest)
}

fn split(text: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut current = String::new();
    let mut in_arg = false;
    let mut quoted = false;
    let mut backslashes = 0usize;
    for c in text.chars() {
        match c {
            '\\' => {
                backslashes += 1;
                in_arg = true;
            }
            '"' => {
                current.extend(std::iter::repeat_n('\\', backslashes / 2));
                if backslashes % 2 == 1 {
                    current.push('"');
                } else {
                    quoted = !quoted;
                }
                backslashes = 0;
                in_arg = true;
            }
            c if c.is_whitespace() && !quoted => {
                current.extend(std::iter::repeat_n('\\', backslashes));
                backslashes = 0;
                if in_arg {
                    args.push(std::mem::take(&mut current));
                    in_arg = false;
                }
            }
            c => {
                current.extend(std::iter::repeat_n('\\', backslashes));
                backslashes = 0;
                current.push(c);
                in_arg = true;
            }
        }
    }
    current.extend(std::iter::repeat_n('\\', backslashes));
    if in_arg {
        args.push(current);
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_autocad_toolset_keeps_its_product_switch() {
        assert_eq!(
            args_of(
                r#""C:\Program Files\Autodesk\AutoCAD 2025\acad.exe" /product C3D /language "en-US""#
            ),
            "/product C3D /language en-US"
        );
        assert_eq!(args_of(r"C:\acad.exe   /product   MAP"), "/product MAP");
    }

    #[test]
    fn a_program_alone_has_no_arguments() {
        assert_eq!(args_of(r#""C:\Program Files\x\revit.exe""#), "");
        assert_eq!(args_of("revit.exe"), "");
        assert_eq!(args_of(""), "");
    }

    #[test]
    fn quotes_and_backslashes_follow_the_c_runtime() {
        assert_eq!(args_of(r#"p.exe "a b" c"#), "a b c");
        assert_eq!(args_of(r#"p.exe a\\\"b"#), r#"a\"b"#);
        assert_eq!(args_of(r#"p.exe "C:\dir\\" x"#), r"C:\dir\ x");
        assert_eq!(args_of(r"p.exe C:\dir\file"), r"C:\dir\file");
    }
}
