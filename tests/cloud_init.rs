//! cloud-init's own LXD datasource (Debian's `cloud-init` package) reads its
//! instance's meta-data, user-data, vendor-data, network config and devices
//! from guestsock unchanged, from a process in a registered cgroup, and
//! nothing of a neighbour's.

mod util;

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

const PYTHON: &str = "/usr/bin/python3";

fn instance(name: &str, rule: Value, root_uid: u32) -> Value {
    json!({
        "name": name,
        "match": rule,
        "root_uid": root_uid,
        "cloud_init_id": format!("iid-{name}"),
        "config": {
            "user.meta-data": format!("public-keys: [ssh-ed25519 AAAA{name}]\n"),
            "cloud-init.user-data": format!("#cloud-config\nruncmd: [echo {name}]\n"),
            "cloud-init.vendor-data": "#cloud-config\npackages: [jq]\n",
            "cloud-init.network-config": "version: 2\nethernets:\n  eth0:\n    dhcp4: true\n",
            "user.foo": format!("foo of {name}"),
            "volatile.secret": "host only",
        },
        "devices": {"eth0": {"type": "nic", "name": "eth0", "hwaddr": "00:16:3e:00:00:01"}},
    })
}

#[test]
fn cloud_init_lxd_datasource_reads_its_own_instance() {
    util::needs_installed(
        "Debian's cloud-init (its LXD datasource, for /usr/bin/python3)",
        "apt-get install cloud-init",
        &[PYTHON, "-c", "import cloudinit.sources.DataSourceLXD"],
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/cloud_init_lxd.py");
    // As root, the caller is a process in a real cgroup; otherwise this
    // process's own uid stands for the container.
    let group = util::is_root().then(util::Cgroup::new);
    let (rule, root_uid) = match &group {
        Some(group) => (json!({"cgroup": group.path}), 0),
        None => (json!({"uid_range": [util::my_uid(), 1]}), util::my_uid()),
    };
    let neighbour = instance("neighbour", json!({"uid_range": [3000000, 65536]}), 3000000);
    let server = util::Server::start(json!([instance("c1", rule, root_uid), neighbour]));
    let socket = server.socket.display().to_string();
    let output = match &group {
        Some(group) => group
            .command(None, PYTHON, &[script.to_str().unwrap(), &socket])
            .output(),
        None => Command::new(PYTHON).arg(&script).arg(&socket).output(),
    }
    .expect("run python");
    assert!(
        output.status.success(),
        "cloud-init failed: {}{}",
        String::from_utf8_lossy(&output.stderr),
        server.stderr()
    );
    let got: Value = serde_json::from_slice(&output.stdout).expect("JSON from the script");
    eprintln!("cloud-init {}", got["cloud_init_version"]);

    assert_eq!(
        got["metadata"],
        json!({"instance-id": "iid-c1", "local-hostname": "c1", "public-keys": ["ssh-ed25519 AAAAc1"]})
    );
    assert_eq!(got["instance_id"], "iid-c1");
    assert_eq!(got["hostname"], "c1");
    assert_eq!(got["check_instance_id"], true);
    assert_eq!(got["userdata_raw"], "#cloud-config\nruncmd: [echo c1]\n");
    assert_eq!(got["vendordata_raw"], "#cloud-config\npackages: [jq]\n");
    assert_eq!(
        got["network_config"],
        json!({"version": 2, "ethernets": {"eth0": {"dhcp4": true}}})
    );
    assert_eq!(
        got["devices"],
        json!({"eth0": {"type": "nic", "name": "eth0", "hwaddr": "00:16:3e:00:00:01"}})
    );
    let config = got["config"].as_object().unwrap();
    assert_eq!(config["user.foo"], "foo of c1");
    assert!(!config.contains_key("volatile.secret"), "{config:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        !text.contains("neighbour") && !text.contains("host only"),
        "{text}"
    );
}
