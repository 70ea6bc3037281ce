//! Which program an upgrade starts.
//!
//! `LIFELINE_UPGRADE_BIN` when set; otherwise "the path this process was
//! started from": `argv[0]` as it was at start-up, made absolute against the
//! working directory of that moment (or looked up in `PATH` when it is a bare
//! name, as the shell did). Deliberately NOT `/proc/self/exe`: that link
//! names the inode that is running, so after a deploy replaced the file
//! (`cargo build`, `cp`, a package upgrade) it reads `.../lifeline (deleted)`
//! and would start the old code again, if anything; and a deploy that swaps
//! a symbolic link (`current -> releases/v2`) wants the link followed anew,
//! not the old target. The start path names whatever is installed there now.
//! `/proc/self/exe` is the last resort when `argv[0]` names nothing, and
//! then only if the file it names still exists under that name.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

static START_PATH: OnceLock<Option<PathBuf>> = OnceLock::new();

/// Records the path this process was started from. Called once at start-up
/// (before anything could change the working directory); later calls keep
/// the first answer.
pub fn remember_start_path() {
    START_PATH.get_or_init(|| {
        let argv0 = std::env::args_os().next()?;
        let cwd = std::env::current_dir().ok()?;
        resolve(&argv0, &cwd, std::env::var_os("PATH"))
    });
}

/// The program an upgrade starts, or why there is none.
pub fn upgrade_target(configured: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(path) = configured {
        return Ok(path.to_path_buf());
    }
    remember_start_path();
    if let Some(Some(path)) = START_PATH.get() {
        return Ok(path.clone());
    }
    let exe = std::fs::read_link("/proc/self/exe").map_err(|e| {
        format!("cannot tell which binary to start ({e}); set LIFELINE_UPGRADE_BIN")
    })?;
    let text = exe.to_string_lossy();
    let path = PathBuf::from(text.strip_suffix(" (deleted)").unwrap_or(&text));
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} is gone and argv[0] names no file; set LIFELINE_UPGRADE_BIN",
            path.display()
        ))
    }
}

/// `argv0` as a path that names the same file from any directory.
fn resolve(argv0: &OsString, cwd: &Path, search: Option<OsString>) -> Option<PathBuf> {
    let path = Path::new(argv0);
    if path.as_os_str().is_empty() {
        return None;
    }
    if path.components().count() > 1 || path.is_absolute() {
        return Some(cwd.join(path));
    }
    // A bare name was found in PATH by whoever started us.
    std::env::split_paths(&search?)
        .map(|dir| cwd.join(dir).join(path))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_path_is_absolute_and_keeps_symbolic_links() {
        let cwd = Path::new("/srv/lifeline");
        assert_eq!(
            resolve(&"./current/lifeline".into(), cwd, None),
            Some(PathBuf::from("/srv/lifeline/./current/lifeline"))
        );
        assert_eq!(
            resolve(&"/usr/bin/lifeline".into(), cwd, None),
            Some(PathBuf::from("/usr/bin/lifeline"))
        );
        // A bare name: the first PATH entry holding such a file.
        assert_eq!(
            resolve(&"sh".into(), cwd, Some("/nonexistent:/bin:/usr/bin".into())),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(resolve(&"".into(), cwd, None), None);
    }

    #[test]
    fn a_configured_binary_wins() {
        assert_eq!(
            upgrade_target(Some(Path::new("/opt/new/lifeline"))),
            Ok(PathBuf::from("/opt/new/lifeline"))
        );
    }
}
