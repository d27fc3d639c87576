//! Fd names: `"stdin"`, `"stdout"`, `"stderr"` or a decimal number, parsed to
//! fd numbers ([`parse_fd_name`]) and normalised back ([`fd_name`]).

use super::SpecError;

/// A [`SpecError::BadFdName`] for `name` in proc `proc_id`.
pub(super) fn bad_fd_name(proc_id: &str, name: &str) -> SpecError {
    SpecError::BadFdName {
        proc_id: proc_id.to_owned(),
        name: name.to_owned(),
    }
}

/// Parses an fd name: `"stdin"`, `"stdout"` and `"stderr"` are 0, 1 and 2; a decimal
/// integer (also negative, like `"-1"`, which fails later in the child with EBADF) is
/// that number. Anything else is [`SpecError::BadFdName`] with an empty `proc_id`
/// ("bad fd name: bogus"); [`validate`](super::validate) names the proc.
pub fn parse_fd_name(name: &str) -> Result<i32, SpecError> {
    match name {
        "stdin" => Ok(0),
        "stdout" => Ok(1),
        "stderr" => Ok(2),
        _ => name.parse::<i32>().map_err(|_| bad_fd_name("", name)),
    }
}

/// The normalised name of fd `fd`, which keys results: `"stdin"`, `"stdout"` and
/// `"stderr"` for 0, 1 and 2, else the decimal number.
pub fn fd_name(fd: i32) -> String {
    match fd {
        0 => "stdin".to_owned(),
        1 => "stdout".to_owned(),
        2 => "stderr".to_owned(),
        _ => fd.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fd_name_parses_aliases_and_numbers() {
        assert_eq!(parse_fd_name("stdin").unwrap(), 0);
        assert_eq!(parse_fd_name("stdout").unwrap(), 1);
        assert_eq!(parse_fd_name("stderr").unwrap(), 2);
        assert_eq!(parse_fd_name("14").unwrap(), 14);
        assert_eq!(parse_fd_name("-1").unwrap(), -1);
        assert!(parse_fd_name("bogus").is_err());
        assert!(parse_fd_name("").is_err());
        assert!(parse_fd_name("99999999999").is_err());
        assert_eq!(fd_name(0), "stdin");
        assert_eq!(fd_name(1), "stdout");
        assert_eq!(fd_name(2), "stderr");
        assert_eq!(fd_name(-1), "-1");
        assert_eq!(fd_name(14), "14");
    }

    proptest! {
        #[test]
        fn fd_name_round_trips(fd in any::<i32>()) {
            prop_assert_eq!(parse_fd_name(&fd_name(fd)).unwrap(), fd);
        }
    }
}
