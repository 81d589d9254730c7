//! Every `sh` block of docs/mounting.md and docs/identity.md is run as
//! written, in a root shell (sh, root's `PATH`) on a fresh host made of a
//! private mount namespace (`util::fresh`): the binary at
//! `/usr/local/bin/guestsock`, and the directories a block installs into
//! or serves from private, so the real host is never touched. Blocks are
//! taken by their text: a block changed in a doc fails the step that runs
//! it, and a block added and run by no step, nor listed below with the
//! reason it cannot run here, fails the test.
//!
//! The podman blocks are also what tests/runtime_podman.rs installs podman
//! with before it runs real containers (util::oci).

mod util;

use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use util::docs::Doc;
use util::fresh::{FreshHost, Layer};

/// Runs `command`; it must succeed. Its standard output.
fn ok(mut command: Command, what: &str) -> String {
    let out = command.output().expect("run sh");
    assert!(
        out.status.success(),
        "{what}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn repo_file(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

/// Blocks that cannot run on this machine, each with why; what they name
/// is checked where it can be.
fn listed(doc: &mut Doc, reasons: &[(&str, &str)]) {
    for (start, why) in reasons {
        assert!(!why.is_empty());
        let block = doc.take(start);
        for word in block.split_whitespace().filter(|w| w.starts_with("dist/")) {
            assert!(
                Path::new(env!("CARGO_MANIFEST_DIR")).join(word).is_file(),
                "{}: {word} is missing",
                doc.name
            );
        }
    }
}

#[test]
fn every_mounting_block_runs() {
    require_root!(); // mount namespaces, cgroups
    let mut doc = Doc::load("docs/mounting.md");
    let repo = FreshHost::repo();

    // Finding the match values, for a process in a cgroup of its own.
    let group = util::Cgroup::new();
    let mut sleeper = group.command(None, "sleep", &["60"]).spawn().unwrap();
    let block = doc.take("sed -n 's/^0:://p' /proc/$PID/cgroup");
    let deadline = Instant::now() + util::PATIENCE;
    let found = loop {
        let out = ok(
            {
                let mut c = Command::new("sh");
                c.args(["-c", &block]).env("PID", sleeper.id().to_string());
                c
            },
            &block,
        );
        if out.starts_with(&group.path) || Instant::now() > deadline {
            break out;
        }
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(found, format!("{}\n0\n", group.path));
    let _ = sleeper.kill();
    let _ = sleeper.wait();

    // The install lines of LXC, podman and runc/crun, into private copies.
    let fresh = FreshHost::new(&[
        Layer::Empty("/run"),
        Layer::Copy("/etc/containers"),
        Layer::Copy("/usr/share"),
    ]);
    for (start, installed, from) in [
        (
            "install -D -m 0644 dist/lxc/guestsock.conf",
            "/usr/share/guestsock/lxc.conf",
            "dist/lxc/guestsock.conf",
        ),
        (
            "install -D -m 0644 dist/oci-hooks-fragment.json",
            "/usr/share/guestsock/oci-hooks-fragment.json",
            "dist/oci-hooks-fragment.json",
        ),
        (
            "install -D -m 0644 dist/containers.conf.d/guestsock.conf",
            "/etc/containers/oci/hooks.d/guestsock.json",
            "dist/oci-hooks.d/guestsock.json",
        ),
    ] {
        let block = doc.take(start);
        ok(fresh.sh(&block, &repo), &block);
        assert_eq!(
            ok(fresh.sh(&format!("cat {installed}"), &repo), installed),
            repo_file(from),
            "{block}"
        );
    }
    // podman reads the hook where it is installed: the drop-in lists it.
    let dropin = ok(
        fresh.sh(
            "cat /etc/containers/containers.conf.d/guestsock.conf",
            &repo,
        ),
        "cat",
    );
    assert!(
        dropin.contains("\"/etc/containers/oci/hooks.d\""),
        "{dropin}"
    );
    let block = doc.take("cat > /etc/containers/containers.conf.d/host.conf");
    ok(fresh.sh(&block, &repo), &block);
    let info = ok(
        fresh.sh(
            "podman info --format '{{.Host.OCIRuntime.Name}} {{.Host.CgroupManager}}'",
            &repo,
        ),
        "podman info",
    );
    assert_eq!(info, "runc cgroupfs\n", "podman reads the settings block");

    // The runc merge, on a bundle config made by `runc spec`.
    let bundle = util::TempDir::new();
    ok(
        {
            let mut c = fresh.command(&bundle.path);
            c.args(["runc", "spec"]);
            c
        },
        "runc spec",
    );
    let block = doc.take("jq -s '.[0] as $c | .[1] as $f | $c");
    ok(fresh.sh(&block, &bundle.path), &block);
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("config.json")).unwrap())
            .unwrap();
    let fragment: Value = serde_json::from_str(&repo_file("dist/oci-hooks-fragment.json")).unwrap();
    assert!(
        config["mounts"]
            .as_array()
            .unwrap()
            .contains(&fragment["mounts"][0]),
        "{config:#}"
    );
    assert_eq!(
        config["hooks"]["createRuntime"],
        fragment["hooks"]["createRuntime"]
    );
    assert_eq!(config["hooks"]["poststop"], fragment["hooks"]["poststop"]);
    assert_eq!(config["annotations"], fragment["annotations"]);
    drop(fresh);

    // The socket file against the directory, across a restart.
    let fresh = FreshHost::new(&[Layer::Empty("/run")]);
    let block = doc.take("unshare -m --propagation private sh -c '");
    let out = fresh.sh(&block, &repo).output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("Connection refused"), "{said}");
    assert!(
        said.contains("is not part of any registered instance"),
        "{said}"
    );
    drop(fresh);

    listed(
        &mut doc,
        &[
            (
                "lxc-start -n c1 -l DEBUG",
                "needs an LXC container c1: tests/runtime_lxc.rs reads the hook's reason from that log",
            ),
            (
                "incus config set c1 security.guestapi=false",
                "Incus and LXD are not in Debian 12",
            ),
            (
                "docker run -d --name web",
                "`myimage` stands for the reader's image; tests/runtime_docker.rs runs the same options",
            ),
            (
                "cp dist/guestsock-docker-watch.service",
                "systemctl needs systemd as PID 1",
            ),
            (
                "until value=$(guestsock query",
                "runs in a container, before its registration: tests/runtime_docker.rs",
            ),
            (
                "id=$(docker create --name c1",
                "`myimage` stands for the reader's image; tests/runtime_docker.rs runs this recipe",
            ),
            (
                "podman run -v /run/guestsock/guest:/dev/lxd:ro ...",
                "`...` stands for the reader's image and command",
            ),
            (
                "podman run --name web1",
                "`...` stands for the reader's image and command; tests/runtime_podman.rs passes the same annotations",
            ),
            (
                "mkdir /sys/fs/cgroup/unified/crun",
                "needs a bundle at /path/to/bundle: tests/runtime_crun.rs runs crun this way",
            ),
            (
                "systemd-nspawn -D /var/lib/machines/c1",
                "--boot needs an OS tree and systemd",
            ),
        ],
    );
    doc.assert_all_taken();
}

/// How the fresh host's cgroup hierarchies are mounted.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// As this machine: cgroup2 at `/sys/fs/cgroup/unified` beside the v1
    /// controllers.
    Hybrid,
    /// cgroup2 alone at `/sys/fs/cgroup` (the v1 hierarchies unmounted in
    /// the namespace).
    Unified,
}

impl Shape {
    /// The set-up line, and where cgroup2 is then mounted.
    fn layer(self) -> (Layer<'static>, String) {
        match self {
            Shape::Hybrid => (
                Layer::Line("true".into()),
                util::cgroup2_mount().display().to_string(),
            ),
            Shape::Unified => (
                Layer::Line(
                    "umount -R -l /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup".into(),
                ),
                "/sys/fs/cgroup".into(),
            ),
        }
    }
}

#[test]
fn every_identity_block_runs() {
    require_root!(); // mount namespaces, cgroups
    identity_blocks(Shape::Hybrid);
    identity_blocks(Shape::Unified);
}

fn identity_blocks(shape: Shape) {
    let mut doc = Doc::load("docs/identity.md");
    let repo = FreshHost::repo();
    let (cgroups, cgroup2) = shape.layer();
    // A fresh /var (for /var/www) with an empty /var/lib, and /dev/lxd,
    // where a container has the guest socket's directory.
    let fresh = FreshHost::new(&[
        cgroups,
        Layer::Empty("/run"),
        Layer::Copy("/var"),
        Layer::Empty("/var/lib"),
        Layer::Copy("/dev"),
        Layer::Line(
            "mkdir -p /run/guestsock/guest /dev/lxd && mount --bind /run/guestsock/guest /dev/lxd"
                .into(),
        ),
    ]);
    let block = doc.take("mkdir -p /var/www/host1/.well-known");
    let mut serve = fresh.sh(&block, &repo);
    let log = fresh.dir.join("serve.log");
    serve
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut serve = serve.spawn().unwrap();
    let deadline = Instant::now() + util::PATIENCE;
    while !ok(
        fresh.sh(
            "ls /var/www/host1/ /run/guestsock/ 2>/dev/null || true",
            &repo,
        ),
        "ls",
    )
    .contains("jwks.json")
    {
        assert!(
            serve.try_wait().unwrap().is_none(),
            "{block}: serve exited: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(Instant::now() < deadline, "serve never wrote jwks.json");
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(200));

    let block = doc.take("guestsock identity discovery --jwks-uri");
    ok(fresh.sh(&block, &repo), &block);
    let discovery: Value = serde_json::from_str(&ok(
        fresh.sh("cat /var/www/host1/.well-known/openid-configuration", &repo),
        "cat",
    ))
    .unwrap();
    assert_eq!(discovery["issuer"], "https://host1.example.com");
    assert_eq!(discovery["jwks_uri"], "https://host1.example.com/jwks.json");

    // The container's two ways, from a process of a registered instance.
    let group = util::Cgroup::new();
    let add = format!(
        "echo '{{\"name\": \"web\", \"match\": {{\"cgroup\": \"{}\"}}, \"root_uid\": 0}}' | guestsock instance add -",
        group.path
    );
    ok(fresh.sh(&add, &repo), &add);
    for start in [
        "curl -s --unix-socket /dev/lxd/sock -H 'Guestsock-Identity: true'",
        "guestsock token https://vault.example.com",
    ] {
        let block = doc.take(start);
        let in_group = format!("echo $$ > {cgroup2}{}/cgroup.procs && {block}", group.path);
        let token = ok(fresh.sh(&in_group, &repo), &block);
        assert!(token.starts_with("eyJ"), "{shape:?}: {block}: {token}");
        let verify = format!(
            "guestsock identity verify {} --audience https://vault.example.com",
            token.trim()
        );
        let claims = ok(fresh.sh(&verify, &repo), "verify");
        assert!(
            claims.contains("spiffe://example.com/host/") && claims.contains("/instance/web"),
            "{claims}"
        );
        assert!(claims.contains("https://host1.example.com"), "{claims}");
    }
    ok(
        fresh.sh("kill -TERM $(cat /run/guestsock/guestsock.pid)", &repo),
        "stop",
    );
    let _ = util::wait_with_deadline(&mut serve);
    drop(fresh);

    listed(
        &mut doc,
        &[
            (
                "vault auth enable jwt",
                "HashiCorp Vault is not packaged in Debian",
            ),
            (
                "vault write auth/jwt/login",
                "HashiCorp Vault is not packaged in Debian",
            ),
        ],
    );
    doc.assert_all_taken();
}
