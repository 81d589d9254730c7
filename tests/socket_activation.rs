//! Socket activation and restarts that containers never notice: with the
//! listening sockets held by a stand-in for systemd (`LISTEN_FDS`), guestsock
//! is restarted while clients keep connecting; every connection attempt is
//! answered, the socket's inode never changes, and readiness and stopping
//! are announced over `NOTIFY_SOCKET`.

mod util;

use std::path::Path;
use std::process::Command;

use serde_json::json;

#[test]
fn restarts_under_socket_activation_drop_nothing() {
    let dir = util::TempDir::new();
    let instances = dir.join("instances.json");
    std::fs::write(
        &instances,
        json!({"instances": [{"name": "c1", "match": {"uid_range": [util::my_uid(), 1]},
                              "root_uid": util::my_uid(), "config": {"user.foo": "bar"}}]})
        .to_string(),
    )
    .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/mini_systemd.py");
    let out = Command::new(util::tool("python3"))
        .arg(&script)
        .arg(util::bin())
        .arg(&dir.path)
        .arg(&instances)
        .arg("3")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["failures"], json!([]), "{report}");
    assert!(report["requests"].as_u64().unwrap() > 20, "{report}");
    assert_eq!(report["same_inode"], true);
    let notes = report["notifications"].to_string();
    assert_eq!(notes.matches("READY=1").count(), 4, "{notes}");
    assert!(notes.contains("STATUS=serving 1 instances"), "{notes}");
    assert!(notes.contains("STOPPING=1"), "{notes}");
    assert!(
        dir.join("guest/sock").exists(),
        "the activated socket is never removed"
    );
}
