//! `chaperone ssh`: starts a detached, spooled chaperone on another host over
//! SSH, with the spec on its standard input.
//!
//! SSH and sudo stay orthogonal: [`build_command`] only builds the argv,
//! for one of three [`Mode`]s, and quotes the remote command for the remote
//! user's POSIX shell (which is what `ssh HOST COMMAND` runs it with), so
//! any argv, with spaces, quotes, newlines or bytes that are not UTF-8,
//! reaches the remote program exactly.

use clap::Parser;
use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// How SSH and sudo are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// `ssh -l USER HOST -- exec COMMAND`: log in as the user.
    SshAs,
    /// `sudo -n -u USER -- ssh HOST -- exec COMMAND`: become the user here,
    /// then log in with the user's own keys.
    SudoThenSsh,
    /// `ssh HOST -- exec sudo -n -u USER -- COMMAND`: log in as yourself,
    /// then become the user there.
    SshThenSudo,
}

/// How the `ssh` command is made.
#[derive(Clone, Debug)]
pub struct Options {
    /// How to combine SSH and sudo.
    pub mode: Mode,
    /// The SSH client (default `ssh`).
    pub ssh: OsString,
    /// Options for the client, each passed as `-o OPTION`.
    pub ssh_options: Vec<OsString>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            mode: Mode::SshAs,
            ssh: "ssh".into(),
            ssh_options: Vec::new(),
        }
    }
}

/// `arg` quoted for a POSIX shell: in single quotes, each `'` written
/// `'\''`. Every byte but NUL (which no argv can hold) passes unchanged.
pub fn quote(arg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(arg.len() + 2);
    out.push(b'\'');
    for &b in arg {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
    out
}

/// `exec` and each word of `command` quoted: one shell command line that
/// runs exactly `command`.
pub fn shell_command(command: &[OsString]) -> OsString {
    let mut line = b"exec".to_vec();
    for a in command {
        line.push(b' ');
        line.extend(quote(a.as_bytes()));
    }
    OsString::from_vec(line)
}

/// The argv that runs `command` on `host` (as `user`, if given) by `options`.
pub fn build_command(
    command: &[OsString],
    host: &str,
    user: Option<&str>,
    options: &Options,
) -> Vec<OsString> {
    let mut ssh = vec![options.ssh.clone()];
    for o in &options.ssh_options {
        ssh.push("-o".into());
        ssh.push(o.clone());
    }
    let user = user.filter(|u| !u.is_empty());
    // `sudo -n -u USER --`, then `rest`.
    let sudo = |u: &str, rest: &[OsString]| -> Vec<OsString> {
        let mut v: Vec<OsString> = ["sudo", "-n", "-u", u, "--"].map(OsString::from).into();
        v.extend(rest.iter().cloned());
        v
    };
    let (mut argv, remote) = match (options.mode, user) {
        (Mode::SshAs, Some(u)) => {
            ssh.extend(["-l".into(), u.into()]);
            (ssh, command.to_vec())
        }
        (Mode::SudoThenSsh, Some(u)) => (sudo(u, &ssh), command.to_vec()),
        (Mode::SshThenSudo, Some(u)) => (ssh, sudo(u, command)),
        (_, None) => (ssh, command.to_vec()),
    };
    argv.extend([host.into(), "--".into(), shell_command(&remote)]);
    argv
}

/// `chaperone ssh`'s command line.
#[derive(Debug, Parser)]
#[command(
    name = "chaperone ssh",
    about = "Start a detached, spooled chaperone on HOST over SSH",
    after_help = "Runs PROGRAM (or the spec given by --spec) on HOST under `chaperone --spool DIR \
                  --detach -`, prints the running-state results, and returns; \
                  `chaperone spool DIR` on HOST reads it from then on."
)]
pub struct SshArgs {
    /// The user to run as (see --mode).
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    /// How to combine SSH and sudo.
    #[arg(long, value_enum, default_value = "ssh-as")]
    pub mode: Mode,
    /// An option for the SSH client (`-o OPTION`); repeatable.
    #[arg(long = "ssh-option", short = 'o', value_name = "OPTION")]
    pub ssh_options: Vec<OsString>,
    /// The SSH client.
    #[arg(long, default_value = "ssh")]
    pub ssh: OsString,
    /// chaperone on HOST.
    #[arg(long, default_value = "chaperone")]
    pub chaperone: OsString,
    /// The spool directory on HOST (default: a new one under /tmp).
    #[arg(long, value_name = "DIR")]
    pub spool: Option<OsString>,
    /// A spec to run instead of PROGRAM (`-`: standard input).
    #[arg(long, value_name = "PATH")]
    pub spec: Option<std::path::PathBuf>,
    /// With PROGRAM: the process id.
    #[arg(long, default_value = "job")]
    pub id: String,
    /// Print the argv (as a shell command line) instead of running it.
    #[arg(long)]
    pub print_argv: bool,
    /// The host.
    pub host: String,
    /// The program and its arguments.
    #[arg(last = true)]
    pub program: Vec<OsString>,
}

/// A spec that runs `program` as `id`, capturing stdout and stderr.
pub fn program_spec(id: &str, program: &[OsString]) -> Result<serde_json::Value, String> {
    let argv = program
        .iter()
        .map(|a| {
            a.to_str()
                .map(str::to_string)
                .ok_or_else(|| format!("argument {a:?} is not UTF-8, which a spec cannot hold"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let capture = serde_json::json!({"capture": {"mode": "memory", "encoding": "utf-8"}});
    Ok(serde_json::json!({"specs": {id: {
        "argv": argv,
        "fds": [["stdout", capture], ["stderr", capture]],
    }}}))
}

/// Runs `chaperone ssh`; returns the exit code.
pub fn run(args: SshArgs) -> u8 {
    let spec = match (&args.spec, args.program.is_empty()) {
        (Some(p), true) => {
            let read = if p.as_os_str() == "-" {
                let mut v = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut v).map(|_| v)
            } else {
                std::fs::read(p)
            };
            match read {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("error: --spec {}: {e}", p.display());
                    return 2;
                }
            }
        }
        (None, false) => match program_spec(&args.id, &args.program) {
            Ok(v) => serde_json::to_vec(&v).unwrap_or_default(),
            Err(e) => {
                eprintln!("error: {e}");
                return 2;
            }
        },
        _ => {
            eprintln!("error: give a PROGRAM after -- or --spec PATH (not both)");
            return 2;
        }
    };
    let spool = args
        .spool
        .clone()
        .unwrap_or_else(|| format!("/tmp/chaperone-spool-{}", crate::cli::uuid_v4()).into());
    let remote: Vec<OsString> = vec![
        args.chaperone.clone(),
        "--spool".into(),
        spool.clone(),
        "--detach".into(),
        "-".into(),
    ];
    let options = Options {
        mode: args.mode,
        ssh: args.ssh.clone(),
        ssh_options: args.ssh_options.clone(),
    };
    let argv = build_command(&remote, &args.host, args.user.as_deref(), &options);
    if args.print_argv {
        let line: Vec<Vec<u8>> = argv.iter().map(|a| quote(a.as_bytes())).collect();
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&line.join(&b' '));
        let _ = out.write_all(b"\n");
        return 0;
    }
    eprintln!(
        "chaperone ssh: spool {} on {}",
        OsStr::new(&spool).to_string_lossy(),
        args.host
    );
    let Some((program, rest)) = argv.split_first() else {
        return 2;
    };
    let child = std::process::Command::new(program)
        .args(rest)
        .stdin(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {}: {e}", program.to_string_lossy());
            return 2;
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&spec);
    }
    match child.wait() {
        Ok(s) => s.code().map_or(1, |c| u8::try_from(c).unwrap_or(1)),
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_three_modes() {
        let cmd = os(&["chaperone", "--spool", "/tmp/s p", "-"]);
        let o = Options {
            ssh_options: os(&["Port=2222"]),
            ..Options::default()
        };
        let remote = "exec 'chaperone' '--spool' '/tmp/s p' '-'";
        assert_eq!(
            build_command(&cmd, "h", Some("bob"), &o),
            os(&["ssh", "-o", "Port=2222", "-l", "bob", "h", "--", remote])
        );
        let o2 = Options {
            mode: Mode::SudoThenSsh,
            ..o.clone()
        };
        assert_eq!(
            build_command(&cmd, "h", Some("bob"), &o2),
            os(&[
                "sudo",
                "-n",
                "-u",
                "bob",
                "--",
                "ssh",
                "-o",
                "Port=2222",
                "h",
                "--",
                remote
            ])
        );
        let o3 = Options {
            mode: Mode::SshThenSudo,
            ..o
        };
        assert_eq!(
            build_command(&cmd, "h", Some("bob"), &o3),
            os(&[
                "ssh",
                "-o",
                "Port=2222",
                "h",
                "--",
                "exec 'sudo' '-n' '-u' 'bob' '--' 'chaperone' '--spool' '/tmp/s p' '-'"
            ])
        );
        // Without a user every mode is plain ssh.
        assert_eq!(
            build_command(&cmd, "h", None, &o3),
            os(&["ssh", "-o", "Port=2222", "h", "--", remote])
        );
    }

    #[test]
    fn quotes_survive_quotes() {
        assert_eq!(quote(b"it's"), b"'it'\\''s'".to_vec());
        assert_eq!(quote(b""), b"''".to_vec());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any argv (any bytes but NUL) comes back exactly through `sh -c`.
        #[test]
        fn argv_round_trips_through_sh(argv in prop::collection::vec(
            prop::collection::vec(1u8..=255, 0..24), 0..6)) {
            let mut cmd = vec![OsString::from("printf"), OsString::from("%s\\0")];
            cmd.extend(argv.iter().map(|a| OsString::from_vec(a.clone())));
            let line = shell_command(&cmd);
            let out = std::process::Command::new("/bin/sh").arg("-c").arg(&line).output().unwrap();
            prop_assert!(out.status.success(), "{:?}", out);
            let mut want = Vec::new();
            for a in &argv {
                want.extend_from_slice(a);
                want.push(0);
            }
            if argv.is_empty() {
                want.push(0);
            }
            prop_assert_eq!(out.stdout, want);
        }
    }
}
