//! Splitting a command string into argv by POSIX shell word rules, without a
//! shell: no expansion of variables, globs or `~`, and no operators; only
//! blanks, quotes and backslashes, so `'a b' "c\"d" e\ f` is three words.

use std::fmt;

/// Why a command string cannot be split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitError {
    /// A quote opened at this byte offset is never closed.
    Unterminated {
        /// `'` or `"`.
        quote: char,
        /// Where it opened.
        at: usize,
    },
    /// The string ends in a lone backslash.
    TrailingBackslash,
    /// The string has no words.
    Empty,
}

impl fmt::Display for SplitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SplitError::Unterminated { quote, at } => {
                write!(f, "the {quote} at byte {at} is never closed")
            }
            SplitError::TrailingBackslash => f.write_str("it ends in a lone backslash"),
            SplitError::Empty => f.write_str("it has no words"),
        }
    }
}

impl std::error::Error for SplitError {}

/// The words of `s`.
pub fn split(s: &str) -> Result<Vec<String>, SplitError> {
    let mut words = Vec::new();
    let mut word = String::new();
    // Whether a word has begun (so `''` is an empty word, not nothing).
    let mut in_word = false;
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some((_, '\'')) => break,
                        Some((_, c)) => word.push(c),
                        None => return Err(SplitError::Unterminated { quote: '\'', at: i }),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some((_, '"')) => break,
                        Some((_, '\\')) => match chars.peek() {
                            // Inside double quotes a backslash escapes only these.
                            Some(&(_, e @ ('\\' | '"' | '$' | '`'))) => {
                                word.push(e);
                                chars.next();
                            }
                            Some(&(_, '\n')) => {
                                chars.next();
                            }
                            Some(_) => word.push('\\'),
                            None => return Err(SplitError::Unterminated { quote: '"', at: i }),
                        },
                        Some((_, c)) => word.push(c),
                        None => return Err(SplitError::Unterminated { quote: '"', at: i }),
                    }
                }
            }
            '\\' => match chars.next() {
                // A backslash-newline joins lines.
                Some((_, '\n')) => {}
                Some((_, e)) => {
                    in_word = true;
                    word.push(e);
                }
                None => return Err(SplitError::TrailingBackslash),
            },
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    if words.is_empty() {
        return Err(SplitError::Empty);
    }
    Ok(words)
}

/// The first character of `s` outside quotes (or, for `$` and `` ` ``, inside
/// double quotes) and not escaped that a shell
/// would act on, where [`split`] passes it on as it is: an operator (`|`,
/// `&`, `;`, `<`, `>`), an expansion (`$`, `` ` ``) or a glob (`*`).
pub fn unquoted_shell_char(s: &str) -> Option<char> {
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                for q in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                }
            }
            '"' => {
                while let Some(q) = chars.next() {
                    match q {
                        '"' => break,
                        '\\' => {
                            chars.next();
                        }
                        // A shell expands these inside double quotes too.
                        '$' | '`' => return Some(q),
                        _ => {}
                    }
                }
            }
            '\\' => {
                chars.next();
            }
            '|' | '&' | ';' | '<' | '>' | '$' | '`' | '*' => return Some(c),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Vec<String> {
        split(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn shell_characters_outside_quotes_are_found() {
        assert_eq!(unquoted_shell_char("sort f | uniq"), Some('|'));
        assert_eq!(unquoted_shell_char("make && make test"), Some('&'));
        assert_eq!(unquoted_shell_char("echo $HOME"), Some('$'));
        assert_eq!(unquoted_shell_char("ls *.rs"), Some('*'));
        assert_eq!(unquoted_shell_char("cmd >out"), Some('>'));
        assert_eq!(unquoted_shell_char("echo '|' \"a;b\" \\> x"), None);
        assert_eq!(unquoted_shell_char("grep -c x file"), None);
        assert_eq!(unquoted_shell_char("echo \"$HOME\""), Some('$'));
        assert_eq!(unquoted_shell_char("echo '$HOME'"), None);
    }

    #[test]
    fn blanks_separate_words() {
        assert_eq!(ok("  sleep\t0.1 \n"), ["sleep", "0.1"]);
    }

    #[test]
    fn quotes_group_and_are_removed() {
        assert_eq!(
            ok(r#"echo 'a b' "c d" e"f"'g'"#),
            ["echo", "a b", "c d", "efg"]
        );
        assert_eq!(ok("printf '' x"), ["printf", "", "x"]);
        assert_eq!(ok(r#"a "it's" 'say "hi"'"#), ["a", "it's", r#"say "hi""#]);
    }

    #[test]
    fn backslashes_escape_outside_quotes_and_some_inside_double() {
        assert_eq!(ok(r"a\ b c\'d"), ["a b", "c'd"]);
        assert_eq!(ok(r#""x\"y\\z\$\n""#), [r#"x"y\z$\n"#]);
        // Single quotes take backslashes literally.
        assert_eq!(ok(r"'a\b'"), [r"a\b"]);
        assert_eq!(ok("a\\\nb"), ["ab"]);
    }

    #[test]
    fn nothing_is_expanded() {
        assert_eq!(
            ok("echo $HOME *.rs ~ a|b"),
            ["echo", "$HOME", "*.rs", "~", "a|b"]
        );
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert_eq!(
            split("echo 'abc"),
            Err(SplitError::Unterminated { quote: '\'', at: 5 })
        );
        assert_eq!(
            split(r#"a "b"#),
            Err(SplitError::Unterminated { quote: '"', at: 2 })
        );
        assert_eq!(split(r"a \"), Err(SplitError::TrailingBackslash));
        assert_eq!(split("   "), Err(SplitError::Empty));
        assert_eq!(
            split("echo 'abc").unwrap_err().to_string(),
            "the ' at byte 5 is never closed"
        );
    }
}
