//! Names the commit the binary is built from (`tidemark_build_info{commit}`): `git
//! rev-parse`, or `TIDEMARK_COMMIT` when set (a build outside a clone), else "unknown".

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=TIDEMARK_COMMIT");
    // a commit or a checkout moves HEAD's log
    println!("cargo:rerun-if-changed=.git/logs/HEAD");
    println!("cargo:rerun-if-changed=.git/HEAD");
    let commit = std::env::var("TIDEMARK_COMMIT").ok().or_else(|| {
        let out = Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    println!(
        "cargo:rustc-env=TIDEMARK_COMMIT={}",
        commit.unwrap_or_else(|| "unknown".into())
    );
}
