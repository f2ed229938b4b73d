//! Records the git commit the binary is built from (`VIGIE_GIT_COMMIT`,
//! with `-dirty` when the tree has uncommitted changes), for the audit
//! trail. Outside a git checkout nothing is set and the binary says
//! `unknown`. An explicit `VIGIE_GIT_COMMIT` in the environment (packaging
//! from a tarball) wins.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=VIGIE_GIT_COMMIT");
    if let Ok(given) = std::env::var("VIGIE_GIT_COMMIT") {
        println!("cargo:rustc-env=VIGIE_GIT_COMMIT={given}");
        return;
    }
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        println!("cargo:rerun-if-changed={dir}/index");
        if let Some(head) = git(&["rev-parse", "--symbolic-full-name", "HEAD"]) {
            println!("cargo:rerun-if-changed={dir}/{head}");
        }
    }
    if let Some(commit) = git(&["rev-parse", "HEAD"]) {
        let dirty =
            git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
        let suffix = if dirty { "-dirty" } else { "" };
        println!("cargo:rustc-env=VIGIE_GIT_COMMIT={commit}{suffix}");
    }
}
