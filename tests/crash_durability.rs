//! After `kill -9` at any moment, every admin change that was answered 2xx
//! is still there when the server restarts, and the state loads.
//!
//! Several writer threads stream changes (creating instances, setting keys,
//! removing instances) while the server is killed with SIGKILL at random
//! moments, over and over; after each restart every acknowledged change is
//! checked.

mod util;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

/// What the clients were told is durable: instance name to its expected
/// config (`None`: acknowledged as removed).
type Acked = Arc<Mutex<BTreeMap<String, Option<BTreeMap<String, String>>>>>;

/// A small pseudo-random sequence (no crate needed for test timing jitter).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

/// Streams changes to the admin socket until it goes away, recording each
/// acknowledged one. Thread `t` owns the instances `t{t}-*`.
fn client(socket: std::path::PathBuf, t: usize, round: usize, acked: Acked) {
    let mut n = 0;
    loop {
        let name = format!("t{t}-{}", n / 4);
        let key = format!("user.k{round}-{n}");
        let (method, path, body) = match n % 4 {
            0 => (
                "POST",
                "/1.0/instances".to_string(),
                json!({"name": name, "match": {"cgroup": format!("/crash/{name}")}}).to_string(),
            ),
            3 if n % 8 == 3 => ("DELETE", format!("/1.0/instances/{name}"), String::new()),
            _ => (
                "PUT",
                format!("/1.0/instances/{name}/config/{key}"),
                format!("value {n}"),
            ),
        };
        let Ok(mut stream) = std::os::unix::net::UnixStream::connect(&socket) else {
            return;
        };
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        use std::io::{Read, Write};
        if stream.write_all(request.as_bytes()).is_err() {
            return;
        }
        let mut reply = String::new();
        if stream.read_to_string(&mut reply).is_err() || !reply.starts_with("HTTP/1.1 2") {
            // Killed before the answer: this change was never promised, and
            // may or may not have happened. Only a removal makes what was
            // promised before it uncertain.
            if reply.is_empty() {
                if method == "DELETE" {
                    acked.lock().unwrap().remove(&name);
                }
                return;
            }
            panic!("unexpected answer to {method} {path}: {reply}");
        }
        let mut acked = acked.lock().unwrap();
        match method {
            "POST" => {
                acked.insert(name, Some(BTreeMap::new()));
            }
            "DELETE" => {
                acked.insert(name, None);
            }
            _ => {
                if let Some(Some(config)) = acked.get_mut(&name) {
                    config.insert(key, format!("value {n}"));
                }
            }
        }
        n += 1;
    }
}

/// Batches not answered when the server died: each must be there whole
/// or not at all after the restart.
type Unanswered = Arc<Mutex<Vec<Vec<String>>>>;

/// Registers batches of 40 instances (`b{round}-{n}-{i}`) until the admin
/// socket goes away, recording acknowledged ones in `acked` and the one in
/// flight when the server died in `unanswered`.
fn batch_client(socket: std::path::PathBuf, round: usize, acked: Acked, unanswered: Unanswered) {
    for n in 0.. {
        let names: Vec<String> = (0..40).map(|i| format!("b{round}-{n}-{i}")).collect();
        let instances: Vec<serde_json::Value> = names
            .iter()
            .map(|name| {
                json!({"name": name, "match": {"cgroup": format!("/crash/{name}")},
                               "config": {"user.batch": format!("{n}")}})
            })
            .collect();
        let body = json!({"instances": instances}).to_string();
        let Ok(mut stream) = std::os::unix::net::UnixStream::connect(&socket) else {
            return;
        };
        let request = format!(
            "POST /1.0/instances HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        use std::io::{Read, Write};
        if stream.write_all(request.as_bytes()).is_err() {
            unanswered.lock().unwrap().push(names);
            return;
        }
        let mut reply = String::new();
        if stream.read_to_string(&mut reply).is_err() || reply.is_empty() {
            unanswered.lock().unwrap().push(names);
            return;
        }
        assert!(reply.starts_with("HTTP/1.1 200"), "batch {n}: {reply}");
        let mut acked = acked.lock().unwrap();
        for name in names {
            let config = BTreeMap::from([("user.batch".to_string(), format!("{n}"))]);
            acked.insert(name, Some(config));
        }
    }
}

#[test]
fn every_acknowledged_change_survives_kill_9() {
    let acked: Acked = Arc::new(Mutex::new(BTreeMap::new()));
    let unanswered: Unanswered = Arc::new(Mutex::new(Vec::new()));
    let (mut whole, mut none) = (0, 0);
    let mut rng = Lcg(u64::from(std::process::id()));
    let mut dir = util::TempDir::new();
    let mut total = 0;
    for round in 0..12 {
        let server = util::Server::start_in(dir, &[]);
        // Everything acknowledged so far is there.
        let listed = server
            .admin_call("GET", "/1.0/instances?recursion=1", b"")
            .json();
        let listed: BTreeMap<String, serde_json::Value> = listed["metadata"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| (i["name"].as_str().unwrap().to_string(), i["config"].clone()))
            .collect();
        for (name, expected) in acked.lock().unwrap().iter() {
            match expected {
                None => assert!(
                    !listed.contains_key(name),
                    "round {round}: {name} was removed but came back"
                ),
                Some(config) => {
                    let got = listed
                        .get(name)
                        .unwrap_or_else(|| panic!("round {round}: acknowledged {name} lost"));
                    for (key, value) in config {
                        assert_eq!(got[key], json!(value), "round {round}: {name} {key}");
                    }
                }
            }
        }
        // A batch cut short by the kill is there whole or not at all.
        for batch in unanswered.lock().unwrap().drain(..) {
            let present = batch.iter().filter(|n| listed.contains_key(*n)).count();
            assert!(
                present == 0 || present == batch.len(),
                "round {round}: {present} of a batch of {} survived",
                batch.len()
            );
            if present == 0 {
                none += 1;
            } else {
                whole += 1;
            }
        }
        // Fresh instance names per round: start each thread where no name is taken.
        let mut threads: Vec<_> = (0..3)
            .map(|t| {
                let socket = server.admin_socket.clone();
                let acked = acked.clone();
                thread::spawn(move || client(socket, t * 100 + round, round, acked))
            })
            .collect();
        let (socket, batch_acked, batch_unanswered) = (
            server.admin_socket.clone(),
            acked.clone(),
            unanswered.clone(),
        );
        threads.push(thread::spawn(move || {
            batch_client(socket, round, batch_acked, batch_unanswered)
        }));
        let before = acked.lock().unwrap().len();
        thread::sleep(Duration::from_millis(50 + rng.next(400)));
        dir = server.kill9();
        let deadline = Instant::now() + util::PATIENCE;
        for t in threads {
            t.join().expect("client thread");
            assert!(Instant::now() < deadline);
        }
        total += acked.lock().unwrap().len() - before;
    }
    assert!(
        total > 20,
        "too few changes were acknowledged to prove anything: {total}"
    );
    eprintln!(
        "{total} instances created across 12 kill -9s; batches cut short: {whole} kept whole, {none} not made"
    );
}
