//! `demo`, the README's first command, on every family: it runs on the embedded store
//! with no services, prints its summary and stops cleanly when its time is up.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn the_demo_of_every_family_runs_and_stops() {
    for family in ["search", "reading", "ads", "commerce", "watch"] {
        let mut cmd = engine_command();
        cmd.args(["demo", "--dataflow", family, "--seconds", "3"])
            .args(["--http", "127.0.0.1:0", "--rate", "2000"]);
        let out = output_within(&mut cmd, Duration::from_secs(90));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "demo --dataflow {family}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary = stdout
            .lines()
            .find(|l| l.contains("consumed"))
            .unwrap_or("");
        let consumed: u64 = summary
            .split_whitespace()
            .skip_while(|w| *w != "consumed")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(
            consumed > 0,
            "demo --dataflow {family} consumed nothing: {stdout}"
        );
    }
}
