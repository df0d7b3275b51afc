//! Text a model or a cell produced, made safe to print on a person's terminal.
//!
//! A model's reply, a tool's output summary, a tool call's arguments and a stop reason are all
//! hostile input: written raw, an escape sequence in them could clear the screen and hide what
//! ran, rewrite the window title, set the clipboard (OSC 52) or, through `\r`, overwrite the line
//! that showed a command. [`printable`] keeps text, newlines and tabs and shows every other
//! control character as a visible escape (`\x1b`, `\r`). `warren exec` is the exception by
//! design: it is a command's own terminal, as with `docker run` or `bwrap`.

use std::borrow::Cow;

/// `s` with every control character but `\n` and `\t` shown as an escape.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' | '\t' => out.push(c),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let n = u32::from(c);
                if n <= 0xff {
                    out.push_str(&format!("\\x{n:02x}"));
                } else {
                    out.push_str(&format!("\\u{{{n:x}}}"));
                }
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_cannot_reach_the_terminal() {
        assert_eq!(printable("plain\ttext\n"), "plain\ttext\n");
        let evil = "ok\x1b[2J\x1b]52;c;ZXZpbA==\x07\rrm -rf /\u{9b}";
        let shown = printable(evil);
        assert!(!shown.chars().any(|c| c.is_control()), "{shown:?}");
        assert_eq!(shown, "ok\\x1b[2J\\x1b]52;c;ZXZpbA==\\x07\\rrm -rf /\\x9b");
    }
}
