//! Text that came from a host (an error it printed, a check's failure) as it
//! may reach a result, a JUnit file or a build log: one line of characters
//! that print. A host's root can make its messages say anything; it cannot
//! make them move a terminal's cursor, forge another host's line, reorder
//! text with bidi controls, or make an XML file unparseable for every host.

/// `text` with every control character (C0, DEL, C1), line and paragraph
/// separator, bidi control, zero-width character and XML 1.0 noncharacter
/// gone; line breaks and tabs become spaces.
pub fn plain(text: &str) -> String {
    text.chars()
        .filter_map(|c| match c {
            '\n' | '\r' | '\t' | '\u{2028}' | '\u{2029}' => Some(' '),
            c if hidden(c) => None,
            c => Some(c),
        })
        .collect()
}

/// Whether `c` prints nothing, or steers how what follows prints, or is no
/// character XML 1.0 allows.
fn hidden(c: char) -> bool {
    let code = c as u32;
    c.is_control()
        || matches!(code, 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2069 | 0xFEFF | 0x061C)
        || (0xFDD0..=0xFDEF).contains(&code)
        || code & 0xFFFE == 0xFFFE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_host_sends_prints_as_one_plain_line() {
        assert_eq!(plain("`api-1`: failed"), "`api-1`: failed");
        assert_eq!(
            plain("\u{1b}[1A\rhost 127.85.0.2: deployed\u{7}"),
            "[1A host 127.85.0.2: deployed"
        );
        assert_eq!(plain("a\u{202e}cba\u{2066}\u{200b}\u{feff}"), "acba");
        assert_eq!(
            plain("x\u{fffe}\u{ffff}\u{1fffe}\u{fdd0}\u{85}\u{9b}y"),
            "xy"
        );
        assert_eq!(plain("line\nline\u{2028}end\tx"), "line line end x");
        assert_eq!(plain("caf\u{e9} \u{1f600}"), "caf\u{e9} \u{1f600}");
    }
}
