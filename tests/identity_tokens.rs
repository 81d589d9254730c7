//! Identity tokens (docs/protocol.md section 9) against the real binary,
//! each token verified by an implementation nobody here wrote: Python's
//! PyJWT with `cryptography`, against the JWK Set it fetches from the socket
//! (tests/clients/verify_token.py). Callers are real processes: curl in real
//! cgroup v2 groups and setuid children. Needs root for those; fails,
//! saying so, otherwise.

mod util;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const ISSUER: &str = "https://guestsock.test";
const DOMAIN: &str = "test.example";
const YES: &str = "Guestsock-Identity: true";

/// `serve` flags every test here uses: a fixed issuer and trust domain.
const FLAGS: [&str; 4] = [
    "--identity-issuer",
    ISSUER,
    "--identity-trust-domain",
    DOMAIN,
];

fn host_name() -> String {
    nix::unistd::gethostname()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// curl's arguments for a token request over `socket` with `headers`,
/// printing the body, a newline and the status.
fn token_curl(socket: &Path, query: &str, headers: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "-sS".into(),
        "--unix-socket".into(),
        socket.display().to_string(),
        "-w".into(),
        "\n%{http_code}".into(),
    ];
    for header in headers {
        args.extend(["-H".into(), header.to_string()]);
    }
    args.push(format!("http://lxd/1.0/identity/token?{query}"));
    args
}

/// A token request with curl from a process in `group`, as `uid` if given.
fn token_in(
    group: &util::Cgroup,
    uid: Option<u32>,
    socket: &Path,
    query: &str,
    headers: &[&str],
) -> (u16, String) {
    let args = token_curl(socket, query, headers);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    util::curl_in(group.command(uid, util::tool("curl"), &args))
}

/// A token request with curl from a setuid child of `uid`.
fn token_as(uid: u32, socket: &Path, query: &str, headers: &[&str]) -> (u16, String) {
    let mut cmd = Command::new(util::tool("setpriv"));
    cmd.args([
        &format!("--reuid={uid}"),
        &format!("--regid={uid}"),
        "--clear-groups",
        util::tool("curl"),
    ]);
    cmd.args(token_curl(socket, query, headers));
    util::curl_in(cmd)
}

/// A token for this test process (a `uid_range` instance of its own uid).
fn my_token(server: &util::Server, query: &str) -> String {
    let mut client = server.connect();
    client.send(
        format!("GET /1.0/identity/token?{query} HTTP/1.1\r\nHost: lxd\r\n{YES}\r\n\r\n")
            .as_bytes(),
    );
    let reply = client.read_reply(false);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/jwt"));
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    reply.text()
}

/// PyJWT's verdict on `token` for `audience` and [`ISSUER`], with the JWKS
/// of `socket`, the verifier's clock at `at` if given.
fn verify(socket: &Path, token: &str, audience: &str, at: Option<u64>) -> Value {
    util::needs_installed(
        "PyJWT with cryptography (for python3)",
        "python3 -m pip install 'PyJWT[crypto]'",
        &["python3", "-c", "import jwt, cryptography"],
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/verify_token.py");
    let mut cmd = Command::new(util::tool("python3"));
    cmd.arg(&script)
        .arg(socket)
        .arg(audience)
        .arg(ISSUER)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(at) = at {
        cmd.arg(at.to_string());
    }
    let mut child = cmd.spawn().expect("python3");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(token.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "verify_token.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the verifier's JSON")
}

/// Checks that PyJWT accepts `token` and returns its claims.
fn verified(socket: &Path, token: &str, audience: &str) -> Value {
    let verdict = verify(socket, token, audience, None);
    assert_eq!(verdict["ok"], true, "{verdict}");
    assert_eq!(verdict["thumbprints_ok"], true, "{verdict}");
    let header = &verdict["header"];
    assert_eq!(
        (&header["alg"], &header["typ"]),
        (&json!("ES256"), &json!("JWT"))
    );
    verdict
}

/// The published kids, from the guest socket.
fn kids(server_socket: &Path) -> Vec<String> {
    let reply = util::Client::connect(server_socket).request("GET", "/1.0/identity/jwks", b"");
    assert_eq!(reply.status, 200);
    reply.json()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

fn base64url_len(text: &str) -> usize {
    text.len() * 6 / 8
}

#[test]
fn two_cgroup_instances_get_tokens_naming_themselves_that_pyjwt_verifies() {
    require_root!();
    let (web, db) = (util::Cgroup::new(), util::Cgroup::new());
    let server = util::Server::start_with(
        json!([
            {"name": "web", "match": {"cgroup": web.path}, "location": "rack1"},
            {"name": "db", "type": "virtual-machine", "match": {"cgroup": db.path}},
        ]),
        &FLAGS,
    );
    let host = host_name();
    let mut jtis = Vec::new();
    for (group, name, kind, location) in [
        (&web, "web", "container", "rack1"),
        (&db, "db", "virtual-machine", host.as_str()),
    ] {
        let (status, token) = token_in(
            group,
            None,
            &server.socket,
            "audience=https://vault.example&ttl=120",
            &[YES],
        );
        assert_eq!(status, 200, "{token}");
        let verdict = verified(&server.socket, &token, "https://vault.example");
        let claims = &verdict["claims"];
        assert_eq!(
            claims["sub"],
            format!("spiffe://{DOMAIN}/host/{host}/instance/{name}"),
            "{claims}"
        );
        assert_eq!(
            claims["guestsock"],
            json!({"instance": name, "type": kind, "location": location, "host": host, "uid": 0})
        );
        assert_eq!(
            (&claims["iss"], &claims["aud"]),
            (&json!(ISSUER), &json!("https://vault.example"))
        );
        let iat = claims["iat"].as_u64().unwrap();
        assert_eq!(claims["nbf"].as_u64(), Some(iat));
        assert_eq!(claims["exp"].as_u64(), Some(iat + 120));
        let jti = claims["jti"].as_str().unwrap();
        assert!(base64url_len(jti) >= 16, "at least 128 bits: {jti}");
        jtis.push(jti.to_owned());
        // For that audience only.
        let other = verify(&server.socket, &token, "https://other.example", None);
        assert_eq!(other["error"], "InvalidAudienceError", "{other}");
    }
    assert_ne!(jtis[0], jtis[1]);
    // Never each other: ten tokens each, every one names its own caller.
    for _ in 0..10 {
        for (group, name) in [(&web, "web"), (&db, "db")] {
            let (_, token) = token_in(group, None, &server.socket, "audience=a", &[YES]);
            let claims = &verified(&server.socket, &token, "a")["claims"];
            assert_eq!(claims["guestsock"]["instance"], name);
            assert!(
                claims["sub"]
                    .as_str()
                    .unwrap()
                    .ends_with(&format!("/instance/{name}"))
            );
        }
    }
}

#[test]
fn a_uid_range_instance_gets_a_token_with_the_callers_own_uid() {
    require_root!();
    let server = util::Server::start_with(
        json!([{"name": "u1", "match": {"uid_range": [300000, 65536]}, "guest_access": "any"}]),
        &FLAGS,
    );
    for uid in [300000, 300005] {
        let (status, token) = token_as(uid, &server.socket, "audience=fleet&ttl=60", &[YES]);
        assert_eq!(status, 200, "{token}");
        let claims = &verified(&server.socket, &token, "fleet")["claims"];
        assert_eq!(claims["guestsock"]["uid"], uid);
        assert_eq!(claims["guestsock"]["instance"], "u1");
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            60
        );
    }
}

#[test]
fn every_refusal_has_its_status_and_the_jwks_is_public() {
    require_root!();
    let (known, stranger) = (util::Cgroup::new(), util::Cgroup::new());
    let server = util::Server::start_with(
        json!([{"name": "c1", "match": {"cgroup": known.path}}]),
        &FLAGS,
    );
    let long = format!("audience={}", "a".repeat(256));
    /// The caller's group and uid, the query, the headers, the status and a
    /// phrase of the answer.
    type Row<'a> = (
        &'a util::Cgroup,
        Option<u32>,
        &'a str,
        Vec<&'a str>,
        u16,
        &'a str,
    );
    let table: Vec<Row<'_>> = vec![
        (
            &stranger,
            None,
            "audience=a",
            vec![YES],
            403,
            "is not part of any registered instance",
        ),
        (
            &known,
            Some(1000),
            "audience=a",
            vec![YES],
            401,
            "Access denied for non-root user",
        ),
        (
            &known,
            None,
            "audience=a",
            vec![],
            403,
            "Guestsock-Identity: true",
        ),
        (
            &known,
            None,
            "audience=a",
            vec!["Guestsock-Identity: false"],
            403,
            "Guestsock-Identity: true",
        ),
        (
            &known,
            None,
            "audience=a",
            vec![YES, "X-Forwarded-For: 10.1.2.3"],
            403,
            "proxy",
        ),
        (
            &known,
            None,
            "audience=a",
            vec![YES, "Forwarded: for=10.1.2.3"],
            403,
            "proxy",
        ),
        (
            &known,
            None,
            "ttl=60",
            vec![YES],
            400,
            "audience is required",
        ),
        (&known, None, "audience=", vec![YES], 400, "visible ASCII"),
        (
            &known,
            None,
            "audience=a%20b",
            vec![YES],
            400,
            "visible ASCII",
        ),
        (&known, None, &long, vec![YES], 400, "visible ASCII"),
        (
            &known,
            None,
            "audience=a&audience=b",
            vec![YES],
            400,
            "twice",
        ),
        (
            &known,
            None,
            "audience=a&ttl=60&ttl=60",
            vec![YES],
            400,
            "ttl is given twice",
        ),
        // Two answers to "did you mean to ask": refused, not one of them
        // picked (the first mints a token if the last one wins).
        (
            &known,
            None,
            "audience=a",
            vec!["Guestsock-Identity: false", YES],
            400,
            "the header field Guestsock-Identity appears more than once",
        ),
        (
            &known,
            None,
            "audience=a",
            vec![YES, "guestsock-identity: TRUE"],
            400,
            "the header field Guestsock-Identity appears more than once",
        ),
        (
            &known,
            None,
            "audience=a&ttl=59",
            vec![YES],
            400,
            "from 60 to 3600",
        ),
        (
            &known,
            None,
            "audience=a&ttl=3601",
            vec![YES],
            400,
            "from 60 to 3600",
        ),
        (
            &known,
            None,
            "audience=a&ttl=ten",
            vec![YES],
            400,
            "from 60 to 3600",
        ),
    ];
    for (group, uid, query, headers, status, needle) in table {
        let (got, body) = token_in(group, uid, &server.socket, query, &headers);
        assert_eq!(got, status, "{query} {headers:?}: {body}");
        assert!(body.contains(needle), "{query} {headers:?}: {body}");
        assert!(!body.contains("eyJ"), "no token in a refusal: {body}");
    }
    // A stranger reads the public keys like anyone.
    let jwks = {
        let args = util::curl_args(&server.socket, "/1.0/identity/jwks");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        util::curl_in(stranger.command(None, util::tool("curl"), &args))
    };
    assert_eq!(jwks.0, 200, "{}", jwks.1);
    let set: Value = serde_json::from_str(&jwks.1).unwrap();
    let key = &set["keys"][0];
    assert_eq!(
        (&key["kty"], &key["crv"], &key["use"], &key["alg"]),
        (
            &json!("EC"),
            &json!("P-256"),
            &json!("sig"),
            &json!("ES256")
        )
    );
    assert!(key.get("d").is_none(), "no private part: {key}");
    // Refusals are counted like any other request: the nine 400s of the
    // query. (The two with a repeated header are not: a request that
    // cannot be read names no endpoint.)
    let metrics = server.admin_call("GET", "/1.0/metrics", b"").text();
    assert!(
        metrics.contains(
            "guestsock_requests_total{endpoint=\"/1.0/identity/token\",status=\"400\"} 9"
        ),
        "{metrics}"
    );
}

#[test]
fn minting_counts_against_the_instances_rate_limit() {
    require_root!();
    let group = util::Cgroup::new();
    let server = util::Server::start_with(
        json!([{"name": "c1", "match": {"cgroup": group.path}}]),
        &["--rate-limit", "1", "--rate-burst", "3"],
    );
    let statuses: Vec<u16> = (0..8)
        .map(|_| token_in(&group, None, &server.socket, "audience=a", &[YES]).0)
        .collect();
    assert_eq!(&statuses[..3], [200, 200, 200], "{statuses:?}");
    assert!(statuses[3..].contains(&429), "{statuses:?}");
}

#[test]
fn a_token_stops_verifying_at_its_expiry() {
    let server = util::Server::start_with(
        json!([{"name": "me", "match": {"uid_range": [util::my_uid(), 1]}, "root_uid": util::my_uid()}]),
        &FLAGS,
    );
    let token = my_token(&server, "audience=exp-test&ttl=60");
    let claims = &verified(&server.socket, &token, "exp-test")["claims"];
    let exp = claims["exp"].as_u64().unwrap();
    let just_before = verify(&server.socket, &token, "exp-test", Some(exp - 1));
    assert_eq!(just_before["ok"], true, "{just_before}");
    for at in [exp, exp + 3600] {
        let after = verify(&server.socket, &token, "exp-test", Some(at));
        assert_eq!(after["error"], "ExpiredSignatureError", "{after}");
    }
    // `guestsock token` and `guestsock identity verify` do the same from
    // the command line.
    let socket = server.socket.display().to_string();
    let admin = server.admin_socket.display().to_string();
    let out = util::run_guestsock(
        &["token", "cli-test", "--ttl", "90", "--socket", &socket],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli_token = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        verified(&server.socket, &cli_token, "cli-test")["claims"]["aud"],
        "cli-test"
    );
    let out = util::run_guestsock(
        &[
            "identity",
            "verify",
            &cli_token,
            "--audience",
            "cli-test",
            "--admin",
            &admin,
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["guestsock"]["instance"], "me");
    let out = util::run_guestsock(
        &[
            "identity",
            "verify",
            &cli_token,
            "--audience",
            "other",
            "--admin",
            &admin,
        ],
        None,
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("issued for audience \"cli-test\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The discovery document names this issuer and the given JWKS URL.
    let out = util::run_guestsock(
        &[
            "identity",
            "discovery",
            "--jwks-uri",
            "https://guestsock.test/jwks.json",
            "--admin",
            &admin,
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let document: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(document["issuer"], ISSUER);
    assert_eq!(document["jwks_uri"], "https://guestsock.test/jwks.json");
    assert_eq!(
        document["id_token_signing_alg_values_supported"],
        json!(["ES256"])
    );
}

#[test]
fn after_a_rotation_old_tokens_verify_until_their_key_is_dropped() {
    let dir = util::TempDir::new();
    let jwks_file = dir.join("public/jwks.json");
    std::fs::create_dir_all(jwks_file.parent().unwrap()).unwrap();
    let mut flags: Vec<String> = FLAGS.iter().map(|s| s.to_string()).collect();
    flags.extend([
        "--identity-jwks-file".into(),
        jwks_file.display().to_string(),
        // The events websocket is not read while the old key's token runs
        // out: no pings it would fail to answer.
        "--ws-ping-interval".into(),
        "600".into(),
    ]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = util::Server::start_with(
        json!([{"name": "me", "match": {"uid_range": [util::my_uid(), 1]}, "root_uid": util::my_uid()}]),
        &flags,
    );
    let mut events = util::websocket(&server.admin_socket, "/1.0/events?type=identity-key");
    let first = my_token(&server, "audience=rot&ttl=60");
    let first_verdict = verified(&server.socket, &first, "rot");
    let old_kid = first_verdict["header"]["kid"].as_str().unwrap().to_owned();
    let exp = first_verdict["claims"]["exp"].as_u64().unwrap();
    assert_eq!(kids(&server.socket), [old_kid.as_str()]);

    let admin = server.admin_socket.display().to_string();
    let out = util::run_guestsock(&["identity", "rotate", "--admin", &admin], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let event = util::next_event(&mut events);
    assert_eq!(event["type"], "identity-key", "{event}");
    assert_eq!(event["metadata"]["action"], "rotated");
    assert_eq!(event["metadata"]["previous"], old_kid.as_str());
    let new_kid = event["metadata"]["kid"].as_str().unwrap().to_owned();
    assert_ne!(new_kid, old_kid);

    // New tokens carry the new kid; the old token still verifies through
    // the published JWKS, which has both keys, on both sockets and in the
    // file.
    let second = my_token(&server, "audience=rot&ttl=60");
    assert_eq!(
        verified(&server.socket, &second, "rot")["header"]["kid"],
        new_kid.as_str()
    );
    assert_eq!(
        verified(&server.socket, &first, "rot")["header"]["kid"],
        old_kid.as_str()
    );
    assert_eq!(verified(&server.admin_socket, &first, "rot")["ok"], true);
    assert_eq!(kids(&server.socket), [old_kid.clone(), new_kid.clone()]);
    // The writer thread writes the file once the new key is durable.
    assert_eq!(file_kids(&jwks_file, 2), [old_kid.clone(), new_kid.clone()]);
    let settings = server.admin_call("GET", "/1.0/identity", b"").json()["metadata"].clone();
    assert_eq!(settings["signing_kid"], new_kid.as_str());
    assert_eq!(settings["keys"][0]["published_until"], exp, "{settings}");

    // Once the old key's last token has expired, the key is dropped: from
    // the JWKS, the file, and with it every token it signed.
    let deadline = Instant::now() + Duration::from_secs(90);
    while kids(&server.socket).contains(&old_kid) {
        assert!(Instant::now() < deadline, "the old key was never dropped");
        thread::sleep(Duration::from_millis(250));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        now >= exp,
        "dropped at {now}, before its last token expired at {exp}"
    );
    let event = util::next_event(&mut events);
    assert_eq!(
        (&event["metadata"]["action"], &event["metadata"]["kid"]),
        (&json!("dropped"), &json!(old_kid))
    );
    assert_eq!(kids(&server.socket), [new_kid.as_str()]);
    assert_eq!(file_kids(&jwks_file, 1), [new_kid.as_str()]);
    // Even with the verifier's clock set back before its expiry, the old
    // token fails: its key is gone.
    let gone = verify(&server.socket, &first, "rot", Some(exp - 10));
    assert_eq!(gone["error"], "PyJWKSetError", "{gone}");
}

#[test]
fn the_schedule_rotates_the_signing_key() {
    let server = util::Server::start_with(
        json!([{"name": "me", "match": {"uid_range": [util::my_uid(), 1]}, "root_uid": util::my_uid()}]),
        &[FLAGS.as_slice(), &["--identity-rotate", "2s"]].concat(),
    );
    let first = kids(&server.socket);
    let mut events = util::websocket(&server.admin_socket, "/1.0/events?type=identity-key");
    // The first rotation, or a later one if the machine was slow to
    // subscribe (a retired key that signed nothing is dropped at once, so
    // a `dropped` may come first): either way a new key replaced another.
    let event = loop {
        let event = util::next_event(&mut events);
        assert_eq!(event["type"], "identity-key", "{event}");
        if event["metadata"]["action"] == "rotated" {
            break event;
        }
        assert_eq!(event["metadata"]["action"], "dropped", "{event}");
    };
    assert_ne!(event["metadata"]["kid"], event["metadata"]["previous"]);
    let token = my_token(&server, "audience=sched&ttl=60");
    let verdict = verified(&server.socket, &token, "sched");
    assert_ne!(verdict["header"]["kid"], first[0].as_str());
}

#[test]
fn keys_survive_a_restart_and_a_sighup_handoff() {
    let instances = json!([{"name": "me", "match": {"uid_range": [util::my_uid(), 1]}, "root_uid": util::my_uid()}]);
    let server = util::Server::start_with(instances, &FLAGS);
    let token = my_token(&server, "audience=keep&ttl=600");
    let kid = verified(&server.socket, &token, "keep")["header"]["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let key_file = server.state_dir.join("identity/keys.json");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", key_file.display());
    let private = {
        let stored: Value = serde_json::from_slice(&std::fs::read(&key_file).unwrap()).unwrap();
        stored["keys"][0]["private_key"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(
        !server.stderr().contains(&private),
        "the key is never logged"
    );

    // A restart: the same key signs and the old token still verifies.
    let dir = server.stop_keep();
    let flags: Vec<String> = FLAGS.iter().map(|s| s.to_string()).collect();
    let mut server = util::Server::start_in(dir, &flags);
    assert_eq!(kids(&server.socket), [kid.as_str()]);
    assert_eq!(verified(&server.socket, &token, "keep")["ok"], true);
    let again = my_token(&server, "audience=keep");
    assert_eq!(
        verified(&server.socket, &again, "keep")["header"]["kid"],
        kid.as_str()
    );

    // A SIGHUP handoff: the new process serves the same keys.
    let status = server.signal_and_wait(nix::sys::signal::Signal::SIGHUP);
    assert!(status.success(), "{status}: {}", server.stderr());
    let state = server.state_dir.display().to_string();
    let new_pid = Command::new(util::tool("pgrep"))
        .args(["-f", &state])
        .output()
        .unwrap();
    let new_pid = String::from_utf8_lossy(&new_pid.stdout).trim().to_string();
    let checks = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert!(!new_pid.is_empty(), "no new process");
        let deadline = Instant::now() + util::PATIENCE;
        while std::os::unix::net::UnixStream::connect(&server.admin_socket).is_err() {
            assert!(Instant::now() < deadline, "the new process never served");
            thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(kids(&server.socket), [kid.as_str()]);
        assert_eq!(verified(&server.socket, &token, "keep")["ok"], true);
        let third = my_token(&server, "audience=keep");
        assert_eq!(
            verified(&server.socket, &third, "keep")["header"]["kid"],
            kid.as_str()
        );
    }));
    for pid in new_pid.split_whitespace() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid.parse().unwrap()),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    thread::sleep(Duration::from_millis(300));
    if let Err(e) = checks {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn a_damaged_key_file_stops_the_start_naming_it() {
    let server = util::Server::start(json!([]));
    let dir = server.stop_keep();
    let key_file = dir.join("state/identity/keys.json");
    let text = std::fs::read_to_string(&key_file).unwrap();
    for (damaged, needle) in [
        (text[..text.len() / 2].to_owned(), "corrupt key file"),
        (
            text.replace("\"version\": 1", "\"version\": 9"),
            "format version 9",
        ),
    ] {
        std::fs::write(&key_file, damaged).unwrap();
        let out = util::run_guestsock(
            &[
                "serve",
                "--socket",
                &dir.join("guest/sock").display().to_string(),
                "--admin-socket",
                &dir.join("admin.sock").display().to_string(),
                "--state-dir",
                &dir.join("state").display().to_string(),
            ],
            None,
        );
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&key_file.display().to_string()) && stderr.contains(needle),
            "{stderr}"
        );
    }
}

/// The kids in the JWKS file at `path`, once it holds `count` keys (the
/// writer thread writes it after the change of keys is durable); fails if
/// it does not within the test's patience.
fn file_kids(path: &std::path::Path, count: usize) -> Vec<String> {
    let deadline = Instant::now() + util::PATIENCE;
    loop {
        let file: Value = std::fs::read(path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or(Value::Null);
        let kids: Vec<String> = file["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|key| key["kid"].as_str().map(str::to_owned))
            .collect();
        if kids.len() == count {
            return kids;
        }
        assert!(
            Instant::now() < deadline,
            "{} never held {count} keys: {file}",
            path.display()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Anyone holding a token can make its signature's high-S twin `(r, n - s)`
/// without the key (ECDSA malleability): a second spelling of the same
/// token. guestsock mints low-S tokens only, and `guestsock identity
/// verify` refuses the twin, although `cryptography` accepts its signature.
#[test]
fn identity_verify_refuses_a_signatures_high_s_twin() {
    util::needs_installed(
        "cryptography (for python3)",
        "python3 -m pip install 'PyJWT[crypto]'",
        &["python3", "-c", "import jwt, cryptography"],
    );
    let server = util::Server::start_with(
        json!([{"name": "me", "match": {"uid_range": [util::my_uid(), 1]}, "root_uid": util::my_uid()}]),
        &FLAGS,
    );
    let admin = server.admin_socket.display().to_string();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/high_s_twin.py");
    let verify_cli = |token: &str| {
        util::run_guestsock(
            &[
                "identity",
                "verify",
                token,
                "--audience",
                "twin",
                "--admin",
                &admin,
            ],
            None,
        )
    };
    // Several tokens: ring alone would make a high S for half of them.
    for _ in 0..8 {
        let token = my_token(&server, "audience=twin");
        let mut child = Command::new(util::tool("python3"))
            .arg(&script)
            .arg(&server.socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(token.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "high_s_twin.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let twin: Value = serde_json::from_slice(&out.stdout).expect("the script's JSON");
        assert_eq!(twin["low_s"], true, "a minted token is low-S: {token}");
        assert_eq!(twin["twin_verifies"], true, "the twin is a valid signature");

        let out = verify_cli(&token);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = verify_cli(twin["twin"].as_str().unwrap());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "the twin verified: {stderr}");
        assert!(stderr.contains("high-S twin"), "{stderr}");
    }
}
