//! What a packaged Warren needs from its own binary: man pages and shell completions
//! generated from the command-line definition (so they never drift from it), and
//! `warren configure`, which writes the model provider's key where the service reads it.

use std::io::{BufRead, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use clap::{CommandFactory, ValueEnum};

/// Where the packaged service reads its environment (`EnvironmentFile=` of warren.service).
pub const SERVICE_ENV: &str = "/etc/warren/env";

/// A shell to complete in.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Shell {
    /// bash.
    Bash,
    /// zsh.
    Zsh,
    /// fish.
    Fish,
}

/// `warren completions SHELL`: the completion script on stdout.
pub fn completions<C: CommandFactory>(shell: Shell) -> i32 {
    let mut cmd = C::command();
    let out = &mut std::io::stdout();
    match shell {
        Shell::Bash => clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, "warren", out),
        Shell::Zsh => clap_complete::generate(clap_complete::Shell::Zsh, &mut cmd, "warren", out),
        Shell::Fish => clap_complete::generate(clap_complete::Shell::Fish, &mut cmd, "warren", out),
    }
    0
}

/// `warren manpages DIR`: `warren.1` and one page per subcommand (`warren-task.1`, …, down to
/// `warren-task-submit.1`), written into DIR.
pub fn manpages<C: CommandFactory>(dir: &Path) -> i32 {
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("warren: {}: {e}", dir.display());
        return 1;
    }
    let cmd = C::command().version(env!("CARGO_PKG_VERSION"));
    let mut written = 0;
    match write_pages(&cmd, "warren", dir, &mut written) {
        Ok(()) => {
            eprintln!("warren: wrote {written} man pages to {}", dir.display());
            0
        }
        Err(e) => {
            eprintln!("warren: {e}");
            1
        }
    }
}

fn write_pages(cmd: &clap::Command, name: &str, dir: &Path, n: &mut usize) -> std::io::Result<()> {
    let page = cmd.clone().name(name.to_owned());
    let mut buf = Vec::new();
    clap_mangen::Man::new(page).render(&mut buf)?;
    std::fs::write(dir.join(format!("{name}.1")), buf)?;
    *n += 1;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, &format!("{name}-{}", sub.get_name()), dir, n)?;
    }
    Ok(())
}

/// `warren configure`'s arguments.
#[derive(clap::Args, Debug)]
pub struct ConfigureArgs {
    /// The model provider the key is for (openai: any OpenAI-compatible server).
    #[arg(long, value_parser = ["openai", "anthropic"])]
    provider: Option<String>,
    /// Read the key from this environment variable instead of asking.
    #[arg(long, value_name = "VAR")]
    key_from_env: Option<String>,
    /// The provider's base URL (an OpenAI-compatible server's `…/v1`), if not the default.
    #[arg(long, value_name = "URL")]
    base_url: Option<String>,
    /// The environment file to write (root-only, mode 0600).
    #[arg(long, value_name = "FILE", default_value = SERVICE_ENV)]
    env_file: PathBuf,
    /// Keep the daemon's state in this PostgreSQL database (`postgres://…`), shared with other
    /// nodes (written as WARREN_STORE; the URL may hold a password, so it goes here and not
    /// on the command line of the service).
    #[arg(long, value_name = "URL")]
    store: Option<String>,
}

fn ask(prompt: &str, secret: bool) -> std::io::Result<String> {
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    // SAFETY: isatty on stdin has no preconditions.
    let tty = unsafe { libc::isatty(0) } == 1;
    let saved = if secret && tty {
        // SAFETY: termios is plain data; an all-zero value is valid and is filled in below.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr on stdin writes into a valid, owned termios.
        if unsafe { libc::tcgetattr(0, &mut t) } == 0 {
            let mut quiet = t;
            quiet.c_lflag &= !libc::ECHO;
            // SAFETY: tcsetattr on stdin with a valid termios derived from the current one.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &quiet) };
            Some(t)
        } else {
            None
        }
    } else {
        None
    };
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    if let Some(t) = saved {
        // SAFETY: restoring the saved terminal state.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        eprintln!();
    }
    read?;
    Ok(line.trim().to_owned())
}

/// A value that can stand in an environment file line: no newline, NUL, or surrounding space.
fn env_value(what: &str, v: &str) -> Result<String, String> {
    if v.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if v.chars().any(|c| c.is_control()) || v.trim() != v {
        return Err(format!(
            "{what} must be one line without control characters or surrounding spaces"
        ));
    }
    Ok(v.to_owned())
}

/// `warren configure`: write the provider key (and base URL) to the service's environment
/// file, root-only, replacing those variables and keeping the file's other lines.
pub fn configure(a: ConfigureArgs) -> i32 {
    match configure_inner(a) {
        Ok(path) => {
            eprintln!(
                "warren: wrote {} (mode 0600); restart the daemon to use it: systemctl restart warren",
                path.display()
            );
            0
        }
        Err(e) => {
            eprintln!("warren: {e}");
            2
        }
    }
}

fn configure_inner(a: ConfigureArgs) -> Result<PathBuf, String> {
    let provider = match a.provider {
        Some(p) => p,
        None if a.key_from_env.is_some() => "openai".to_owned(),
        None => {
            let p = ask("Provider (openai or anthropic) [openai]: ", false)
                .map_err(|e| e.to_string())?;
            if p.is_empty() { "openai".to_owned() } else { p }
        }
    };
    let (key_var, url_var) = match provider.as_str() {
        "openai" => ("OPENAI_API_KEY", "OPENAI_BASE_URL"),
        "anthropic" => ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"),
        other => return Err(format!("unknown provider {other:?} (openai or anthropic)")),
    };
    let key = match &a.key_from_env {
        Some(var) => {
            std::env::var(var).map_err(|_| format!("${var} is not set (or not valid UTF-8)"))?
        }
        None => ask(&format!("{key_var}: "), true).map_err(|e| e.to_string())?,
    };
    let key = env_value("the key", &key)?;
    let url = a
        .base_url
        .as_deref()
        .map(|u| env_value("the base URL", u))
        .transpose()?;
    let mut set = vec![(key_var, key)];
    if let Some(u) = url {
        set.push((url_var, u));
    }
    if let Some(store) = &a.store {
        if !matches!(
            warren_store::Location::parse(store),
            warren_store::Location::Postgres(_)
        ) {
            return Err(format!(
                "--store {store:?}: a postgres://… or postgresql://… URL"
            ));
        }
        set.push(("WARREN_STORE", env_value("the store URL", store)?));
    }
    write_env(&a.env_file, &set)?;
    Ok(a.env_file)
}

/// Replace `set`'s variables in the environment file at `path` (created if missing), atomically
/// (a temporary file beside it, mode 0600, renamed over it); other lines are kept.
pub fn write_env(path: &Path, set: &[(&str, String)]) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let old = match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => {
            std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?
        }
        Ok(_) => {
            return Err(format!(
                "{} exists and is not a regular file",
                path.display()
            ));
        }
        Err(_) => String::new(),
    };
    let mut out = String::new();
    for line in old.lines() {
        let name = line.split_once('=').map(|(k, _)| k.trim());
        if name.is_some_and(|n| set.iter().any(|(k, _)| *k == n)) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    for (k, v) in set {
        out.push_str(&format!("{k}={v}\n"));
    }
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("env"),
        std::process::id()
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    let written = f
        .write_all(out.as_bytes())
        .and_then(|()| f.sync_all())
        .and_then(|()| f.set_permissions(std::fs::Permissions::from_mode(0o600)));
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("{}: {e}", path.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_env_file_keeps_other_lines_replaces_ours_and_is_private() {
        let dir = std::env::temp_dir().join(format!("warren-env-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let f = dir.join("etc/env");
        write_env(&f, &[("OPENAI_API_KEY", "k1".into())]).unwrap();
        std::fs::write(&f, "# mine\nRUST_LOG=info\nOPENAI_API_KEY=k1\n").unwrap();
        write_env(
            &f,
            &[
                ("OPENAI_API_KEY", "k2".into()),
                ("OPENAI_BASE_URL", "http://h/v1".into()),
            ],
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(&f).unwrap(),
            "# mine\nRUST_LOG=info\nOPENAI_API_KEY=k2\nOPENAI_BASE_URL=http://h/v1\n"
        );
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(env_value("k", "a\nb").is_err());
        assert!(env_value("k", "").is_err());
        assert!(env_value("k", " a").is_err());
        std::os::unix::fs::symlink("/etc/passwd", dir.join("link")).unwrap();
        assert!(
            write_env(&dir.join("link"), &[("A", "b".into())]).is_err(),
            "never through a link"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
