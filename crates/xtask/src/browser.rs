//! The browser the dashboard's end-to-end test drives: Debian's Chromium and
//! its ChromeDriver, installed with `apt-get` when missing.
//!
//! Test tools that download their own browser (`npx playwright install`,
//! puppeteer) cannot reach their hosts from these machines; Debian's packages
//! come from the distribution mirror, which they can. The test finds the two
//! programs at [`CHROMIUM`] and [`CHROMEDRIVER`] (or at `CHROMIUM_BIN` and
//! `CHROMEDRIVER_BIN`, for a machine that has them elsewhere).

use crate::toolchain::{run, step, ToolError};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where Debian's `chromium` package puts the browser.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Where Debian's `chromium-driver` package puts ChromeDriver.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The browser and its driver, as the tests should start them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Browser {
    /// The Chromium executable.
    pub chromium: PathBuf,
    /// The ChromeDriver executable.
    pub chromedriver: PathBuf,
}

impl Browser {
    /// Where the programs are expected: the environment's override, else
    /// Debian's paths. Nothing is checked.
    pub fn locate() -> Self {
        let from_env = |name: &str, default: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(default))
        };
        Self {
            chromium: from_env("CHROMIUM_BIN", CHROMIUM),
            chromedriver: from_env("CHROMEDRIVER_BIN", CHROMEDRIVER),
        }
    }

    /// Whether both programs exist.
    pub fn present(&self) -> bool {
        is_executable(&self.chromium) && is_executable(&self.chromedriver)
    }

    /// Installs Chromium and ChromeDriver from Debian's packages when either
    /// is missing, then returns where they are.
    pub fn ensure() -> Result<Self, ToolError> {
        let browser = Self::locate();
        if browser.present() {
            return Ok(browser);
        }
        step("installing Debian's chromium and chromium-driver (for the dashboard's browser test; once per machine)");
        let apt = |args: &[&str]| {
            let mut cmd = apt_command();
            cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
            cmd
        };
        // A fresh machine may have empty package lists: update once, then install.
        run(&mut apt(&["update", "-q"]), "apt-get update")?;
        run(
            &mut apt(&[
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "chromium",
                "chromium-driver",
            ]),
            "apt-get install chromium chromium-driver",
        )
        .map_err(|e| {
            ToolError(format!(
                "{e}: install the packages chromium and chromium-driver (or set CHROMIUM_BIN and CHROMEDRIVER_BIN)"
            ))
        })?;
        let browser = Self::locate();
        if browser.present() {
            Ok(browser)
        } else {
            Err(ToolError(format!(
                "chromium was installed but {} or {} is still missing",
                browser.chromium.display(),
                browser.chromedriver.display()
            )))
        }
    }
}

/// `apt-get`, through `sudo` when not running as root and sudo exists.
fn apt_command() -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if !root && Path::new("/usr/bin/sudo").is_file() {
        let mut cmd = Command::new("sudo");
        cmd.args(["-n", "apt-get"]);
        cmd
    } else {
        Command::new("apt-get")
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_is_not_present() {
        let browser = Browser {
            chromium: PathBuf::from("/nonexistent/chromium"),
            chromedriver: PathBuf::from("/nonexistent/chromedriver"),
        };
        assert!(!browser.present());
        // A directory is not a program.
        let browser = Browser {
            chromium: std::env::temp_dir(),
            chromedriver: std::env::temp_dir(),
        };
        assert!(!browser.present());
    }
}
