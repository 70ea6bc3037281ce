//! What this binary is: its version and the commit it was built from (by
//! `build.rs`; "unknown" when built outside git). Shown by `--version`, the
//! start-up log line and `lifeline_build_info`.

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const COMMIT: &str = env!("LIFELINE_COMMIT");
/// `lifeline --version` prints `lifeline <this>`.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("LIFELINE_COMMIT"),
    ")"
);
