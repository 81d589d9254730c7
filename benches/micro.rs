//! Criterion micro-benchmarks over in-memory input: the request parser, the
//! websocket frame codec and reader, response building, and an identity
//! token's signature (what the signer thread spends per token).
//!
//!     cargo bench --bench micro

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use guestsock::http::request::{Parsed, parse};
use guestsock::http::response::Response;
use guestsock::ws::frame::{opcode, parse_header, write_frame, write_masked_frame};
use guestsock::ws::reader::Reader;

const GET: &[u8] = b"GET /1.0/config/user.foo HTTP/1.1\r\nHost: lxd\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n";

fn parser(c: &mut Criterion) {
    let mut group = c.benchmark_group("request");
    group.throughput(Throughput::Bytes(GET.len() as u64));
    group.bench_function("parse GET", |b| {
        b.iter(|| match parse(black_box(GET), 0, 16 * 1024) {
            Ok(Parsed::Complete(req)) => black_box(req.len),
            _ => unreachable!(),
        })
    });
    let upgrade = b"GET /1.0/events?type=config HTTP/1.1\r\nHost: lxd\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    group.bench_function("parse websocket upgrade", |b| {
        b.iter(|| parse(black_box(upgrade), 0, 16 * 1024).is_ok())
    });
    group.bench_function("parse partial (half a head)", |b| {
        b.iter(|| parse(black_box(&GET[..GET.len() / 2]), 0, 16 * 1024).is_ok())
    });
    group.finish();
}

fn frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("websocket");
    let event = br#"{"type":"config","timestamp":"2026-11-22T10:00:00.123456789Z","metadata":{"key":"user.foo","old_value":"bar","value":"baz"}}"#;
    group.throughput(Throughput::Bytes(event.len() as u64));
    group.bench_function("write event frame", |b| {
        let mut out = Vec::with_capacity(256);
        b.iter(|| {
            out.clear();
            write_frame(&mut out, opcode::TEXT, black_box(event));
            black_box(out.len())
        })
    });
    group.bench_function("parse frame header", |b| {
        let mut out = Vec::new();
        write_frame(&mut out, opcode::TEXT, event);
        b.iter(|| parse_header(black_box(&out)).is_ok())
    });
    // A masked 4 KiB text message streamed through the reader.
    let payload = "é".repeat(2048).into_bytes();
    let mut frame = Vec::new();
    write_masked_frame(&mut frame, 0x81, [1, 2, 3, 4], &payload);
    group.throughput(Throughput::Bytes(frame.len() as u64));
    group.bench_function("read 4 KiB masked text message", |b| {
        b.iter(|| {
            let mut reader = Reader::new(64 * 1024);
            let mut buf = frame.clone();
            let mut at = 0;
            while at < buf.len() {
                let (used, _) = reader.feed(&mut buf[at..]);
                at += used;
            }
        })
    });
    group.finish();
}

fn responses(c: &mut Criterion) {
    let mut group = c.benchmark_group("response");
    group.bench_function("raw value with ETag", |b| {
        let mut out = Vec::with_capacity(256);
        b.iter(|| {
            out.clear();
            Response::raw(black_box(b"bar").to_vec())
                .with_etag()
                .write_to(&mut out, false, true, false);
            black_box(out.len())
        })
    });
    group.bench_function("JSON list", |b| {
        let keys = [
            "/1.0/config/cloud-init.user-data",
            "/1.0/config/user.foo",
            "/1.0/config/user.meta-data",
        ];
        let mut out = Vec::with_capacity(256);
        b.iter(|| {
            out.clear();
            Response::json(black_box(&keys)).write_to(&mut out, false, true, false);
            black_box(out.len())
        })
    });
    group.finish();
}

fn tokens(c: &mut Criterion) {
    use guestsock::api::identity::{Mint, token_query};
    use guestsock::issuer::{Issuer, unix_now};
    let mut group = c.benchmark_group("identity");
    let mut issuer = Issuer::ephemeral("bench");
    let mint = Mint {
        audience: "https://vault.example.com".into(),
        ttl: 600,
        instance: "c1".into(),
        kind: "container",
        location: "bench".into(),
        uid: 1_000_000,
        started: std::time::Instant::now(),
    };
    let rng = ring::rand::SystemRandom::new();
    group.bench_function("sign a token (ES256, jti included)", |b| {
        b.iter(|| {
            let (key, iat, exp) = issuer.mint(unix_now(), 600).expect("a key");
            let claims = mint.claims(issuer.config(), iat, exp);
            black_box(guestsock::signer::sign(&rng, &key, claims).expect("signed"))
        })
    });
    group.bench_function("parse a token query", |b| {
        b.iter(|| {
            token_query(black_box(
                "audience=https%3A%2F%2Fvault.example.com&ttl=600",
            ))
        })
    });
    group.finish();
}

criterion_group!(benches, parser, frames, responses, tokens);
criterion_main!(benches);
