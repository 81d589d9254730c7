//! The admin command line driven end to end against a real server: tables
//! for people, `--json` for scripts, values from stdin, the server's message
//! and a non-zero exit on every error.

mod util;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

fn cli(server: &util::Server, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(util::bin())
        .args(args)
        .env("GUESTSOCK_ADMIN", &server.admin_socket)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(bytes) = stdin {
        // A command that reads no standard input may exit before it is
        // written: its pipe is then closed, which is not the test's concern.
        match child.stdin.take().unwrap().write_all(bytes) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            written => written.unwrap(),
        }
    }
    child.wait_with_output().unwrap()
}

fn ok(server: &util::Server, args: &[&str]) -> String {
    let out = cli(server, args, None);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(server: &util::Server, args: &[&str], needle: &str) {
    let out = cli(server, args, None);
    assert!(!out.status.success(), "{args:?} succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(needle), "{args:?}: {err:?} lacks {needle:?}");
}

#[test]
fn register_set_and_read_back_through_the_cli() {
    let server = util::Server::start(json!([]));
    let file = server.dir.join("c1.json");
    std::fs::write(
        &file,
        json!({"name": "c1", "match": {"uid_range": [util::my_uid(), 1]}, "root_uid": util::my_uid()}).to_string(),
    )
    .unwrap();
    assert_eq!(
        ok(&server, &["instance", "add", file.to_str().unwrap()]),
        "instance c1 registered\n"
    );
    let out = cli(
        &server,
        &["instance", "add", "-"],
        Some(
            json!({"name": "web-2", "match": {"cgroup": "/system.slice/docker-abc.scope"}})
                .to_string()
                .as_bytes(),
        ),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    ok(&server, &["config", "set", "c1", "user.foo", "bar"]);
    // The guest sees it on its next request.
    assert_eq!(server.get("/1.0/config/user.foo").text(), "bar");
    let out = cli(
        &server,
        &["config", "set", "c1", "cloud-init.user-data", "-"],
        Some(b"#cloud-config\npackages: [jq]\n"),
    );
    assert!(out.status.success());
    assert_eq!(
        server.get("/1.0/config/cloud-init.user-data").text(),
        "#cloud-config\npackages: [jq]\n"
    );
    ok(
        &server,
        &[
            "config",
            "set",
            "c1",
            "user.dash",
            "--",
            "--looks-like-a-flag",
        ],
    );
    assert_eq!(
        ok(&server, &["config", "get", "c1", "user.dash"]),
        "--looks-like-a-flag\n"
    );
    assert_eq!(
        ok(&server, &["config", "get", "c1", "user.foo", "--json"]),
        "\"bar\"\n"
    );

    let table = ok(&server, &["config", "show", "c1"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["KEY", "VALUE"]
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("cloud-init.user-data  #cloud-config [...]")),
        "{table}"
    );
    // Columns line up: every value starts where the header's does.
    let col = lines[0].find("VALUE").unwrap();
    for line in &lines[1..] {
        assert_eq!(line.as_bytes()[col - 1], b' ', "{table}");
        assert_ne!(line.as_bytes()[col], b' ', "{table}");
    }

    ok(
        &server,
        &[
            "device",
            "add",
            "c1",
            "eth0",
            "type=nic",
            "name=eth0",
            "hwaddr=00:16:3e:00:00:01",
        ],
    );
    assert_eq!(
        server.get("/1.0/devices").json()["eth0"]["hwaddr"],
        "00:16:3e:00:00:01"
    );
    let devices = ok(&server, &["device", "list", "c1"]);
    assert!(
        devices.contains("eth0    nic   hwaddr=00:16:3e:00:00:01 name=eth0"),
        "{devices}"
    );
    ok(&server, &["device", "remove", "c1", "eth0"]);
    assert_eq!(server.get("/1.0/devices").json(), json!({}));

    let list = ok(&server, &["instance", "list"]);
    let rows: Vec<Vec<&str>> = list
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        ["NAME", "TYPE", "MATCH", "STATE", "KEYS", "DEVICES"]
    );
    assert_eq!(rows[1][0], "c1");
    assert_eq!(rows[1][4], "3");
    assert_eq!(
        rows[2],
        [
            "web-2",
            "container",
            "cgroup=\"/system.slice/docker-abc.scope\"",
            "Started",
            "0",
            "0"
        ]
    );
    let json: Value = serde_json::from_str(&ok(&server, &["instance", "list", "--json"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);
    assert_eq!(json[0]["config"]["user.foo"], "bar");
    let show: Value = serde_json::from_str(&ok(&server, &["instance", "show", "web-2"])).unwrap();
    assert_eq!(show["match"]["cgroup"], "/system.slice/docker-abc.scope");

    server.guest_ready();
    ok(&server, &["state", "c1", "Started"]);
    assert_eq!(server.get("/1.0").json()["state"], "Started");

    ok(&server, &["config", "unset", "c1", "user.foo"]);
    assert_eq!(server.get("/1.0/config/user.foo").status, 404);
    ok(&server, &["instance", "remove", "web-2"]);
    assert!(!ok(&server, &["instance", "list"]).contains("web-2"));
}

#[test]
fn errors_print_the_servers_message_and_exit_non_zero() {
    let server = util::Server::start(json!([{"name": "c1", "match": {"uid_range": [1000, 1]}}]));
    fails(
        &server,
        &["config", "get", "c1", "user.missing"],
        "404: key \"user.missing\" is not set",
    );
    fails(
        &server,
        &["config", "set", "nope", "user.x", "v"],
        "404: instance \"nope\" not found",
    );
    fails(&server, &["config", "set", "c1", "bad key", "v"], "400");
    fails(&server, &["config", "unset", "c1", "user.never"], "404");
    fails(&server, &["device", "remove", "c1", "eth9"], "404");
    // The states the help lists, and no other, checked before any call.
    let out = cli(&server, &["state", "c1", "Sleeping"], None);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("[possible values: Started, Ready]"), "{err}");
    assert_eq!(
        ok(&server, &["state", "c1", "Ready"]),
        "state c1 set to Ready\n"
    );
    assert_eq!(
        ok(&server, &["state", "c1", "Started"]),
        "state c1 set to Started\n"
    );
    fails(&server, &["instance", "remove", "nope"], "404");
    fails(
        &server,
        &["instance", "add", "/nonexistent.json"],
        "/nonexistent.json",
    );
    let out = cli(
        &server,
        &["instance", "add", "-"],
        Some(br#"{"name": "c2", "match": {"uid_range": [1000, 5]}}"#),
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("409: match rule conflicts with instance \"c1\"")
    );
    fails(
        &server,
        &["instance", "frobnicate"],
        "unrecognized subcommand 'frobnicate'",
    );
    let out = Command::new(util::bin())
        .args(["instance", "list", "--admin", "/nonexistent/admin.sock"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("cannot connect to the admin socket /nonexistent/admin.sock")
    );
}

/// Runs the binary with `args`, neither socket variable set unless `env`
/// sets it, help unwrapped (one line per flag), `stdin` if given.
fn guestsock(args: &[&str], env: &[(&str, &str)], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(util::bin())
        .args(args)
        .env_remove("GUESTSOCK_ADMIN")
        .env_remove("GUESTSOCK_SOCKET")
        .env("COLUMNS", "1000")
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(bytes) = stdin {
        child.stdin.take().unwrap().write_all(bytes).unwrap();
    }
    // Read while it runs: an output larger than a pipe holds (the bash
    // completion script is) would block it if the test only read at exit.
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (done, output) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match output.recv_timeout(util::PATIENCE) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            panic!("guestsock {args:?} did not exit in time");
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Every command and subcommand the command line declares, as the words
/// that name it (`["config", "set"]`), with the command itself.
fn declared_commands() -> Vec<(Vec<String>, clap::Command)> {
    fn walk(command: &clap::Command, path: &[String], out: &mut Vec<(Vec<String>, clap::Command)>) {
        for sub in command.get_subcommands() {
            let mut words = path.to_vec();
            words.push(sub.get_name().to_owned());
            out.push((words.clone(), sub.clone()));
            walk(sub, &words, out);
        }
    }
    let mut out = Vec::new();
    walk(&guestsock::cli::Cli::command(), &[], &mut out);
    out
}

use clap::CommandFactory;

#[test]
fn every_command_and_subcommand_answers_help() {
    let commands = declared_commands();
    let names: Vec<String> = commands.iter().map(|(words, _)| words.join(" ")).collect();
    // The commands PROTOCOL.md section 7 and the README promise, so that an
    // empty or shrunken tree cannot pass.
    for promised in [
        "serve",
        "instance list",
        "instance show",
        "instance add",
        "instance remove",
        "config get",
        "config set",
        "config unset",
        "config show",
        "device add",
        "device set",
        "device remove",
        "device list",
        "state",
        "query",
        "doctor",
        "stats",
        "hook oci",
        "hook lxc",
        "watch docker",
        "completions",
        "man",
    ] {
        assert!(names.iter().any(|n| n == promised), "{promised} missing");
    }
    for (words, command) in &commands {
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        let name = words.join(" ");
        let about = command
            .get_about()
            .unwrap_or_else(|| panic!("{name} has no one-line description"))
            .to_string();
        let mut args = words.clone();
        args.push("--help");
        let out = guestsock(&args, &[], None);
        assert!(out.status.success(), "{name} --help: {}", text(&out.stderr));
        assert!(
            out.stderr.is_empty(),
            "{name} --help: {}",
            text(&out.stderr)
        );
        let help = text(&out.stdout);
        assert!(help.starts_with(&about), "{name} --help: {help}");
        assert!(
            help.contains(&format!("Usage: guestsock {name}")),
            "{name} --help: {help}"
        );
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            assert!(
                arg.get_help().is_some_and(|h| !h.to_string().is_empty()),
                "{name}: {id} has no help"
            );
            if let Some(long) = arg.get_long() {
                assert!(
                    help.contains(&format!("--{long}")),
                    "{name} --help lacks --{long}: {help}"
                );
            }
        }
        // `help WORDS` and `-h` answer too; `help` with the same text.
        let mut args = vec!["help"];
        args.extend(&words);
        let out = guestsock(&args, &[], None);
        assert!(out.status.success(), "help {name}");
        assert_eq!(text(&out.stdout), help, "help {name}");
        let mut args = words.clone();
        args.push("-h");
        assert!(guestsock(&args, &[], None).status.success(), "{name} -h");
    }
    // No command at all: the overview, as a usage error (as a bare
    // `guestsock config` is one): on standard error, exit status 2.
    let out = guestsock(&[], &[], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let overview = text(&out.stderr);
    let out = guestsock(&["config"], &[], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("Usage: guestsock config"));
    for (words, _) in commands.iter().filter(|(words, _)| words.len() == 1) {
        assert!(overview.contains(&format!("  {}", words[0])), "{overview}");
    }
}

#[test]
fn version_is_the_crates() {
    let expected = format!("guestsock {}\n", env!("CARGO_PKG_VERSION"));
    for args in [&["--version"][..], &["-V"]] {
        let out = guestsock(args, &[], None);
        assert!(out.status.success(), "{args:?}");
        assert_eq!(text(&out.stdout), expected, "{args:?}");
    }
}

#[test]
fn mistyped_commands_and_flags_get_a_suggestion() {
    for (args, suggestion) in [
        (&["serv"][..], "a similar subcommand exists: 'serve'"),
        (&["instance", "lsit"], "a similar subcommand exists: 'list'"),
        (
            &["device", "ad", "c1"],
            "a similar subcommand exists: 'add'",
        ),
        (
            &["serve", "--sockt", "/x"],
            "a similar argument exists: '--socket'",
        ),
        (
            &["config", "show", "c1", "--jsn"],
            "a similar argument exists: '--json'",
        ),
        (
            &["serve", "--max-per-instace", "3"],
            "a similar argument exists: '--max-per-instance'",
        ),
    ] {
        let out = guestsock(args, &[], None);
        // A usage error exits 2 (clap's and the shell's convention), a
        // command that ran and failed 1.
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let err = text(&out.stderr);
        assert!(err.contains(suggestion), "{args:?}: {err}");
    }
}

#[test]
fn help_shows_the_defaults_the_code_uses() {
    let limits = guestsock::limits::Tunables::default();
    let help = text(&guestsock(&["serve", "--help"], &[], None).stdout);
    let line = |flag: &str| {
        help.lines()
            .find(|l| l.trim_start().starts_with(flag))
            .unwrap_or_else(|| panic!("no {flag} in {help}"))
            .to_owned()
    };
    for (flag, default) in [
        ("--max-per-instance", limits.max_per_instance.to_string()),
        ("--max-unknown", limits.max_unknown.to_string()),
        (
            "--header-timeout",
            limits.header_timeout.as_secs_f64().to_string(),
        ),
        (
            "--body-timeout",
            limits.body_timeout.as_secs_f64().to_string(),
        ),
        (
            "--idle-timeout",
            limits.idle_timeout.as_secs_f64().to_string(),
        ),
        ("--rate-limit", limits.rate_per_sec.to_string()),
        ("--rate-burst", limits.rate_burst.to_string()),
        (
            "--ws-ping-interval",
            limits.ping_interval.as_secs_f64().to_string(),
        ),
    ] {
        assert!(
            line(flag).ends_with(&format!("[default: {default}]")),
            "{}",
            line(flag)
        );
    }
    assert!(
        line("--max-connections").contains(&format!(
            "the open-file limit minus {}",
            guestsock::limits::RESERVED_FDS
        )),
        "{help}"
    );
    for flag in ["--socket", "--admin-socket", "--state-dir"] {
        assert!(line(flag).contains("[default: /"), "{}", line(flag));
    }
    assert!(line("--socket").contains(guestsock::cli::DEFAULT_SOCKET));
    assert!(line("--state-dir").contains(guestsock::cli::DEFAULT_STATE_DIR));

    let help = text(&guestsock(&["config", "set", "--help"], &[], None).stdout);
    assert!(
        help.contains(&format!(
            "[env: GUESTSOCK_ADMIN=] [default: {}]",
            guestsock::cli::DEFAULT_ADMIN_SOCKET
        )),
        "{help}"
    );
    let help = text(&guestsock(&["query", "--help"], &[], None).stdout);
    assert!(help.contains("[env: GUESTSOCK_SOCKET=]"), "{help}");
}

#[test]
fn socket_variables_are_fallbacks_for_the_flags() {
    let server = util::Server::start(json!([{
        "name": "c1",
        "match": {"uid_range": [util::my_uid(), 1]},
        "root_uid": util::my_uid(),
        "config": {"user.foo": "bar"}
    }]));
    let admin = server.admin_socket.to_str().unwrap();
    let guest = server.socket.to_str().unwrap();

    let out = guestsock(
        &["config", "get", "c1", "user.foo"],
        &[("GUESTSOCK_ADMIN", admin)],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "bar\n");
    // The flag beats the variable.
    let out = guestsock(
        &["config", "get", "c1", "user.foo", "--admin", admin],
        &[("GUESTSOCK_ADMIN", "/nonexistent/admin.sock")],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = guestsock(
        &["config", "get", "c1", "user.foo"],
        &[("GUESTSOCK_ADMIN", "/nonexistent/admin.sock")],
        None,
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("/nonexistent/admin.sock (taken from GUESTSOCK_ADMIN)"),
        "{}",
        text(&out.stderr)
    );

    let out = guestsock(
        &["query", "/1.0/config/user.foo"],
        &[("GUESTSOCK_SOCKET", guest)],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "bar");
    let out = guestsock(
        &["query", "/1.0/config/user.foo", "--socket", guest],
        &[("GUESTSOCK_SOCKET", "/nonexistent/sock")],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = guestsock(
        &["query", "/1.0"],
        &[("GUESTSOCK_SOCKET", "/nonexistent/sock")],
        None,
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("/nonexistent/sock (taken from GUESTSOCK_SOCKET)"),
        "{err}"
    );
    assert!(
        err.contains("mount the directory of its --socket at /dev/lxd"),
        "{err}"
    );
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    let top: Vec<String> = declared_commands()
        .into_iter()
        .filter(|(words, _)| words.len() == 1)
        .map(|(words, _)| words[0].clone())
        .collect();
    for (shell, marker) in [
        ("bash", "complete -F _guestsock"),
        ("zsh", "#compdef guestsock"),
        ("fish", "complete -c guestsock"),
    ] {
        let out = guestsock(&["completions", shell], &[], None);
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        assert!(script.contains(marker), "{shell}: {script}");
        for command in &top {
            assert!(script.contains(command.as_str()), "{shell} lacks {command}");
        }
        // Flags of subcommands are completed too.
        assert!(script.contains("max-per-instance"), "{shell}");
    }
    // The bash script is valid bash.
    let script = guestsock(&["completions", "bash"], &[], None).stdout;
    let dir = util::TempDir::new();
    let file = dir.join("guestsock.bash");
    std::fs::write(&file, script).unwrap();
    let check = Command::new("bash").arg("-n").arg(&file).output().unwrap();
    assert!(check.status.success(), "{}", text(&check.stderr));
    let out = guestsock(&["completions", "tcsh"], &[], None);
    assert!(!out.status.success());
}

#[test]
fn man_pages_in_roff() {
    let out = guestsock(&["man"], &[], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let page = text(&out.stdout);
    assert!(page.contains(".TH guestsock 8"), "{page}");
    for section in [
        ".SH NAME",
        ".SH SYNOPSIS",
        ".SH DESCRIPTION",
        ".SH SUBCOMMANDS",
    ] {
        assert!(page.contains(section), "{section}: {page}");
    }
    for (words, _) in declared_commands().iter().filter(|(w, _)| w.len() == 1) {
        assert!(
            page.contains(&format!("guestsock\\-{}(8)", words[0])),
            "{} not in the page",
            words[0]
        );
    }
    let out = guestsock(&["man", "serve"], &[], None);
    assert!(out.status.success());
    let page = text(&out.stdout);
    assert!(page.contains(".TH guestsock-serve 8"), "{page}");
    assert!(page.contains("\\-\\-max\\-per\\-instance"), "{page}");
    let out = guestsock(&["man", "config", "set"], &[], None);
    assert!(text(&out.stdout).contains(".TH guestsock-config-set 8"));
    // As a person quotes a command's name, too.
    let out = guestsock(&["man", "config set"], &[], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(".TH guestsock-config-set 8"));
    let out = guestsock(&["man", "nope"], &[], None);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("no command \"nope\""));
}

#[test]
fn device_add_refuses_an_existing_device_and_set_replaces_it() {
    let server = util::Server::start(json!([{
        "name": "c1",
        "match": {"uid_range": [util::my_uid(), 1]},
        "root_uid": util::my_uid()
    }]));
    assert_eq!(
        ok(
            &server,
            &[
                "device",
                "add",
                "c1",
                "eth0",
                "type=nic",
                "hwaddr=00:16:3e:00:00:01"
            ]
        ),
        "device c1 eth0 added\n"
    );
    let out = cli(
        &server,
        &[
            "device",
            "add",
            "c1",
            "eth0",
            "type=nic",
            "hwaddr=00:16:3e:00:00:02",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("409: device \"eth0\" already exists"), "{err}");
    assert!(err.contains("guestsock device set c1 eth0"), "{err}");
    // Nothing changed.
    assert_eq!(
        server.get("/1.0/devices").json(),
        json!({"eth0": {"type": "nic", "hwaddr": "00:16:3e:00:00:01"}})
    );

    assert_eq!(
        ok(
            &server,
            &["device", "set", "c1", "eth0", "type=nic", "name=eth1"]
        ),
        "device c1 eth0 set\n"
    );
    // Replaced whole: the old field is gone.
    assert_eq!(
        server.get("/1.0/devices").json(),
        json!({"eth0": {"type": "nic", "name": "eth1"}})
    );
    // `set` also adds.
    ok(
        &server,
        &["device", "set", "c1", "disk0", "type=disk", "path=/srv"],
    );
    assert_eq!(server.get("/1.0/devices").json()["disk0"]["path"], "/srv");

    // The admin route under it: 409 in LXD's envelope; a bad body is 400;
    // only POST is allowed on the collection.
    let body = json!({"name": "eth0", "fields": {"type": "nic"}}).to_string();
    let reply = server.admin_call("POST", "/1.0/instances/c1/devices", body.as_bytes());
    assert_eq!(reply.status, 409);
    assert_eq!(reply.json()["error_code"], 409);
    let reply = server.admin_call(
        "POST",
        "/1.0/instances/c1/devices",
        br#"{"name": "eth2", "type": "nic"}"#,
    );
    assert_eq!(reply.status, 400, "{}", reply.text());
    let reply = server.admin_call(
        "POST",
        "/1.0/instances/c1/devices",
        br#"{"name": "bad name", "fields": {}}"#,
    );
    assert_eq!(reply.status, 400, "{}", reply.text());
    let reply = server.admin_call("GET", "/1.0/instances/c1/devices", b"");
    assert_eq!(reply.status, 405);
    let reply = server.admin_call("POST", "/1.0/instances/nope/devices", body.as_bytes());
    assert_eq!(reply.status, 404);
}

#[test]
fn every_change_confirms_in_one_line_or_quietly_or_as_json() {
    let server = util::Server::start(json!([]));
    // The same changes in each of the three modes, each on its own instance.
    let changes = |name: &str| -> Vec<(Vec<String>, String)> {
        let words = |line: &str| line.split_whitespace().map(String::from).collect();
        vec![
            (
                words("instance add -"),
                format!("instance {name} registered"),
            ),
            (
                words(&format!("config set {name} user.foo bar")),
                format!("config {name} user.foo set"),
            ),
            (
                words(&format!("config unset {name} user.foo")),
                format!("config {name} user.foo unset"),
            ),
            (
                words(&format!("device add {name} eth0 type=nic")),
                format!("device {name} eth0 added"),
            ),
            (
                words(&format!("device set {name} eth0 type=nic name=eth1")),
                format!("device {name} eth0 set"),
            ),
            (
                words(&format!("device remove {name} eth0")),
                format!("device {name} eth0 removed"),
            ),
            (
                words(&format!("state {name} Started")),
                format!("state {name} set to Started"),
            ),
            (
                words(&format!("instance remove {name}")),
                format!("instance {name} removed"),
            ),
        ]
    };
    for mode in ["line", "--quiet", "--json"] {
        let name = format!("c-{}", mode.trim_start_matches('-'));
        let spec = json!({"name": name, "match": {"cgroup": format!("/{name}")}}).to_string();
        for (mut args, line) in changes(&name) {
            if mode != "line" {
                args.push(mode.to_owned());
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = cli(&server, &args, Some(spec.as_bytes()));
            assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
            let stdout = text(&out.stdout);
            match mode {
                "line" => assert_eq!(stdout, format!("{line}\n"), "{args:?}"),
                "--quiet" => assert_eq!(stdout, "", "{args:?}"),
                _ => {
                    assert_eq!(stdout.lines().count(), 1, "{args:?}: {stdout}");
                    let answer: Value = serde_json::from_str(&stdout).unwrap();
                    if args[..2] == ["instance", "remove"] {
                        assert_eq!(answer, json!({}));
                    } else {
                        assert_eq!(answer["name"], name.as_str(), "{args:?}: {stdout}");
                    }
                }
            }
            // Each did its change, whatever it printed.
            let reply = server.admin_call("GET", &format!("/1.0/instances/{name}"), b"");
            match args[..2] {
                ["config", "set"] => {
                    assert_eq!(reply.json()["metadata"]["config"]["user.foo"], "bar")
                }
                ["device", "set"] => {
                    assert_eq!(reply.json()["metadata"]["devices"]["eth0"]["name"], "eth1")
                }
                ["instance", "remove"] => assert_eq!(reply.status, 404),
                _ => assert_eq!(reply.status, 200),
            }
        }
    }
    let out = cli(
        &server,
        &["config", "set", "c1", "user.x", "y", "--quiet", "--json"],
        None,
    );
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("'--quiet' cannot be used with '--json'"));
}

#[test]
fn a_connection_error_names_the_remedy() {
    // No server: what to start, and which flag and variable point elsewhere.
    let out = guestsock(
        &["instance", "list", "--admin", "/nonexistent/admin.sock"],
        &[],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    for needle in [
        "cannot connect to the admin socket /nonexistent/admin.sock (given by --admin)",
        "is `guestsock serve` running?",
        "--admin PATH or GUESTSOCK_ADMIN",
        "--admin-socket",
    ] {
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
    assert_eq!(err.lines().count(), 1, "{err}");

    // A socket file no server listens on any more.
    let dir = util::TempDir::new();
    let stale = dir.join("admin.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let out = guestsock(&["stats", "--admin", stale.to_str().unwrap()], &[], None);
    let err = text(&out.stderr);
    assert!(err.contains("no server answers on it"), "{err}");
    assert!(err.contains("`guestsock serve` is not running"), "{err}");

    // A socket this user may not use: run as root, or --admin-uid.
    let server = util::Server::start(json!([]));
    let admin = server.admin_socket.to_str().unwrap();
    let (out, uid) = if util::is_root() {
        // The admin socket is 0600 and root's: nobody is refused.
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(util::bin())
            .args(["instance", "list", "--admin", admin])
            .output()
            .unwrap();
        (out, 65534)
    } else {
        // Root would pass any mode; the owner does not pass 0000.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(admin, std::fs::Permissions::from_mode(0o000)).unwrap();
        (
            guestsock(&["instance", "list", "--admin", admin], &[], None),
            util::my_uid(),
        )
    };
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("Permission denied"), "{err}");
    assert!(err.contains("run this as root"), "{err}");
    assert!(err.contains(&format!("--admin-uid {uid}")), "{err}");
}

#[test]
fn serve_without_permission_says_run_as_root_or_pick_paths() {
    let dir = util::TempDir::new();
    // A directory the server's user cannot write in.
    let locked = dir.join("locked");
    std::fs::create_dir(&locked).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
    let path = |rel: &str| locked.join(rel).display().to_string();
    let serve = [
        "serve".to_string(),
        "--socket".into(),
        path("guest/sock"),
        "--admin-socket".into(),
        path("admin.sock"),
        "--state-dir".into(),
        path("state"),
    ];
    let out = if util::is_root() {
        // Root writes anywhere: be nobody.
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(util::bin())
            .args(&serve)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    } else {
        let serve: Vec<&str> = serve.iter().map(String::as_str).collect();
        guestsock(&serve, &[], None)
    };
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    for needle in [
        "Permission denied",
        "run it as root",
        "--state-dir, --socket and --admin-socket",
        "guestsock serve --demo",
    ] {
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
}

#[test]
fn a_host_only_key_is_set_and_said_to_be_host_only() {
    let me = util::my_uid();
    let server = util::Server::start(
        json!([{"name": "c1", "match": {"uid_range": [me, 1]}, "root_uid": me}]),
    );
    assert_eq!(
        ok(&server, &["config", "set", "c1", "foo", "bar"]),
        "config c1 foo set (host-only: guests see only user.* and cloud-init.* keys)\n"
    );
    assert_eq!(
        ok(&server, &["config", "set", "c1", "user.foo", "bar"]),
        "config c1 user.foo set\n"
    );
    // What the guest meets, as the line said.
    assert_eq!(server.get("/1.0/config/foo").status, 403);
    assert_eq!(server.get("/1.0/config/user.foo").text(), "bar");
}

#[test]
fn the_wrong_socket_is_named_as_such() {
    let me = util::my_uid();
    let server = util::Server::start(
        json!([{"name": "c1", "match": {"uid_range": [me + 1, 1]}, "root_uid": me + 1}]),
    );
    let guest = server.socket.to_str().unwrap();
    let admin = server.admin_socket.to_str().unwrap();
    // An admin command pointed at the guest socket.
    let out = guestsock(&["instance", "list", "--admin", guest], &[], None);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("{guest} is not guestsock's admin socket")),
        "{err}"
    );
    assert!(err.contains("it looks like the guest socket"), "{err}");
    assert!(err.contains("--admin PATH or GUESTSOCK_ADMIN"), "{err}");
    // A guest query pointed at the admin socket: the answer, and a note.
    let out = guestsock(&["query", "--socket", admin, "/1.0"], &[], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("\"guest_socket\""));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "note: {admin} is guestsock's admin socket, so this is the host's answer, not a guest's; guests ask the guest socket ({guest}"
        )),
        "{err}"
    );
    // The guest socket, asked by a process of no instance: what to do.
    let out = guestsock(&["query", "--socket", guest, "/1.0"], &[], None);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("is not part of any registered instance"),
        "{err}"
    );
    assert!(
        err.contains("`guestsock instance list` on the host"),
        "{err}"
    );
}
