//! `rin-ship top`: a live terminal view of a running `serve` or `import`, read from its
//! `/metrics` every interval (events per second in and out by intake and target, the buffer's
//! fill and oldest chunk, uploads and loads with their latencies and errors, readiness), as
//! `vector top` does; and `rin-ship health`, the same scrape as a container health check.
//! Owns the scrape (one HTTP GET), a Prometheus text parser and the layout. It reads only:
//! it must never change the process it watches, and never leave the terminal in the
//! alternate screen (Ctrl-C restores it).

use anyhow::{Context, Result, anyhow, bail};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, Instant};

/// `rin-ship top ADDR`.
pub fn main(addr: &str, interval: Duration, once: bool) -> Result<()> {
    let endpoint = Endpoint::parse(addr)?;
    let interval = interval.max(Duration::from_millis(100));
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            if once {
                let first = endpoint.scrape().await?;
                tokio::time::sleep(interval).await;
                let second = endpoint.scrape().await?;
                print!("{}", render(&endpoint, Some(&first), &second, interval));
                return Ok(());
            }
            live(&endpoint, interval).await
        })
}

/// `rin-ship health ADDR [--ready]`: 0 when the endpoint answers 200.
pub fn health(addr: &str, ready: bool) -> Result<()> {
    let endpoint = Endpoint::parse(addr)?;
    let path = if ready { "/readyz" } else { "/healthz" };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let (status, body) = endpoint.get(path).await?;
            if status != 200 {
                bail!(
                    "{}{path} answered {status}: {}",
                    endpoint.base,
                    body.trim().replace('\n', "; ")
                );
            }
            print!("{body}");
            Ok(())
        })
}

/// Redraws the view every `interval` until Ctrl-C; an endpoint that stops answering is shown,
/// and scraped again.
async fn live(endpoint: &Endpoint, interval: Duration) -> Result<()> {
    // Listening for Ctrl-C from the start, once: a `ctrl_c()` made anew at each wait missed a
    // Ctrl-C pressed during a scrape (and one pressed before the first wait killed the process
    // without restoring the screen).
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut out = std::io::stdout();
    // The alternate screen, cursor hidden: the shell's screen comes back as it was.
    write!(out, "\x1b[?1049h\x1b[?25l")?;
    let mut prev: Option<(Snapshot, Instant)> = None;
    let result = loop {
        let frame = match endpoint.scrape().await {
            Ok(snap) => {
                let now = Instant::now();
                let view = render(
                    endpoint,
                    prev.as_ref().map(|(s, _)| s),
                    &snap,
                    prev.as_ref().map_or(interval, |(_, at)| now - *at),
                );
                prev = Some((snap, now));
                view
            }
            Err(e) => format!(
                "rin-ship top  {}\n\ncannot scrape it: {e:#}\n(is it running, with metrics on? retrying every {interval:?}; Ctrl-C quits)\n",
                endpoint.base
            ),
        };
        // Home, the frame, then clear what a longer previous frame left below it.
        let frame = frame.replace('\n', "\x1b[K\n");
        if let Err(e) = write!(out, "\x1b[H{frame}\x1b[J").and_then(|()| out.flush()) {
            break Err(e.into());
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = interrupt.recv() => break Ok(()),
        }
    };
    write!(out, "\x1b[?25h\x1b[?1049l")?;
    out.flush()?;
    result
}

/// Where the metrics are: `host:port`, or an `http://` URL (its path is ignored).
struct Endpoint {
    authority: String,
    base: String,
}

impl Endpoint {
    fn parse(addr: &str) -> Result<Endpoint> {
        let rest = addr.trim();
        if rest.starts_with("https://") {
            bail!(
                "{addr}: the metrics endpoint speaks plain HTTP; write http://host:port or host:port"
            );
        }
        let rest = rest.strip_prefix("http://").unwrap_or(rest);
        let authority = rest.split('/').next().unwrap_or("").to_string();
        let (host, port) = authority.rsplit_once(':').ok_or_else(|| {
            anyhow!(
                "{addr}: write host:port, e.g. 127.0.0.1:2021 (metrics.bind, rin_ship.metrics_bind)"
            )
        })?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            bail!("{addr}: write host:port, e.g. 127.0.0.1:2021");
        }
        Ok(Endpoint {
            base: format!("http://{authority}"),
            authority,
        })
    }

    /// One GET: the status and the body.
    async fn get(&self, path: &str) -> Result<(u16, String)> {
        let fetch = async {
            let stream = tokio::net::TcpStream::connect(&self.authority)
                .await
                .with_context(|| format!("cannot connect to {}", self.authority))?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let req = hyper::Request::get(path)
                .header(hyper::header::HOST, &self.authority)
                .body(Empty::<Bytes>::new())?;
            let resp = sender.send_request(req).await?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
        };
        tokio::time::timeout(Duration::from_secs(5), fetch)
            .await
            .map_err(|_| anyhow!("{}{path}: no answer within 5 s", self.base))?
    }

    async fn scrape(&self) -> Result<Snapshot> {
        let (status, body) = self.get("/metrics").await?;
        if status != 200 {
            bail!("{}/metrics answered {status}", self.base);
        }
        Ok(Snapshot::parse(&body))
    }
}

/// One sample: name, labels (sorted), value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed `/metrics` page.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub samples: Vec<Sample>,
}

impl Snapshot {
    /// Parses Prometheus text format (version 0.0.4); lines it cannot read are skipped.
    pub fn parse(text: &str) -> Snapshot {
        let samples = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(parse_sample)
            .collect();
        Snapshot { samples }
    }

    fn series<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// The sum over every series of `name` whose labels include `want`.
    fn sum(&self, name: &str, want: &[(&str, &str)]) -> Option<f64> {
        let mut found = false;
        let total = self
            .series(name)
            .filter(|s| {
                want.iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .inspect(|_| found = true)
            .map(|s| s.value)
            .sum();
        found.then_some(total)
    }

    fn get(&self, name: &str) -> Option<f64> {
        self.sum(name, &[])
    }

    /// The values of label `label` among the series of `name`, in order.
    fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .series(name)
            .filter_map(|s| s.labels.get(label).cloned())
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let mut labels = BTreeMap::new();
    let rest = if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let end;
        loop {
            // `key="value"`, `,` between, `}` at the end.
            while chars.peek().is_some_and(|(_, c)| *c == ',' || *c == ' ') {
                chars.next();
            }
            match chars.peek() {
                Some((i, '}')) => {
                    end = *i + 1;
                    break;
                }
                None => return None,
                _ => {}
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()? {
                    (_, '"') => break,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    (_, c) => value.push(c),
                }
            }
            labels.insert(key.trim().to_string(), value);
        }
        &body[end..]
    } else {
        rest
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Counter increase per second between two snapshots (a restart in between counts from 0).
fn rate(
    prev: Option<&Snapshot>,
    cur: &Snapshot,
    name: &str,
    want: &[(&str, &str)],
    dt: Duration,
) -> Option<f64> {
    let now = cur.sum(name, want)?;
    let before = prev.and_then(|p| p.sum(name, want))?;
    let delta = if now >= before { now - before } else { now };
    Some(delta / dt.as_secs_f64().max(1e-3))
}

/// The `q` quantile of the observations of histogram `name` (labels `want`) made between the
/// snapshots, interpolated within a bucket as `histogram_quantile` does; `None` when there were
/// none.
fn quantile(
    prev: Option<&Snapshot>,
    cur: &Snapshot,
    name: &str,
    want: &[(&str, &str)],
    q: f64,
) -> Option<f64> {
    let bucket = format!("{name}_bucket");
    let cum = |s: &Snapshot| -> BTreeMap<u64, (f64, f64)> {
        let mut m = BTreeMap::new();
        for x in s.series(&bucket) {
            if !want
                .iter()
                .all(|(k, v)| x.labels.get(*k).map(String::as_str) == Some(*v))
            {
                continue;
            }
            let Some(le) = x.labels.get("le").and_then(|l| match l.as_str() {
                "+Inf" => Some(f64::INFINITY),
                l => l.parse::<f64>().ok(),
            }) else {
                continue;
            };
            let e = m.entry(le.to_bits()).or_insert((le, 0.0));
            e.1 += x.value;
        }
        m
    };
    let now = cum(cur);
    let before = prev.map(cum).unwrap_or_default();
    let mut buckets: Vec<(f64, f64)> = now
        .values()
        .map(|(le, n)| (*le, n - before.get(&le.to_bits()).map_or(0.0, |b| b.1)))
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let target = q * total;
    let mut lower = (0.0, 0.0);
    for (le, n) in buckets {
        if n >= target {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let width = n - lower.1;
            let frac = if width > 0.0 {
                (target - lower.1) / width
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * frac);
        }
        lower = (le, n);
    }
    Some(lower.0)
}

fn si(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a == a.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn bytes(v: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = v;
    let mut u = 0;
    while v.abs() >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

fn seconds(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0}ms", s * 1000.0)
    } else if s < 120.0 {
        format!("{s:.1}s")
    } else if s < 7200.0 {
        format!("{:.0}m{:02.0}s", (s / 60.0).floor(), s % 60.0)
    } else {
        format!("{:.1}h", s / 3600.0)
    }
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "-".into())
}

fn ago(ts: Option<f64>) -> String {
    match ts {
        Some(t) if t > 0.0 => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(t);
            format!("{} ago", seconds((now - t).max(0.0)))
        }
        _ => "never".into(),
    }
}

/// The view of one interval.
fn render(endpoint: &Endpoint, prev: Option<&Snapshot>, cur: &Snapshot, dt: Duration) -> String {
    let mut o = String::new();
    let info = cur.series("rin_build_info").next();
    let label = |k: &str| {
        info.and_then(|s| s.labels.get(k))
            .cloned()
            .unwrap_or_else(|| "?".into())
    };
    let serve = cur.get("rin_events_in_total").is_some() || cur.get("rin_buffer_bytes").is_some();
    let loads = cur.get("rin_import_rows_total").is_some();
    let role = match (serve, loads) {
        (true, true) => "serve + embedded loader",
        (true, false) => "serve",
        (false, true) => "import",
        _ => "rin-ship",
    };
    let up = cur
        .get("process_start_time_seconds")
        .map(|t| ago(Some(t)).replace(" ago", ""));
    let _ = writeln!(
        o,
        "rin-ship top  {}  {role}  {} ({})  up {}  rss {}  every {}  Ctrl-C quits",
        endpoint.base,
        label("version"),
        label("commit"),
        up.unwrap_or_else(|| "?".into()),
        opt(cur.get("process_resident_memory_bytes"), bytes),
        seconds(dt.as_secs_f64()),
    );
    let checks = cur.label_values("rin_ready", "check");
    if !checks.is_empty() {
        let states: Vec<String> = checks
            .iter()
            .map(|c| {
                let ok = cur.sum("rin_ready", &[("check", c)]).unwrap_or(0.0) >= 1.0;
                format!("{c} {}", if ok { "ok" } else { "NOT READY" })
            })
            .collect();
        let _ = writeln!(o, "ready: {}", states.join(", "));
    }
    if serve {
        let _ = writeln!(
            o,
            "\n{:<10}{:<20}{:>12}{:>14}{:>14}",
            "IN", "TARGET", "EVENTS/S", "BYTES/S", "EVENTS"
        );
        let mut pairs: Vec<(String, String)> = cur
            .series("rin_events_in_total")
            .filter_map(|s| {
                Some((
                    s.labels.get("intake")?.clone(),
                    s.labels.get("target")?.clone(),
                ))
            })
            .collect();
        pairs.sort();
        pairs.dedup();
        for (intake, target) in &pairs {
            let want = [("intake", intake.as_str()), ("target", target.as_str())];
            let _ = writeln!(
                o,
                "{:<10}{:<20}{:>12}{:>14}{:>14}",
                intake,
                target,
                opt(rate(prev, cur, "rin_events_in_total", &want, dt), si),
                opt(rate(prev, cur, "rin_bytes_in_total", &want, dt), bytes),
                opt(cur.sum("rin_events_in_total", &want), si),
            );
        }
        let _ = writeln!(
            o,
            "\n{:<10}{:<20}{:>12}{:>14}",
            "OUT", "TARGET", "EVENTS/S", "EVENTS"
        );
        for target in cur.label_values("rin_events_out_total", "target") {
            let want = [("target", target.as_str())];
            let _ = writeln!(
                o,
                "{:<10}{:<20}{:>12}{:>14}",
                "uploaded",
                target,
                opt(rate(prev, cur, "rin_events_out_total", &want, dt), si),
                opt(cur.sum("rin_events_out_total", &want), si),
            );
        }
        let used = cur.get("rin_buffer_bytes");
        let quota = cur.get("rin_buffer_quota_bytes");
        let _ = writeln!(
            o,
            "\nBUFFER    {} of {} ({})   chunks open {} sealed {}   oldest unshipped {}   quota hits {}",
            opt(used, bytes),
            opt(quota, bytes),
            opt(cur.get("rin_buffer_fill_ratio"), |r| format!(
                "{:.1}%",
                r * 100.0
            )),
            opt(cur.sum("rin_buffer_chunks", &[("state", "open")]), si),
            opt(cur.sum("rin_buffer_chunks", &[("state", "sealed")]), si),
            opt(cur.get("rin_buffer_oldest_chunk_age_seconds"), |a| {
                if a > 0.0 { seconds(a) } else { "-".into() }
            }),
            opt(cur.get("rin_buffer_full_total"), si),
        );
        let _ = writeln!(
            o,
            "UPLOADS   {}/s  {}/s   total {}   errors {} (+{})   latency p50 {} p99 {}   last {}",
            opt(rate(prev, cur, "rin_objects_uploaded_total", &[], dt), si),
            opt(rate(prev, cur, "rin_uploaded_bytes_total", &[], dt), bytes),
            opt(cur.get("rin_objects_uploaded_total"), si),
            opt(cur.get("rin_upload_errors_total"), si),
            opt(
                rate(prev, cur, "rin_upload_errors_total", &[], dt).map(|r| r * dt.as_secs_f64()),
                si
            ),
            opt(
                quantile(prev, cur, "rin_upload_duration_seconds", &[], 0.5),
                seconds
            ),
            opt(
                quantile(prev, cur, "rin_upload_duration_seconds", &[], 0.99),
                seconds
            ),
            ago(cur.get("rin_last_upload_timestamp_seconds")),
        );
        let rejects = |name: &str| -> String {
            let parts: Vec<String> = cur
                .label_values(name, "reason")
                .into_iter()
                .filter_map(|r| {
                    let n = cur.sum(name, &[("reason", &r)])?;
                    (n > 0.0).then(|| format!("{r} {}", si(n)))
                })
                .collect();
            if parts.is_empty() {
                "none".into()
            } else {
                parts.join(", ")
            }
        };
        let _ = writeln!(
            o,
            "REFUSED   forward frames: {}   http requests: {}",
            rejects("rin_forward_frames_rejected_total"),
            rejects("rin_http_requests_rejected_total"),
        );
    }
    if loads {
        let _ = writeln!(
            o,
            "\nLOADS     rows {}/s   objects {}/s   total rows {}   latency p50 {} p99 {}   last {}",
            opt(rate(prev, cur, "rin_import_rows_total", &[], dt), si),
            opt(
                rate(
                    prev,
                    cur,
                    "rin_import_records_total",
                    &[("outcome", "loaded")],
                    dt
                ),
                si
            ),
            opt(cur.get("rin_import_rows_total"), si),
            opt(
                quantile(prev, cur, "rin_load_duration_seconds", &[], 0.5),
                seconds
            ),
            opt(
                quantile(prev, cur, "rin_load_duration_seconds", &[], 0.99),
                seconds
            ),
            ago(cur.get("rin_last_load_timestamp_seconds")),
        );
        let kinds: Vec<String> = ["data", "transient", "other"]
            .iter()
            .map(|k| {
                format!(
                    "{k} {}",
                    opt(cur.sum("rin_import_load_errors_total", &[("kind", k)]), si)
                )
            })
            .collect();
        let _ = writeln!(
            o,
            "          errors {}   quarantined {}   duplicates {}",
            kinds.join(", "),
            opt(cur.get("rin_import_quarantined_total"), si),
            opt(
                cur.sum("rin_import_records_total", &[("outcome", "duplicate")]),
                si
            ),
        );
        let queue = if cur.get("rin_local_queue_messages").is_some() {
            Some((
                "local",
                ["ready", "inflight", "dead"].as_slice(),
                "rin_local_queue_messages",
            ))
        } else if cur.get("rin_import_queue_messages").is_some() {
            Some((
                "SQS",
                ["visible", "inflight"].as_slice(),
                "rin_import_queue_messages",
            ))
        } else {
            None
        };
        if let Some((kind, states, name)) = queue {
            let parts: Vec<String> = states
                .iter()
                .map(|s| format!("{s} {}", opt(cur.sum(name, &[("state", s)]), si)))
                .collect();
            let _ = writeln!(o, "QUEUE     {kind}: {}", parts.join(", "));
        }
    }
    if prev.is_none() {
        let _ = writeln!(o, "\n(rates after the next scrape)");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# HELP rin_events_in_total x\n# TYPE rin_events_in_total counter\n\
        rin_events_in_total{intake=\"forward\",target=\"default\"} 10\n\
        rin_build_info{version=\"0.1.0\",commit=\"abc\",features=\"s3\"} 1\n\
        odd{a=\"x\\\"y,z\",b=\"\\\\\"} 2.5\n\
        h_bucket{le=\"0.1\"} 1\nh_bucket{le=\"1\"} 3\nh_bucket{le=\"+Inf\"} 4\n";

    #[test]
    fn parses_the_text_format() {
        let s = Snapshot::parse(PAGE);
        assert_eq!(
            s.sum("rin_events_in_total", &[("intake", "forward")]),
            Some(10.0)
        );
        let odd = s.series("odd").next().unwrap();
        assert_eq!(odd.labels["a"], "x\"y,z");
        assert_eq!(odd.labels["b"], "\\");
        assert_eq!(odd.value, 2.5);
    }

    #[test]
    fn rates_and_quantiles_between_scrapes() {
        let a = Snapshot::parse(PAGE);
        let b = Snapshot::parse(
            &PAGE
                .replace("} 10", "} 30")
                .replace("le=\"1\"} 3", "le=\"1\"} 13")
                .replace("+Inf\"} 4", "+Inf\"} 14"),
        );
        let r = rate(
            Some(&a),
            &b,
            "rin_events_in_total",
            &[],
            Duration::from_secs(2),
        )
        .unwrap();
        assert_eq!(r, 10.0);
        // 10 new observations, all between 0.1 and 1: the median is in the middle.
        let q = quantile(Some(&a), &b, "h", &[], 0.5).unwrap();
        assert!((q - 0.55).abs() < 1e-9, "{q}");
        assert_eq!(quantile(Some(&a), &a, "h", &[], 0.5), None);
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            Endpoint::parse("127.0.0.1:2021").unwrap().authority,
            "127.0.0.1:2021"
        );
        assert_eq!(
            Endpoint::parse("http://h:1/metrics").unwrap().authority,
            "h:1"
        );
        assert!(Endpoint::parse("2021").is_err());
        assert!(Endpoint::parse("https://h:1").is_err());
    }
}
