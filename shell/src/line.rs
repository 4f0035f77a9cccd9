//! The words of a command line: tokenizing a line (with quotes and escapes)
//! and quoting a string so that it reads back as one word. What the words
//! mean is `commands/`. No I/O here.
//!
//! Quoting follows the Unix shell where it can: `"..."` understands the
//! escapes `\" \\ \n \t \r \0 \u{HEX}`, `'...'` is literal, a backslash
//! outside quotes escapes the next character, and adjacent pieces join
//! (`a"b c"` is one word `ab c`). An unquoted `nil` stands for "absent"
//! (JSON `null`) where a command accepts it; `"nil"` is the string.

/// One word of a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub text: String,
    /// Whether any part of the word was quoted or escaped, so that `"nil"`
    /// is the string and `nil` is null.
    pub quoted: bool,
}

impl Token {
    /// A word from the command line of the shell that started us: already
    /// split by that shell, so it is taken as it is, unquoted.
    pub fn plain(text: impl Into<String>) -> Token {
        Token {
            text: text.into(),
            quoted: false,
        }
    }

    /// `None` for an unquoted `nil`.
    pub fn nullable(&self) -> Option<String> {
        if !self.quoted && self.text == "nil" {
            None
        } else {
            Some(self.text.clone())
        }
    }
}

/// Splits a line into words. Fails on an unterminated quote or a bad `\u{..}`.
pub fn tokenize(line: &str) -> Result<Vec<Token>, String> {
    let scan = scan(line);
    match scan.error {
        Some(e) => Err(e),
        None => Ok(scan.tokens),
    }
}

/// The result of scanning a line, complete or not: what the hinter and the
/// completer see while the user is still typing.
#[derive(Debug, Default)]
pub struct Scan {
    pub tokens: Vec<Token>,
    /// The last token runs to the end of the line (the user is typing it).
    pub open_word: bool,
    pub error: Option<String>,
}

pub fn scan(line: &str) -> Scan {
    let mut out = Scan::default();
    let mut chars = line.chars().peekable();
    let mut word: Option<Token> = None;
    while let Some(c) = chars.next() {
        if c.is_whitespace() {
            if let Some(t) = word.take() {
                out.tokens.push(t);
            }
            continue;
        }
        let w = word.get_or_insert_with(|| Token {
            text: String::new(),
            quoted: false,
        });
        match c {
            '"' => {
                w.quoted = true;
                if let Err(e) = double_quoted(&mut chars, &mut w.text) {
                    out.error.get_or_insert(e);
                }
            }
            '\'' => {
                w.quoted = true;
                let mut closed = false;
                for c in chars.by_ref() {
                    if c == '\'' {
                        closed = true;
                        break;
                    }
                    w.text.push(c);
                }
                if !closed {
                    out.error.get_or_insert("unterminated ' quote".to_string());
                }
            }
            '\\' => {
                w.quoted = true;
                if let Some(c) = chars.next() {
                    w.text.push(c);
                }
            }
            c => w.text.push(c),
        }
    }
    if let Some(t) = word.take() {
        out.tokens.push(t);
        out.open_word = true;
    }
    out
}

/// The rest of a `"..."` piece, its escapes read, onto `text`. Reads to the
/// closing quote; the first error (a bad `\u`, no closing quote) is kept and
/// reading goes on, so that the hinter sees as much of the line as it can.
fn double_quoted(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    text: &mut String,
) -> Result<(), String> {
    let mut error = None;
    while let Some(c) = chars.next() {
        match c {
            '"' => return error.map_or(Ok(()), Err),
            '\\' => match chars.next() {
                Some('n') => text.push('\n'),
                Some('t') => text.push('\t'),
                Some('r') => text.push('\r'),
                Some('0') => text.push('\0'),
                Some('u') => match unicode_escape(chars) {
                    Ok(c) => text.push(c),
                    Err(e) => {
                        error.get_or_insert(e);
                    }
                },
                // \" \\ \' and any other character stand for
                // themselves; an unknown escape keeps its
                // backslash, as Python does.
                Some(c @ ('"' | '\\' | '\'')) => text.push(c),
                Some(c) => {
                    text.push('\\');
                    text.push(c);
                }
                None => break,
            },
            c => text.push(c),
        }
    }
    Err(error.unwrap_or_else(|| "unterminated \" quote".to_string()))
}

fn unicode_escape(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<char, String> {
    const BAD: &str = "bad \\u escape: write \\u{HEX}, e.g. \\u{e9}";
    if chars.next() != Some('{') {
        return Err(BAD.into());
    }
    let mut hex = String::new();
    for c in chars.by_ref() {
        if c == '}' {
            return u32::from_str_radix(&hex, 16)
                .ok()
                .and_then(char::from_u32)
                .ok_or_else(|| BAD.to_string());
        }
        hex.push(c);
    }
    Err(BAD.into())
}

/// Spells a string so that [`tokenize`] reads it back as one word: as it is
/// when that is unambiguous, else in double quotes with escapes.
pub fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s != "nil"
        && !s.starts_with('#')
        && s.chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && !matches!(c, '"' | '\'' | '\\'));
    if plain {
        s.to_string()
    } else {
        quote_always(s)
    }
}

/// `s` in double quotes, escaped so that [`tokenize`] reads it back.
pub fn quote_always(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\0' => out.push_str("\\0"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        tokenize(line)
            .unwrap()
            .into_iter()
            .map(|t| t.text)
            .collect()
    }

    #[test]
    fn tokenizes_quotes_escapes_and_joined_pieces() {
        assert_eq!(words("set  k   v"), ["set", "k", "v"]);
        assert_eq!(
            words(r#"set greeting "hello world""#),
            ["set", "greeting", "hello world"]
        );
        assert_eq!(words(r#"set k 'a "b" \n'"#), ["set", "k", r#"a "b" \n"#]);
        assert_eq!(
            words(r#"set k "tab\there\nnl \"q\" \\ \u{e9} \d""#),
            ["set", "k", "tab\there\nnl \"q\" \\ \u{e9} \\d"]
        );
        assert_eq!(words(r#"a"b c"d"#), ["ab cd"]);
        assert_eq!(words(r"hello\ world"), ["hello world"]);
        assert_eq!(words(r#"set "" """#), ["set", "", ""]);
        assert_eq!(words("  "), Vec::<String>::new());
    }

    #[test]
    fn unterminated_quotes_and_bad_escapes_are_errors() {
        assert!(tokenize(r#"set k "oops"#)
            .unwrap_err()
            .contains("unterminated"));
        assert!(tokenize("set k 'oops")
            .unwrap_err()
            .contains("unterminated"));
        assert!(tokenize(r#"set k "\u{zz}""#).unwrap_err().contains("\\u"));
        assert!(tokenize(r#"set k "\u{110000}""#).is_err());
    }

    #[test]
    fn quote_round_trips_through_tokenize() {
        for s in [
            "plain",
            "",
            "nil",
            "two words",
            "q\"uote",
            "back\\slash",
            "new\nline",
            "'single'",
            "#hash",
            "bell\u{7}",
            "é ü",
            "tab\t",
        ] {
            let line = format!("x {}", quote(s));
            let tokens = tokenize(&line).unwrap();
            assert_eq!(tokens.len(), 2, "{line}");
            assert_eq!(tokens[1].text, s, "{line}");
        }
        assert_eq!(quote("abc"), "abc");
        assert_eq!(quote("a b"), "\"a b\"");
        assert_eq!(quote("nil"), "\"nil\"");
    }
}
