//! Load generator and baselines for the rin-ship forward intake (`harness = false`).
//!
//! ```text
//! cargo bench --bench forward_load -- gen --records 1000000 --out bench-data/stream.fwd
//! cargo bench --bench forward_load -- replay --addr 127.0.0.1:24299 --file bench-data/stream.fwd
//! cargo bench --bench forward_load -- compress --level 6 --file all.ndjson
//! cargo bench --bench forward_load --features isal -- compress --codec isal --level 1 --file all.ndjson
//! cargo bench --bench forward_load -- verify --meta bench-data/stream.fwd.meta --file all.ndjson
//! ```
//!
//! * `gen` writes a deterministic stream of PackedForward frames
//!   `[tag, bin(EventTime ext + record map, ...), {"chunk": <base64 id>, "size": n}]`, simply
//!   concatenated (the replayer re-scans them), plus `<out>.meta` (JSON) describing it.
//! * `replay` sends the frames over N connections with at most `window` un-acked frames per
//!   connection, checks every `{"ack": chunk}` and fails (exit 1) on a missing or wrong ack.
//! * `compress` is the "chosen compressor alone" baseline: flate2 (zlib-rs backend, the same
//!   crate build as the server) single-threaded `GzEncoder` over a file, CPU time by getrusage;
//!   `--codec zstd` libzstd, `--codec isal` ISA-L's stateful deflate (needs `--features isal`).
//! * `verify` checks the NDJSON the server produced: line count, every line a JSON object,
//!   unique `request_id`s whose order-independent digest matches the one `gen` recorded.
//!
//! Everything prints `key: value` lines so `benches/run.sh` can pick figures out with awk.
//! Lines are reported on stdout; progress and errors on stderr.

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use clap::{Parser, Subcommand};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "forward_load",
    about = "rin-ship forward load generator and baselines"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Pre-generate a deterministic PackedForward stream.
    Gen {
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
        #[arg(long, default_value = "bench-data/stream.fwd")]
        out: PathBuf,
        #[arg(long, default_value_t = 1000)]
        per_frame: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Send a generated stream to a forward server and check the acks.
    Replay {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value = "bench-data/stream.fwd")]
        file: PathBuf,
        #[arg(long, default_value_t = 2)]
        connections: usize,
        /// Un-acked frames in flight per connection.
        #[arg(long, default_value_t = 4)]
        window: usize,
        /// Fail when no ack arrives on a connection for this many seconds.
        #[arg(long, default_value_t = 120)]
        ack_timeout: u64,
    },
    /// Convert a generated forward stream into NDJSON request bodies for the HTTP intake:
    /// one body per frame (same tag, same records), each line with the event time field.
    GenHttp {
        /// The `.fwd` stream written by `gen` (its `.meta` still applies to `verify`).
        #[arg(long, default_value = "bench-data/stream.fwd")]
        stream: PathBuf,
        #[arg(long, default_value = "bench-data/stream-http.ndjson-batches")]
        out: PathBuf,
        /// Record field that carries the event time (the server's `http.time_key`).
        #[arg(long, default_value = "time")]
        time_key: String,
        /// `rfc3339` (a string, nanoseconds, `Z`) or `epoch` (a number, 9 decimals).
        #[arg(long, default_value = "rfc3339")]
        time_format: TimeFormat,
    },
    /// POST NDJSON bodies to the HTTP intake over keep-alive HTTP/1.1 connections.
    ReplayHttp {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value = "bench-data/stream-http.ndjson-batches")]
        file: PathBuf,
        /// Connections, each with one request in flight.
        #[arg(long, default_value_t = 2)]
        connections: usize,
        /// Fail when a response takes longer than this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// Give up on a request after this many 503 answers.
        #[arg(long, default_value_t = 100)]
        max_retries: u32,
    },
    /// Baseline: the chunk compressor alone, one thread: flate2 (zlib-rs) gzip, libzstd
    /// with the server's frame settings (window log 20, no checksum), or ISA-L gzip (levels
    /// 0..=3; a build with `--features isal`).
    Compress {
        #[arg(long, default_value = "gzip", value_parser = ["gzip", "zstd", "isal"])]
        codec: String,
        #[arg(long, default_value_t = 6)]
        level: u32,
        #[arg(long)]
        file: PathBuf,
        /// Write the gzip output here (default: discard).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check the NDJSON the server wrote against the generator's metadata.
    Verify {
        #[arg(long, default_value = "bench-data/stream.fwd.meta")]
        meta: PathBuf,
        /// NDJSON file (all objects decompressed and concatenated).
        #[arg(long)]
        file: PathBuf,
    },
}

fn main() {
    // `cargo bench` appends `--bench` after the user's arguments; it means nothing here.
    let args: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    let cli = Cli::parse_from(args);
    let result = match cli.cmd {
        Cmd::Gen {
            records,
            out,
            per_frame,
            seed,
        } => gen_stream(records, &out, per_frame, seed),
        Cmd::Replay {
            addr,
            file,
            connections,
            window,
            ack_timeout,
        } => replay(
            addr,
            &file,
            connections,
            window,
            Duration::from_secs(ack_timeout),
        ),
        Cmd::GenHttp {
            stream,
            out,
            time_key,
            time_format,
        } => gen_http(&stream, &out, &time_key, time_format),
        Cmd::ReplayHttp {
            addr,
            file,
            connections,
            timeout,
            max_retries,
        } => replay_http(
            addr,
            &file,
            connections,
            Duration::from_secs(timeout),
            max_retries,
        ),
        Cmd::Compress {
            codec,
            level,
            file,
            out,
        } => compress(&codec, level, &file, out.as_deref()),
        Cmd::Verify { meta, file } => verify(&meta, &file),
    };
    if let Err(err) = result {
        eprintln!("forward_load: error: {err:#}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------------
// Deterministic randomness (SplitMix64: stable across crate versions, unlike StdRng).

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        ((self.next() >> 32) * n) >> 32
    }
    /// Skewed towards small values (a few hot clients / paths, a long tail).
    fn skewed(&mut self, n: u64) -> u64 {
        let a = self.below(n);
        let b = self.below(n);
        let c = self.below(n);
        a.min(b).min(c)
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

// ---------------------------------------------------------------------------------------------
// Record generation.

const USER_AGENTS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "curl/8.5.0",
    "okhttp/4.12.0",
    "Go-http-client/1.1",
    "python-requests/2.31.0",
    "kube-probe/1.29",
];
const REFERERS: &[&str] = &[
    "-",
    "-",
    "https://shop.example.com/",
    "https://shop.example.com/cart",
    "https://www.google.com/",
    "https://shop.example.com/search?q=boots",
];
const WEB_PATHS: &[&str] = &[
    "/",
    "/products/{id}",
    "/products/{id}/reviews",
    "/category/{cat}",
    "/cart",
    "/checkout",
    "/static/js/app.{hex}.js",
    "/static/css/main.{hex}.css",
    "/images/p/{id}.webp",
    "/search",
    "/account/orders/{id}",
    "/healthz",
];
const API_PATHS: &[&str] = &[
    "/api/v2/users/{id}",
    "/api/v2/users/{id}/orders",
    "/api/v2/orders/{id}",
    "/api/v2/cart/{id}/items",
    "/api/v2/inventory/{sku}",
    "/api/v2/payments/{id}/capture",
    "/api/v1/session",
    "/api/v2/search",
];
const CATEGORIES: &[&str] = &[
    "shoes", "boots", "jackets", "hats", "bags", "socks", "outlet",
];
const LOGGERS: &[&str] = &[
    "billing.invoice",
    "billing.payment",
    "mail.sender",
    "inventory.sync",
    "search.indexer",
    "auth.session",
    "orders.fulfilment",
];
const MESSAGES: &[&str] = &[
    "invoice {id} sent to customer {cust}",
    "payment {id} captured for customer {cust}",
    "retrying delivery of message {id} (attempt {n})",
    "synced {n} items from warehouse {cust}",
    "indexed batch {id} with {n} documents",
    "session refreshed for user {cust}",
    "order {id} handed to carrier after {n} checks",
];

fn fill(template: &str, rng: &mut Rng, out: &mut String) {
    use std::fmt::Write as _;
    let mut rest = template;
    while let Some(pos) = rest.find('{') {
        out.push_str(&rest[..pos]);
        let end = rest[pos..].find('}').unwrap() + pos;
        match &rest[pos + 1..end] {
            "id" => write!(out, "{}", 10_000 + rng.skewed(900_000)).unwrap(),
            "cust" => write!(out, "{}", 1 + rng.skewed(50_000)).unwrap(),
            "n" => write!(out, "{}", 1 + rng.below(9)).unwrap(),
            "cat" => out.push_str(rng.pick(CATEGORIES)),
            "sku" => write!(out, "SKU-{:06}", rng.skewed(200_000)).unwrap(),
            "hex" => write!(out, "{:08x}", rng.below(16) * 0x1111_1111).unwrap(),
            other => panic!("unknown placeholder {other}"),
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Web,
    Api,
    Worker,
}

const TAGS: [(&str, Kind); 3] = [
    ("app.web.access", Kind::Web),
    ("app.api.access", Kind::Api),
    ("app.worker.log", Kind::Worker),
];

enum Val {
    S(String),
    I(i64),
    F(f64),
}

/// One record as ordered key/value pairs: encoded to msgpack, and sized as JSON.
fn make_record(kind: Kind, rng: &mut Rng) -> Vec<(&'static str, Val)> {
    use Val::*;
    let request_id = format!("{:016x}{:016x}", rng.next(), rng.next());
    let client = rng.skewed(4000);
    let remote_addr = format!(
        "10.{}.{}.{}",
        16 + client / 250 % 16,
        client % 250,
        1 + (client * 7) % 250
    );
    match kind {
        Kind::Web | Kind::Api => {
            let mut path = String::with_capacity(48);
            let paths = if kind == Kind::Web {
                WEB_PATHS
            } else {
                API_PATHS
            };
            let template = paths[rng.skewed(paths.len() as u64) as usize];
            fill(template, rng, &mut path);
            if rng.below(4) == 0 {
                use std::fmt::Write as _;
                write!(
                    path,
                    "?page={}&limit={}",
                    1 + rng.skewed(20),
                    [10, 20, 50][rng.below(3) as usize]
                )
                .unwrap();
            }
            let method = if kind == Kind::Api {
                ["GET", "GET", "GET", "POST", "PUT", "DELETE"][rng.below(6) as usize]
            } else {
                ["GET", "GET", "GET", "GET", "POST"][rng.below(5) as usize]
            };
            let r = rng.below(1000);
            let status = match r {
                0..=879 => 200,
                880..=919 => 304,
                920..=944 => 302,
                945..=979 => 404,
                980..=994 => 401,
                _ => 500 + (r % 4) as i64,
            };
            let bytes = if status == 304 {
                0
            } else {
                200 + rng.skewed(60_000) as i64
            };
            let latency_ms = 1 + rng.skewed(800);
            let mut rec = vec![
                ("remote_addr", S(remote_addr)),
                (
                    "host",
                    S(format!(
                        "{}-{}",
                        if kind == Kind::Web { "web" } else { "api" },
                        1 + rng.below(6)
                    )),
                ),
                ("method", S(method.into())),
                ("path", S(path)),
                (
                    "protocol",
                    S(if rng.below(3) == 0 {
                        "HTTP/2.0"
                    } else {
                        "HTTP/1.1"
                    }
                    .into()),
                ),
                ("status", I(status)),
                ("bytes", I(bytes)),
                ("referer", S(rng.pick(REFERERS).into())),
                ("user_agent", S(rng.pick(USER_AGENTS).into())),
                ("request_id", S(request_id)),
                ("latency", F(latency_ms as f64 / 1000.0)),
            ];
            if kind == Kind::Api {
                rec.push(("upstream", S(format!("10.0.3.{}:8080", 10 + rng.below(8)))));
            }
            rec
        }
        Kind::Worker => {
            let r = rng.below(100);
            let level = match r {
                0..=79 => "info",
                80..=91 => "debug",
                92..=97 => "warn",
                _ => "error",
            };
            let mut msg = String::with_capacity(64);
            fill(rng.pick(MESSAGES), rng, &mut msg);
            vec![
                ("level", S(level.into())),
                ("logger", S(rng.pick(LOGGERS).into())),
                ("msg", S(msg)),
                ("host", S(format!("worker-{}", 1 + rng.below(4)))),
                ("pid", I(4000 + rng.below(8) as i64)),
                ("thread", S(format!("pool-1-thread-{}", 1 + rng.below(16)))),
                ("request_id", S(request_id)),
                ("user_id", I(1 + rng.skewed(50_000) as i64)),
                ("duration_ms", F((1 + rng.skewed(20_000)) as f64 / 10.0)),
                ("remote_addr", S(remote_addr)),
            ]
        }
    }
}

fn encode_record(rec: &[(&str, Val)], out: &mut Vec<u8>) {
    rmp::encode::write_map_len(out, rec.len() as u32).unwrap();
    for (k, v) in rec {
        rmp::encode::write_str(out, k).unwrap();
        match v {
            Val::S(s) => rmp::encode::write_str(out, s).unwrap(),
            Val::I(i) => {
                rmp::encode::write_sint(out, *i).unwrap();
            }
            Val::F(f) => rmp::encode::write_f64(out, *f).unwrap(),
        }
    }
}

fn json_len(rec: &[(&str, Val)]) -> usize {
    let mut map = serde_json::Map::new();
    for (k, v) in rec {
        let v = match v {
            Val::S(s) => serde_json::Value::from(s.as_str()),
            Val::I(i) => serde_json::Value::from(*i),
            Val::F(f) => serde_json::Value::from(*f),
        };
        map.insert((*k).to_string(), v);
    }
    serde_json::to_vec(&serde_json::Value::Object(map))
        .unwrap()
        .len()
}

fn gen_stream(records: u64, out: &Path, per_frame: u64, seed: u64) -> Result<()> {
    if per_frame == 0 {
        bail!("--per-frame must be at least 1");
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = out.with_extension("fwd.tmp");
    let mut w = BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
    );
    let mut rng = Rng(seed ^ 0x5EED_0FF0_4A4D);
    let base_secs: u64 = 1_714_560_000; // 2024-05-01T10:40:00Z
    let mut entries = Vec::with_capacity(512 * per_frame as usize);
    let mut frame = Vec::with_capacity(512 * per_frame as usize + 128);
    let (mut written, mut frames, mut total_bytes, mut entry_bytes, mut json_bytes) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut id_digest: u64 = 0;
    let mut per_tag: HashMap<&str, u64> = HashMap::new();
    while written < records {
        let n = per_frame.min(records - written);
        let t = rng.below(100);
        let (tag, kind) = TAGS[if t < 50 {
            0
        } else if t < 85 {
            1
        } else {
            2
        }];
        entries.clear();
        for _ in 0..n {
            // ~5000 events/s, so a 1M-event stream spans ~200 s of event time.
            let i = written;
            let secs = base_secs + i / 5000;
            let nanos = ((i % 5000) * 200_000 + rng.below(200_000)) as u32;
            // EventTime: fixext8, type 0, seconds u32 BE + nanoseconds u32 BE.
            entries.extend_from_slice(&[0x92, 0xd7, 0x00]);
            entries.extend_from_slice(&(secs as u32).to_be_bytes());
            entries.extend_from_slice(&nanos.to_be_bytes());
            let rec = make_record(kind, &mut rng);
            if let Some((_, Val::S(id))) = rec.iter().find(|(k, _)| *k == "request_id") {
                id_digest = id_digest.wrapping_add(fnv1a(id.as_bytes()));
            }
            encode_record(&rec, &mut entries);
            json_bytes += json_len(&rec) as u64;
            written += 1;
        }
        *per_tag.entry(tag).or_default() += n;
        // Chunk id: 16 deterministic bytes, base64 (as fluentd/fluent-bit send it).
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&rng.next().to_be_bytes());
        id[8..].copy_from_slice(&frames.to_be_bytes());
        let chunk = base64::engine::general_purpose::STANDARD.encode(id);
        frame.clear();
        rmp::encode::write_array_len(&mut frame, 3).unwrap();
        rmp::encode::write_str(&mut frame, tag).unwrap();
        rmp::encode::write_bin_len(&mut frame, entries.len() as u32).unwrap();
        frame.extend_from_slice(&entries);
        rmp::encode::write_map_len(&mut frame, 2).unwrap();
        rmp::encode::write_str(&mut frame, "chunk").unwrap();
        rmp::encode::write_str(&mut frame, &chunk).unwrap();
        rmp::encode::write_str(&mut frame, "size").unwrap();
        rmp::encode::write_uint(&mut frame, n).unwrap();
        w.write_all(&frame)?;
        frames += 1;
        total_bytes += frame.len() as u64;
        entry_bytes += entries.len() as u64;
    }
    w.flush()?;
    drop(w);
    std::fs::rename(&tmp, out)?;
    let meta = serde_json::json!({
        "records": records,
        "frames": frames,
        "per_frame": per_frame,
        "seed": seed,
        "stream_bytes": total_bytes,
        "entry_bytes": entry_bytes,
        "record_json_bytes": json_bytes,
        "request_id_digest": format!("{id_digest:016x}"),
    });
    let meta_path = meta_path_for(out);
    std::fs::write(&meta_path, serde_json::to_vec_pretty(&meta)?)?;
    println!("gen.file: {}", out.display());
    println!("gen.meta: {}", meta_path.display());
    println!("gen.records: {records}");
    println!("gen.frames: {frames}");
    println!("gen.msgpack_bytes: {total_bytes}");
    println!(
        "gen.avg_entry_msgpack_bytes: {:.1}",
        entry_bytes as f64 / records.max(1) as f64
    );
    println!(
        "gen.avg_record_json_bytes: {:.1}",
        json_bytes as f64 / records.max(1) as f64
    );
    let mut tags: Vec<_> = per_tag.into_iter().collect();
    tags.sort();
    for (tag, n) in tags {
        println!("gen.tag.{tag}: {n}");
    }
    Ok(())
}

fn meta_path_for(stream: &Path) -> PathBuf {
    let mut s = stream.as_os_str().to_owned();
    s.push(".meta");
    PathBuf::from(s)
}

// ---------------------------------------------------------------------------------------------
// Minimal msgpack scanning (enough to split frames and read ack maps).

/// End offset of the msgpack value starting at `pos`, `Ok(None)` if `buf` ends inside it.
fn skip_value(buf: &[u8], pos: usize) -> Result<Option<usize>> {
    let mut pos = pos;
    let mut pending: u64 = 1; // values still to skip
    while pending > 0 {
        let Some(&b) = buf.get(pos) else {
            return Ok(None);
        };
        pending -= 1;
        let be = |at: usize, n: usize| -> Option<u64> {
            buf.get(at..at + n)
                .map(|s| s.iter().fold(0u64, |acc, &x| (acc << 8) | x as u64))
        };
        let (header, body, children): (usize, u64, u64) = match b {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (1, 0, 0),
            0x80..=0x8f => (1, 0, 2 * (b & 0x0f) as u64),
            0x90..=0x9f => (1, 0, (b & 0x0f) as u64),
            0xa0..=0xbf => (1, (b & 0x1f) as u64, 0),
            0xc4 | 0xd9 => match be(pos + 1, 1) {
                Some(n) => (2, n, 0),
                None => return Ok(None),
            },
            0xc5 | 0xda => match be(pos + 1, 2) {
                Some(n) => (3, n, 0),
                None => return Ok(None),
            },
            0xc6 | 0xdb => match be(pos + 1, 4) {
                Some(n) => (5, n, 0),
                None => return Ok(None),
            },
            0xc7 => match be(pos + 1, 1) {
                Some(n) => (3, n, 0),
                None => return Ok(None),
            },
            0xc8 => match be(pos + 1, 2) {
                Some(n) => (4, n, 0),
                None => return Ok(None),
            },
            0xc9 => match be(pos + 1, 4) {
                Some(n) => (6, n, 0),
                None => return Ok(None),
            },
            0xca => (5, 0, 0),
            0xcb => (9, 0, 0),
            0xcc | 0xd0 => (2, 0, 0),
            0xcd | 0xd1 => (3, 0, 0),
            0xce | 0xd2 => (5, 0, 0),
            0xcf | 0xd3 => (9, 0, 0),
            0xd4 => (3, 0, 0),
            0xd5 => (4, 0, 0),
            0xd6 => (6, 0, 0),
            0xd7 => (10, 0, 0),
            0xd8 => (18, 0, 0),
            0xdc => match be(pos + 1, 2) {
                Some(n) => (3, 0, n),
                None => return Ok(None),
            },
            0xdd => match be(pos + 1, 4) {
                Some(n) => (5, 0, n),
                None => return Ok(None),
            },
            0xde => match be(pos + 1, 2) {
                Some(n) => (3, 0, 2 * n),
                None => return Ok(None),
            },
            0xdf => match be(pos + 1, 4) {
                Some(n) => (5, 0, 2 * n),
                None => return Ok(None),
            },
            0xc1 => bail!("invalid msgpack byte 0xc1 at offset {pos}"),
        };
        pos += header + body as usize;
        pending += children;
        if pos > buf.len() {
            return Ok(None);
        }
    }
    Ok(Some(pos))
}

/// Reads a str/bin header at `pos`: (payload start, payload len).
fn str_or_bin_at(buf: &[u8], pos: usize) -> Result<(usize, usize)> {
    let b = *buf.get(pos).ok_or_else(|| anyhow!("truncated"))?;
    let be = |n: usize| -> Result<usize> {
        let s = buf
            .get(pos + 1..pos + 1 + n)
            .ok_or_else(|| anyhow!("truncated"))?;
        Ok(s.iter().fold(0usize, |acc, &x| (acc << 8) | x as usize))
    };
    Ok(match b {
        0xa0..=0xbf => (pos + 1, (b & 0x1f) as usize),
        0xc4 | 0xd9 => (pos + 2, be(1)?),
        0xc5 | 0xda => (pos + 3, be(2)?),
        0xc6 | 0xdb => (pos + 5, be(4)?),
        _ => bail!("expected str or bin at offset {pos}, found 0x{b:02x}"),
    })
}

/// Map header at `pos`: (first key offset, number of pairs).
fn map_at(buf: &[u8], pos: usize) -> Result<(usize, usize)> {
    let b = *buf.get(pos).ok_or_else(|| anyhow!("truncated"))?;
    Ok(match b {
        0x80..=0x8f => (pos + 1, (b & 0x0f) as usize),
        0xde => (
            pos + 3,
            u16::from_be_bytes([buf[pos + 1], buf[pos + 2]]) as usize,
        ),
        0xdf => (
            pos + 5,
            u32::from_be_bytes(buf[pos + 1..pos + 5].try_into()?) as usize,
        ),
        _ => bail!("expected a map at offset {pos}, found 0x{b:02x}"),
    })
}

/// Looks up a str/bin value by key in the map at `pos`.
fn map_get<'a>(buf: &'a [u8], pos: usize, key: &str) -> Result<Option<&'a [u8]>> {
    Ok(map_get_typed(buf, pos, key)?.map(|(_, v)| v))
}

/// Like `map_get`, also telling whether the value was a msgpack str (true) or bin (false).
fn map_get_typed<'a>(buf: &'a [u8], pos: usize, key: &str) -> Result<Option<(bool, &'a [u8])>> {
    let (mut p, pairs) = map_at(buf, pos)?;
    for _ in 0..pairs {
        let kend = skip_value(buf, p)?.ok_or_else(|| anyhow!("truncated map"))?;
        let is_key =
            matches!(str_or_bin_at(buf, p), Ok((s, n)) if &buf[s..s + n] == key.as_bytes());
        let vend = skip_value(buf, kend)?.ok_or_else(|| anyhow!("truncated map"))?;
        if is_key {
            let (s, n) = str_or_bin_at(buf, kend)?;
            let is_str = matches!(buf[kend], 0xa0..=0xbf | 0xd9..=0xdb);
            return Ok(Some((is_str, &buf[s..s + n])));
        }
        p = vend;
    }
    Ok(None)
}

struct Frame {
    start: usize,
    end: usize,
    chunk: Vec<u8>,
    events: u64,
}

fn scan_frames(buf: &[u8]) -> Result<Vec<Frame>> {
    let mut frames = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let end =
            skip_value(buf, pos)?.ok_or_else(|| anyhow!("stream truncated at offset {pos}"))?;
        if buf[pos] != 0x93 {
            bail!("frame at offset {pos} is not a 3-element array");
        }
        let tag_end = skip_value(buf, pos + 1)?.unwrap();
        let entries_end = skip_value(buf, tag_end)?.unwrap();
        let chunk = map_get(buf, entries_end, "chunk")?
            .ok_or_else(|| anyhow!("frame at offset {pos} has no chunk option"))?
            .to_vec();
        let (m, pairs) = map_at(buf, entries_end)?;
        let mut events = 0;
        let mut p = m;
        for _ in 0..pairs {
            let kend = skip_value(buf, p)?.unwrap();
            let vend = skip_value(buf, kend)?.unwrap();
            if matches!(str_or_bin_at(buf, p), Ok((s, n)) if &buf[s..s + n] == b"size") {
                let mut rd = &buf[kend..vend];
                events = rmp::decode::read_int(&mut rd).map_err(|e| anyhow!("bad size: {e:?}"))?;
            }
            p = vend;
        }
        frames.push(Frame {
            start: pos,
            end,
            chunk,
            events,
        });
        pos = end;
    }
    Ok(frames)
}

// ---------------------------------------------------------------------------------------------
// Replay.

#[derive(Default)]
struct Inflight {
    sent_at: HashMap<Vec<u8>, Instant>,
    acked: u64,
    error: Option<String>,
}

struct ConnResult {
    frames: u64,
    events: u64,
    bytes: u64,
    latencies_ms: Vec<f64>,
    finished: Instant,
}

fn cpu_seconds(who: libc::c_int) -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn replay(
    addr: SocketAddr,
    file: &Path,
    connections: usize,
    window: usize,
    ack_timeout: Duration,
) -> Result<()> {
    if connections == 0 || window == 0 {
        bail!("--connections and --window must be at least 1");
    }
    let data = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let frames = scan_frames(&data)?;
    if frames.is_empty() {
        bail!("{} holds no frames", file.display());
    }
    let total_events: u64 = frames.iter().map(|f| f.events).sum();
    let data = Arc::new(data);
    let frames = Arc::new(frames);
    let connections = connections.min(frames.len());
    eprintln!(
        "replay: {} frames, {} events, {} bytes over {} connection(s), window {}",
        frames.len(),
        total_events,
        data.len(),
        connections,
        window
    );

    let cpu0 = cpu_seconds(libc::RUSAGE_SELF);
    let start = Instant::now();
    let mut handles = Vec::new();
    for c in 0..connections {
        let (data, frames) = (data.clone(), frames.clone());
        handles.push(std::thread::spawn(move || -> Result<ConnResult> {
            let mine: Vec<usize> = (c..frames.len()).step_by(connections).collect();
            run_connection(c, addr, &data, &frames, &mine, window, ack_timeout)
        }));
    }
    let mut errors = Vec::new();
    let mut results = Vec::new();
    for (c, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(r)) => results.push(r),
            Ok(Err(e)) => errors.push(format!("connection {c}: {e:#}")),
            Err(_) => errors.push(format!("connection {c}: thread panicked")),
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds(libc::RUSAGE_SELF) - cpu0;
    let frames_acked: u64 = results.iter().map(|r| r.frames).sum();
    let events: u64 = results.iter().map(|r| r.events).sum();
    let bytes: u64 = results.iter().map(|r| r.bytes).sum();
    let mut lat: Vec<f64> = results
        .iter()
        .flat_map(|r| r.latencies_ms.iter().copied())
        .collect();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let q = |p: f64| {
        if lat.is_empty() {
            f64::NAN
        } else {
            lat[((lat.len() - 1) as f64 * p).round() as usize]
        }
    };
    let spread = if results.len() > 1 {
        let first = results.iter().map(|r| r.finished).min().unwrap();
        let last = results.iter().map(|r| r.finished).max().unwrap();
        last.duration_since(first).as_secs_f64()
    } else {
        0.0
    };
    println!("replay.connections: {connections}");
    println!("replay.window: {window}");
    println!("replay.frames_sent_total: {}", frames.len());
    println!("replay.frames_acked: {frames_acked}");
    println!("replay.events_acked: {events}");
    println!("replay.wall_s: {wall:.3}");
    println!("replay.events_per_s: {:.0}", events as f64 / wall);
    println!("replay.msgpack_mb_per_s: {:.1}", bytes as f64 / wall / 1e6);
    println!("replay.ack_latency_ms_p50: {:.1}", q(0.5));
    println!("replay.ack_latency_ms_p99: {:.1}", q(0.99));
    println!("replay.ack_latency_ms_max: {:.1}", q(1.0));
    println!("replay.connection_finish_spread_s: {spread:.3}");
    println!("replay.client_cpu_s: {cpu:.3}");
    if !errors.is_empty() || frames_acked != frames.len() as u64 {
        for e in &errors {
            eprintln!("replay: {e}");
        }
        bail!("{} of {} frames acked", frames_acked, frames.len());
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn run_connection(
    c: usize,
    addr: SocketAddr,
    data: &[u8],
    frames: &[Frame],
    mine: &[usize],
    window: usize,
    ack_timeout: Duration,
) -> Result<ConnResult> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let mut reader = stream.try_clone()?;
    reader.set_read_timeout(Some(ack_timeout))?;
    stream.set_write_timeout(Some(ack_timeout))?;
    let total = mine.len() as u64;
    let state = Arc::new((Mutex::new(Inflight::default()), Condvar::new()));

    // Reader: parse ack maps, match them against in-flight chunk ids.
    let rstate = state.clone();
    let reader_thread = std::thread::spawn(move || -> Vec<f64> {
        let (lock, cv) = &*rstate;
        let fail = |msg: String| {
            let mut st = lock.lock().unwrap();
            st.error.get_or_insert(msg);
            cv.notify_all();
        };
        let mut latencies = Vec::with_capacity(total as usize);
        let mut buf: Vec<u8> = Vec::with_capacity(4096);
        let mut tmp = [0u8; 4096];
        let mut acked = 0u64;
        let mut non_str_acks = 0u64;
        while acked < total {
            let n = match reader.read(&mut tmp) {
                Ok(0) => {
                    fail(format!(
                        "server closed the connection after {acked} of {total} acks"
                    ));
                    return latencies;
                }
                Ok(n) => n,
                Err(e) => {
                    fail(format!(
                        "no ack for {ack_timeout:?} after {acked} of {total} acks ({e})"
                    ));
                    return latencies;
                }
            };
            buf.extend_from_slice(&tmp[..n]);
            let mut pos = 0;
            loop {
                let end = match skip_value(&buf, pos) {
                    Ok(Some(end)) => end,
                    Ok(None) => break,
                    Err(e) => {
                        fail(format!("bad msgpack from server: {e}"));
                        return latencies;
                    }
                };
                let ack = match map_get_typed(&buf, pos, "ack") {
                    Ok(Some((is_str, a))) => {
                        if !is_str {
                            non_str_acks += 1;
                        }
                        a.to_vec()
                    }
                    Ok(None) => {
                        fail(format!(
                            "server sent a map without `ack`: {:02x?}",
                            &buf[pos..end]
                        ));
                        return latencies;
                    }
                    Err(e) => {
                        fail(format!(
                            "server sent something other than an ack map ({e}): {:02x?}",
                            &buf[pos..end.min(pos + 64)]
                        ));
                        return latencies;
                    }
                };
                let mut st = lock.lock().unwrap();
                match st.sent_at.remove(&ack) {
                    Some(t) => {
                        latencies.push(t.elapsed().as_secs_f64() * 1e3);
                        st.acked += 1;
                        acked += 1;
                        cv.notify_all();
                    }
                    None => {
                        let msg = format!(
                            "ack for unknown or already-acked chunk {:?}",
                            String::from_utf8_lossy(&ack)
                        );
                        st.error.get_or_insert(msg);
                        cv.notify_all();
                        return latencies;
                    }
                }
                drop(st);
                pos = end;
            }
            buf.drain(..pos);
        }
        if non_str_acks > 0 {
            eprintln!(
                "replay: warning: {non_str_acks} acks carried the chunk id as msgpack bin, the protocol wants str"
            );
        }
        latencies
    });

    let (lock, cv) = &*state;
    let mut bytes = 0u64;
    let mut events = 0u64;
    for &i in mine {
        let f = &frames[i];
        {
            let mut st = lock.lock().unwrap();
            while st.sent_at.len() >= window && st.error.is_none() {
                st = cv.wait(st).unwrap();
            }
            if let Some(e) = &st.error {
                bail!("{e}");
            }
            if st.sent_at.insert(f.chunk.clone(), Instant::now()).is_some() {
                bail!(
                    "chunk id {:?} used twice in the stream",
                    String::from_utf8_lossy(&f.chunk)
                );
            }
        }
        if let Err(e) = stream.write_all(&data[f.start..f.end]) {
            let st = lock.lock().unwrap();
            if let Some(err) = &st.error {
                bail!("{err}");
            }
            bail!("send failed on connection {c}: {e}");
        }
        bytes += (f.end - f.start) as u64;
        events += f.events;
    }
    let latencies = reader_thread
        .join()
        .map_err(|_| anyhow!("reader panicked"))?;
    let finished = Instant::now();
    let st = lock.lock().unwrap();
    if let Some(e) = &st.error {
        bail!("{e}");
    }
    if st.acked != total {
        bail!("{} of {total} frames acked", st.acked);
    }
    drop(st);
    let _ = stream.shutdown(std::net::Shutdown::Both);
    Ok(ConnResult {
        frames: total,
        events,
        bytes,
        latencies_ms: latencies,
        finished,
    })
}

// ---------------------------------------------------------------------------------------------
// HTTP NDJSON mode: the same records as NDJSON request bodies, POSTed to the HTTP intake.
//
// The batches file is a sequence of `<tag> <events> <body bytes>\n` header lines, each followed
// by exactly that many bytes of NDJSON body (one JSON object per line, `\n`-terminated).

#[derive(Clone, Copy, clap::ValueEnum)]
enum TimeFormat {
    Rfc3339,
    Epoch,
}

/// Writes a scalar msgpack value as JSON (the generator only produces str, int and float).
fn write_json_value(out: &mut Vec<u8>, v: &rmpv::Value) -> Result<()> {
    use rmpv::Value as V;
    match v {
        V::String(s) => {
            let s = s
                .as_str()
                .ok_or_else(|| anyhow!("record string is not UTF-8"))?;
            serde_json::to_writer(&mut *out, s)?;
        }
        V::Integer(i) => {
            if let Some(n) = i.as_i64() {
                serde_json::to_writer(&mut *out, &n)?;
            } else {
                serde_json::to_writer(&mut *out, &i.as_u64().unwrap())?;
            }
        }
        V::F64(f) => serde_json::to_writer(&mut *out, f)?,
        V::F32(f) => serde_json::to_writer(&mut *out, f)?,
        V::Boolean(b) => serde_json::to_writer(&mut *out, b)?,
        V::Nil => out.extend_from_slice(b"null"),
        other => bail!("unexpected record value {other:?}"),
    }
    Ok(())
}

fn gen_http(stream: &Path, out: &Path, time_key: &str, time_format: TimeFormat) -> Result<()> {
    let data = std::fs::read(stream).with_context(|| format!("reading {}", stream.display()))?;
    let frames = scan_frames(&data)?;
    if frames.is_empty() {
        bail!("{} holds no frames", stream.display());
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut tmp = out.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut w = BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
    );
    let mut key_json = Vec::new();
    serde_json::to_writer(&mut key_json, time_key)?;
    let mut body = Vec::with_capacity(1 << 20);
    let (mut events, mut body_bytes, mut max_body) = (0u64, 0u64, 0usize);
    for f in &frames {
        let buf = &data[f.start..f.end];
        let (ts, tn) = str_or_bin_at(buf, 1)?;
        let tag = std::str::from_utf8(&buf[ts..ts + tn])?;
        if tag.contains(|c: char| c.is_whitespace() || c == '/' || c == '?' || c == '%') {
            bail!("tag {tag:?} cannot go into a request path as is");
        }
        let tag_end = skip_value(buf, 1)?.unwrap();
        let (es, en) = str_or_bin_at(buf, tag_end)?;
        let mut rd = &buf[es..es + en];
        body.clear();
        let mut n = 0u64;
        while !rd.is_empty() {
            let entry = rmpv::decode::read_value(&mut rd).map_err(|e| anyhow!("entry: {e}"))?;
            let arr = entry
                .as_array()
                .filter(|a| a.len() == 2)
                .ok_or_else(|| anyhow!("entry is not [time, record]"))?;
            let (secs, nanos) = match &arr[0] {
                rmpv::Value::Ext(0, d) if d.len() == 8 => (
                    u32::from_be_bytes(d[..4].try_into()?) as i64,
                    u32::from_be_bytes(d[4..].try_into()?),
                ),
                rmpv::Value::Integer(i) => (i.as_i64().unwrap_or(0), 0),
                other => bail!("unexpected entry time {other:?}"),
            };
            let rec = arr[1]
                .as_map()
                .ok_or_else(|| anyhow!("record is not a map"))?;
            body.push(b'{');
            body.extend_from_slice(&key_json);
            body.push(b':');
            match time_format {
                TimeFormat::Rfc3339 => {
                    let t = chrono::DateTime::from_timestamp(secs, nanos)
                        .ok_or_else(|| anyhow!("time {secs}.{nanos} out of range"))?;
                    body.push(b'"');
                    body.extend_from_slice(
                        t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
                            .as_bytes(),
                    );
                    body.push(b'"');
                }
                TimeFormat::Epoch => {
                    use std::io::Write as _;
                    write!(body, "{secs}.{nanos:09}")?;
                }
            }
            for (k, v) in rec {
                let k = k
                    .as_str()
                    .ok_or_else(|| anyhow!("record key is not a string"))?;
                if k == time_key {
                    continue; // the time field above stands for it
                }
                body.push(b',');
                serde_json::to_writer(&mut body, k)?;
                body.push(b':');
                write_json_value(&mut body, v)?;
            }
            body.extend_from_slice(b"}\n");
            n += 1;
        }
        if n != f.events {
            bail!("frame says size {} but holds {n} entries", f.events);
        }
        writeln!(w, "{tag} {n} {}", body.len())?;
        w.write_all(&body)?;
        events += n;
        body_bytes += body.len() as u64;
        max_body = max_body.max(body.len());
    }
    w.flush()?;
    drop(w);
    std::fs::rename(&tmp, out)?;
    println!("gen_http.file: {}", out.display());
    println!("gen_http.requests: {}", frames.len());
    println!("gen_http.events: {events}");
    println!("gen_http.body_bytes: {body_bytes}");
    println!(
        "gen_http.avg_line_bytes: {:.1}",
        body_bytes as f64 / events.max(1) as f64
    );
    println!("gen_http.max_body_bytes: {max_body}");
    Ok(())
}

struct HttpBatch {
    tag: String,
    events: u64,
    start: usize,
    end: usize,
}

fn scan_http_batches(buf: &[u8]) -> Result<Vec<HttpBatch>> {
    let mut batches = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let nl = buf[pos..]
            .iter()
            .position(|b| *b == b'\n')
            .ok_or_else(|| anyhow!("batches file truncated at offset {pos}"))?
            + pos;
        let header = std::str::from_utf8(&buf[pos..nl])?;
        let mut parts = header.split(' ');
        let (Some(tag), Some(events), Some(len), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            bail!("bad batch header at offset {pos}: {header:?}");
        };
        let len: usize = len.parse().context("batch length")?;
        let start = nl + 1;
        let end = start + len;
        if end > buf.len() {
            bail!("batch at offset {pos} runs past the end of the file");
        }
        batches.push(HttpBatch {
            tag: tag.to_string(),
            events: events.parse().context("batch events")?,
            start,
            end,
        });
        pos = end;
    }
    Ok(batches)
}

struct HttpResponse {
    status: u16,
    retry_after: Option<u64>,
    close: bool,
    body: Vec<u8>,
}

/// Reads one HTTP/1.1 response (Content-Length or chunked body).
fn read_response(r: &mut BufReader<TcpStream>) -> Result<HttpResponse> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        bail!("server closed the connection before answering");
    }
    let mut it = line.trim_end().splitn(3, ' ');
    let version = it.next().unwrap_or_default().to_string();
    let status: u16 = it
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {line:?}"))?;
    let mut close = version == "HTTP/1.0";
    let (mut length, mut chunked, mut retry_after) = (None, false, None);
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            bail!("connection closed inside the response headers");
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let Some((k, v)) = l.split_once(':') else {
            bail!("bad header line {l:?}");
        };
        let v = v.trim();
        match k.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = Some(v.parse::<usize>().context("content-length")?),
            "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
            "connection" => close = v.eq_ignore_ascii_case("close"),
            "retry-after" => retry_after = Some(v.parse::<u64>().unwrap_or(1)),
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size_text = line.trim_end().split(';').next().unwrap_or_default();
            let size = usize::from_str_radix(size_text.trim(), 16)
                .with_context(|| format!("bad chunk size {line:?}"))?;
            if size == 0 {
                // trailers, up to the empty line
                loop {
                    line.clear();
                    if r.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                        break;
                    }
                }
                break;
            }
            let at = body.len();
            body.resize(at + size + 2, 0);
            r.read_exact(&mut body[at..])?;
            body.truncate(at + size);
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    } else if status >= 200 && status != 204 && status != 304 {
        r.read_to_end(&mut body)?; // delimited by close
        close = true;
    }
    Ok(HttpResponse {
        status,
        retry_after,
        close,
        body,
    })
}

#[derive(Default)]
struct HttpConnResult {
    requests: u64,
    events: u64,
    bytes: u64,
    retries: u64,
    retry_wait_s: f64,
    reconnects: u64,
    latencies_ms: Vec<f64>,
    finished: Option<Instant>,
}

fn replay_http(
    addr: SocketAddr,
    file: &Path,
    connections: usize,
    timeout: Duration,
    max_retries: u32,
) -> Result<()> {
    if connections == 0 {
        bail!("--connections must be at least 1");
    }
    let data = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let batches = scan_http_batches(&data)?;
    if batches.is_empty() {
        bail!("{} holds no batches", file.display());
    }
    let total_events: u64 = batches.iter().map(|b| b.events).sum();
    let connections = connections.min(batches.len());
    eprintln!(
        "replay-http: {} requests, {} events, {} body bytes over {} connection(s), one request in flight each",
        batches.len(),
        total_events,
        batches.iter().map(|b| b.end - b.start).sum::<usize>(),
        connections
    );
    let data = Arc::new(data);
    let batches = Arc::new(batches);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let cpu0 = cpu_seconds(libc::RUSAGE_SELF);
    let start = Instant::now();
    let mut handles = Vec::new();
    for c in 0..connections {
        let (data, batches, next, failed) =
            (data.clone(), batches.clone(), next.clone(), failed.clone());
        handles.push(std::thread::spawn(move || -> Result<HttpConnResult> {
            let r =
                run_http_connection(addr, &data, &batches, &next, &failed, timeout, max_retries);
            if r.is_err() {
                failed.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            r.with_context(|| format!("connection {c}"))
        }));
    }
    let mut errors = Vec::new();
    let mut results = Vec::new();
    for (c, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(r)) => results.push(r),
            Ok(Err(e)) => errors.push(format!("{e:#}")),
            Err(_) => errors.push(format!("connection {c}: thread panicked")),
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds(libc::RUSAGE_SELF) - cpu0;
    let requests: u64 = results.iter().map(|r| r.requests).sum();
    let events: u64 = results.iter().map(|r| r.events).sum();
    let bytes: u64 = results.iter().map(|r| r.bytes).sum();
    let retries: u64 = results.iter().map(|r| r.retries).sum();
    let retry_wait: f64 = results.iter().map(|r| r.retry_wait_s).sum();
    let reconnects: u64 = results.iter().map(|r| r.reconnects).sum();
    let mut lat: Vec<f64> = results
        .iter()
        .flat_map(|r| r.latencies_ms.iter().copied())
        .collect();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let q = |p: f64| {
        if lat.is_empty() {
            f64::NAN
        } else {
            lat[((lat.len() - 1) as f64 * p).round() as usize]
        }
    };
    let finished: Vec<Instant> = results.iter().filter_map(|r| r.finished).collect();
    let spread = match (finished.iter().min(), finished.iter().max()) {
        (Some(a), Some(b)) => b.duration_since(*a).as_secs_f64(),
        _ => 0.0,
    };
    println!("replay.mode: http");
    println!("replay.connections: {connections}");
    println!("replay.requests_total: {}", batches.len());
    println!("replay.requests_ok: {requests}");
    println!("replay.events_acked: {events}");
    println!("replay.wall_s: {wall:.3}");
    println!("replay.events_per_s: {:.0}", events as f64 / wall);
    println!("replay.body_mb_per_s: {:.1}", bytes as f64 / wall / 1e6);
    println!("replay.ack_latency_ms_p50: {:.1}", q(0.5));
    println!("replay.ack_latency_ms_p99: {:.1}", q(0.99));
    println!("replay.ack_latency_ms_max: {:.1}", q(1.0));
    println!("replay.retries_503: {retries}");
    println!("replay.retry_wait_s: {retry_wait:.1}");
    println!("replay.reconnects: {reconnects}");
    println!("replay.connection_finish_spread_s: {spread:.3}");
    println!("replay.client_cpu_s: {cpu:.3}");
    if !errors.is_empty() || requests != batches.len() as u64 {
        for e in &errors {
            eprintln!("replay-http: {e}");
        }
        bail!("{} of {} requests answered 2xx", requests, batches.len());
    }
    Ok(())
}

fn run_http_connection(
    addr: SocketAddr,
    data: &[u8],
    batches: &[HttpBatch],
    next: &std::sync::atomic::AtomicUsize,
    failed: &std::sync::atomic::AtomicBool,
    timeout: Duration,
    max_retries: u32,
) -> Result<HttpConnResult> {
    use std::sync::atomic::Ordering;
    let connect = || -> Result<(TcpStream, BufReader<TcpStream>)> {
        let s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        let r = BufReader::with_capacity(16 << 10, s.try_clone()?);
        Ok((s, r))
    };
    let mut conn = Some(connect()?);
    let mut res = HttpConnResult::default();
    let mut head = Vec::with_capacity(256);
    loop {
        if failed.load(Ordering::Relaxed) {
            bail!("stopped: another connection failed");
        }
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(b) = batches.get(i) else { break };
        let body = &data[b.start..b.end];
        head.clear();
        write!(
            head,
            "POST /{} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n",
            b.tag,
            body.len()
        )?;
        let mut attempts = 0u32;
        loop {
            if conn.is_none() {
                conn = Some(connect()?);
                res.reconnects += 1;
            }
            let (w, r) = conn.as_mut().unwrap();
            let sent = Instant::now();
            w.write_all(&head)
                .and_then(|_| w.write_all(body))
                .with_context(|| format!("sending request {i} ({})", b.tag))?;
            let resp = read_response(r).with_context(|| format!("request {i} ({})", b.tag))?;
            let took = sent.elapsed();
            if resp.close {
                conn = None;
            }
            match resp.status {
                200..=299 => {
                    res.latencies_ms.push(took.as_secs_f64() * 1e3);
                    res.requests += 1;
                    res.events += b.events;
                    res.bytes += body.len() as u64;
                    break;
                }
                503 => {
                    attempts += 1;
                    if attempts > max_retries {
                        bail!("request {i} ({}): 503 {max_retries} times", b.tag);
                    }
                    let wait = Duration::from_secs(resp.retry_after.unwrap_or(1));
                    res.retries += 1;
                    res.retry_wait_s += wait.as_secs_f64();
                    if res.retries == 1 {
                        eprintln!(
                            "replay-http: 503 ({}), retrying after {wait:?}",
                            String::from_utf8_lossy(&resp.body).trim()
                        );
                    }
                    std::thread::sleep(wait);
                }
                s => bail!(
                    "request {i} ({}): HTTP {s}: {}",
                    b.tag,
                    String::from_utf8_lossy(&resp.body[..resp.body.len().min(500)]).trim()
                ),
            }
        }
    }
    if let Some((w, _)) = conn {
        let _ = w.shutdown(std::net::Shutdown::Both);
    }
    res.finished = Some(Instant::now());
    Ok(res)
}

// ---------------------------------------------------------------------------------------------
// Baseline compressor.

fn compress(codec: &str, level: u32, file: &Path, out: Option<&Path>) -> Result<()> {
    let levels = match codec {
        "zstd" => 1..=19,
        "isal" => 0..=3,
        _ => 0..=9,
    };
    if !levels.contains(&level) {
        bail!(
            "--level must be {}..={} for {codec}",
            levels.start(),
            levels.end()
        );
    }
    let input = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let cpu0 = cpu_seconds(libc::RUSAGE_SELF);
    let t0 = Instant::now();
    let sink = Vec::with_capacity(input.len() / 4);
    // Fed in 64 KiB writes, as a streaming compressor would see the data.
    let output = if codec == "isal" {
        isal_gzip(&input, level, sink)?
    } else if codec == "zstd" {
        let mut enc = zstd::stream::write::Encoder::new(sink, level as i32)?;
        enc.include_checksum(false)?;
        enc.window_log(20)?;
        for block in input.chunks(64 << 10) {
            enc.write_all(block)?;
        }
        enc.finish()?
    } else {
        let mut enc = flate2::write::GzEncoder::new(sink, flate2::Compression::new(level));
        for block in input.chunks(64 << 10) {
            enc.write_all(block)?;
        }
        enc.finish()?
    };
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(libc::RUSAGE_SELF) - cpu0;
    if let Some(out) = out {
        std::fs::write(out, &output)?;
    }
    println!("compress.codec: {codec}");
    println!("compress.level: {level}");
    println!("compress.input_bytes: {}", input.len());
    println!("compress.output_bytes: {}", output.len());
    println!(
        "compress.ratio: {:.4}",
        output.len() as f64 / input.len().max(1) as f64
    );
    println!("compress.cpu_s: {cpu:.3}");
    println!("compress.wall_s: {wall:.3}");
    println!(
        "compress.mb_per_cpu_s: {:.1}",
        input.len() as f64 / cpu.max(1e-9) / 1e6
    );
    Ok(())
}

/// ISA-L's stateful deflate as igzip drives it: one gzip member (ISA-L writes the header and the
/// trailer, CRC-32 included), the input in 64 KiB writes, `end_of_stream` with the last. The
/// server's engine is the same stream with a sync flush at each commit (src/buffer/isal.rs).
#[cfg(feature = "isal")]
fn isal_gzip(input: &[u8], level: u32, mut out: Vec<u8>) -> Result<Vec<u8>> {
    use isal_sys::igzip_lib as ffi;
    let size = [
        ffi::ISAL_DEF_LVL0_DEFAULT,
        ffi::ISAL_DEF_LVL1_DEFAULT,
        ffi::ISAL_DEF_LVL2_DEFAULT,
        ffi::ISAL_DEF_LVL3_DEFAULT,
    ][level as usize];
    let mut level_buf = vec![0u8; size as usize];
    // SAFETY: all zeroes is a valid isal_zstream (plain C data); isal_deflate_init sets it up.
    let mut s: Box<ffi::isal_zstream> = unsafe { Box::new_zeroed().assume_init() };
    unsafe { ffi::isal_deflate_init(&mut *s) };
    s.level = level;
    s.level_buf_size = size;
    s.level_buf = if size == 0 {
        std::ptr::null_mut()
    } else {
        level_buf.as_mut_ptr()
    };
    s.gzip_flag = ffi::IGZIP_GZIP as u16;
    let mut blocks: Vec<&[u8]> = input.chunks(64 << 10).collect();
    if blocks.is_empty() {
        blocks.push(&[]);
    }
    for (i, block) in blocks.iter().enumerate() {
        s.next_in = block.as_ptr().cast_mut();
        s.avail_in = block.len() as u32;
        s.end_of_stream = u16::from(i + 1 == blocks.len());
        loop {
            if out.capacity() - out.len() < 64 << 10 {
                out.reserve(1 << 20);
            }
            let len = out.len();
            let spare = out.capacity() - len;
            s.next_out = out.spare_capacity_mut().as_mut_ptr().cast();
            s.avail_out = spare as u32;
            // SAFETY: next_in/next_out describe live, unaliased buffers for this call.
            let ret = unsafe { ffi::isal_deflate(&mut *s) };
            unsafe { out.set_len(len + spare - s.avail_out as usize) };
            if ret != ffi::COMP_OK as i32 {
                bail!("isal_deflate: error {ret}");
            }
            let finished = s.internal_state.state == ffi::isal_zstate_state_ZSTATE_END;
            if s.avail_in == 0 && (s.end_of_stream == 0 || finished) {
                break;
            }
        }
    }
    Ok(out)
}

#[cfg(not(feature = "isal"))]
fn isal_gzip(_input: &[u8], _level: u32, _out: Vec<u8>) -> Result<Vec<u8>> {
    bail!("--codec isal needs the bench built with `--features isal`")
}

// ---------------------------------------------------------------------------------------------
// Verify the server's output.

#[derive(serde::Deserialize)]
struct IdOnly {
    request_id: String,
}

fn verify(meta: &Path, file: &Path) -> Result<()> {
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(meta).with_context(|| format!("reading {}", meta.display()))?,
    )?;
    let want_records = meta["records"]
        .as_u64()
        .ok_or_else(|| anyhow!("meta has no records"))?;
    let want_digest = meta["request_id_digest"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let reader = BufReader::with_capacity(
        1 << 20,
        std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?,
    );
    let mut seen = std::collections::HashSet::with_capacity(want_records as usize);
    let (mut lines, mut dupes, mut bad) = (0u64, 0u64, 0u64);
    let mut digest: u64 = 0;
    for line in reader.split(b'\n') {
        let line = line?;
        if line.is_empty() {
            continue;
        }
        lines += 1;
        match serde_json::from_slice::<IdOnly>(&line) {
            Ok(rec) => {
                let h = fnv1a(rec.request_id.as_bytes());
                digest = digest.wrapping_add(h);
                if !seen.insert(rec.request_id) {
                    dupes += 1;
                }
            }
            Err(e) => {
                if bad < 3 {
                    eprintln!(
                        "verify: line {lines}: {e}: {}",
                        String::from_utf8_lossy(&line[..line.len().min(200)])
                    );
                }
                bad += 1;
            }
        }
    }
    let digest = format!("{digest:016x}");
    println!("verify.lines: {lines}");
    println!("verify.expected: {want_records}");
    println!("verify.unique_request_ids: {}", seen.len());
    println!("verify.duplicates: {dupes}");
    println!("verify.bad_lines: {bad}");
    println!("verify.digest_match: {}", digest == want_digest);
    if lines != want_records || dupes != 0 || bad != 0 || digest != want_digest {
        bail!("output does not match the generated stream");
    }
    println!("verify.ok: true");
    Ok(())
}
