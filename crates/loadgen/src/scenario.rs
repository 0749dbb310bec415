//! What a run sends: the scenarios, the ~300-byte e-commerce events, batch envelopes,
//! duplicate resends and searches, built cheaply enough that the generator is never the
//! bottleneck.
//!
//! Every event is a pure function of `(run, worker, seq)`: resending an old `seq` produces
//! byte-identical content, which the server must answer as a duplicate. Everything but the
//! sequence number and the time of day is pre-rendered (per run, per worker, or in a small
//! catalog of payloads), so building an event is a dozen memory copies and no formatting
//! machinery.

use std::fmt::Write as _;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

/// The event types the generator sends, and the ones a search asks for.
pub const EVENT_TYPES: [&str; 4] = [
    "order.created",
    "order.paid",
    "order.shipped",
    "order.refunded",
];
/// The `source` sent with each entry of [`EVENT_TYPES`].
const SOURCES: [&str; 4] = ["checkout", "payments", "fulfillment", "billing"];
/// Index into [`EVENT_TYPES`] by `hash % 10`: 40% created, 30% paid, 20% shipped, 10% refunded.
const TYPE_WEIGHTS: [usize; 10] = [0, 0, 0, 0, 1, 1, 1, 2, 2, 3];
/// How many distinct payload bodies the catalog holds.
const CATALOG_SIZE: usize = 64;
/// A generous estimate of one event's size, to size buffers once.
const EVENT_CAPACITY: usize = 400;

/// Which endpoints a run exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// One event per POST /v1/events
    Single,
    /// --batch-size events per POST /v1/events/batch
    Batch,
    /// Single events (or batches, given --batch-size), plus --search-share of requests
    /// being GET /v1/events searches by event_type
    Mixed,
}

impl Scenario {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::Batch => "batch",
            Self::Mixed => "mixed",
        }
    }
}

/// How ingest requests carry events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingest {
    /// One event per `POST /v1/events`.
    Single,
    /// This many events per `POST /v1/events/batch`.
    Batch(usize),
}

/// The request mix of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mix {
    pub ingest: Ingest,
    /// Share of events (0..=1) that resend an event this worker already sent.
    pub duplicate_share: f64,
    /// Share of requests (0..=1) that are searches instead of ingest.
    pub search_share: f64,
}

/// One request to make, body included.
#[derive(Debug, Clone)]
pub enum Call {
    /// `POST /v1/events` with one event.
    Single(Bytes),
    /// `POST /v1/events/batch` with `events` events.
    Batch { body: Bytes, events: u64 },
    /// `GET /v1/events?event_type=EVENT_TYPES[i]`.
    Search(usize),
}

/// The pre-rendered pieces events are assembled from; shared by all workers.
#[derive(Debug)]
pub struct Catalog {
    /// Per entry of [`EVENT_TYPES`]: from the end of `event_id` to the date of `timestamp`.
    heads: Vec<String>,
    /// Each is the payload object's fields after `order_id`, closing brace included.
    tails: Vec<String>,
}

impl Catalog {
    /// Renders the catalog; deterministic, so every run sends the same kind of data.
    pub fn new() -> Self {
        let heads = EVENT_TYPES
            .iter()
            .zip(SOURCES)
            .map(|(kind, source)| {
                format!(r#"","event_type":"{kind}","source":"{source}","timestamp":"2025-10-02T"#)
            })
            .collect();
        let mut rng = Rng::new(0x5EED_CA7A_1060);
        let tails = (0..CATALOG_SIZE).map(|_| payload_tail(&mut rng)).collect();
        Self { heads, tails }
    }
}

/// A plausible order: a customer and one or two line items, with a matching total.
fn payload_tail(rng: &mut Rng) -> String {
    const CURRENCIES: [&str; 3] = ["EUR", "USD", "GBP"];
    let customer = rng.below(100_000);
    let mut tail = format!(
        r#""customer":{{"id":"cus_{customer:05}","email":"c{customer:05}@example.com"}},"items":["#
    );
    let mut total_cents = 0;
    for item in 0..1 + rng.below(2) {
        let (qty, cents) = (1 + rng.below(3), 299 + rng.below(9_700));
        total_cents += qty * cents;
        if item > 0 {
            tail.push(',');
        }
        let _ = write!(
            tail,
            r#"{{"sku":"SKU-{:04}","qty":{qty},"price":{}.{:02}}}"#,
            rng.below(10_000),
            cents / 100,
            cents % 100
        );
    }
    let _ = write!(
        tail,
        r#"],"currency":"{}","total":{}.{:02}}}"#,
        CURRENCIES[rng.below(CURRENCIES.len() as u64) as usize],
        total_cents / 100,
        total_cents % 100
    );
    tail
}

/// Builds the calls of one worker. Each worker has its own sequence, so event ids never
/// collide between workers and "already sent" is known without coordination.
#[derive(Debug)]
pub struct Generator {
    worker: u32,
    /// `RUN-WORKER-`: what every `event_id` of this worker starts with.
    id_prefix: String,
    /// From the end of the time of day to the sequence number in `order_id`.
    order_prefix: String,
    next_seq: u64,
    mix: Mix,
    rng: Rng,
    catalog: Arc<Catalog>,
    buf: BytesMut,
}

impl Generator {
    pub fn new(run_id: &str, worker: u32, mix: Mix, catalog: Arc<Catalog>) -> Self {
        Self {
            rng: Rng::new(mix64(u64::from(worker) ^ 0xB0A7)),
            worker,
            id_prefix: format!("{run_id}-{worker}-"),
            order_prefix: format!(r#"Z","payload":{{"order_id":"ord-{worker}-"#),
            next_seq: 0,
            mix,
            catalog,
            buf: BytesMut::new(),
        }
    }

    /// The next request to make.
    pub fn next_call(&mut self) -> Call {
        if self.rng.chance(self.mix.search_share) {
            return Call::Search(TYPE_WEIGHTS[self.rng.below(10) as usize]);
        }
        match self.mix.ingest {
            Ingest::Single => Call::Single(self.single()),
            Ingest::Batch(size) => Call::Batch {
                body: self.batch(size),
                events: size as u64,
            },
        }
    }

    /// `{"events": [...]}` with `size` events. Resends are consecutive earlier events from a
    /// random point, all sent in earlier requests, so a batch never holds an event twice.
    fn batch(&mut self, size: usize) -> Bytes {
        let sent_before = self.next_seq;
        let resend_from = if sent_before > 0 {
            self.rng.below(sent_before)
        } else {
            0
        };
        let mut resent = 0;
        self.buf.reserve(16 + size * (EVENT_CAPACITY + 1));
        self.buf.extend_from_slice(b"{\"events\":[");
        for index in 0..size {
            if index > 0 {
                self.buf.extend_from_slice(b",");
            }
            let seq = if resent < sent_before && self.resend() {
                resent += 1;
                (resend_from + resent) % sent_before
            } else {
                self.fresh_seq()
            };
            self.write_event(seq);
        }
        self.buf.extend_from_slice(b"]}");
        self.buf.split().freeze()
    }

    /// One event: a random earlier one with probability `duplicate_share`, else a new one.
    fn single(&mut self) -> Bytes {
        let seq = if self.next_seq > 0 && self.resend() {
            self.rng.below(self.next_seq)
        } else {
            self.fresh_seq()
        };
        self.buf.reserve(EVENT_CAPACITY);
        self.write_event(seq);
        self.buf.split().freeze()
    }

    /// Whether the next event resends an earlier one.
    fn resend(&mut self) -> bool {
        self.rng.chance(self.mix.duplicate_share)
    }

    fn fresh_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Appends event `seq` of this worker; the same `seq` always gives the same bytes.
    fn write_event(&mut self, seq: u64) {
        let hash = mix64((u64::from(self.worker) << 44) ^ seq);
        let head = &self.catalog.heads[TYPE_WEIGHTS[(hash % 10) as usize]];
        let tail = &self.catalog.tails[(hash >> 16) as usize % self.catalog.tails.len()];
        let buf = &mut self.buf;
        buf.extend_from_slice(br#"{"event_id":""#);
        buf.extend_from_slice(self.id_prefix.as_bytes());
        push_number(buf, seq);
        buf.extend_from_slice(head.as_bytes());
        push_time_of_day(buf, seq % 86_400_000);
        buf.extend_from_slice(self.order_prefix.as_bytes());
        push_number(buf, seq);
        buf.extend_from_slice(b"\",");
        buf.extend_from_slice(tail.as_bytes());
        buf.extend_from_slice(b"}");
    }
}

/// Appends `n` in decimal.
fn push_number(buf: &mut BytesMut, mut n: u64) {
    let mut digits = [0; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[start..]);
}

/// Appends `HH:MM:SS.mmm` for a time of day in milliseconds.
fn push_time_of_day(buf: &mut BytesMut, millis: u64) {
    push_padded(buf, millis / 3_600_000, 2);
    buf.extend_from_slice(b":");
    push_padded(buf, millis / 60_000 % 60, 2);
    buf.extend_from_slice(b":");
    push_padded(buf, millis / 1_000 % 60, 2);
    buf.extend_from_slice(b".");
    push_padded(buf, millis % 1_000, 3);
}

/// Appends the last `width` (at most 3) decimal digits of `n`, zero-padded.
fn push_padded(buf: &mut BytesMut, mut n: u64, width: usize) {
    let mut digits = [b'0'; 3];
    for digit in digits[..width].iter_mut().rev() {
        *digit = b'0' + (n % 10) as u8;
        n /= 10;
    }
    buf.extend_from_slice(&digits[..width]);
}

/// A run id: short, and unique enough that two runs never share event ids.
pub fn new_run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64);
    let bits = mix64(nanos ^ (u64::from(std::process::id()) << 32));
    format!("r{:010x}", bits & 0xff_ffff_ffff)
}

/// SplitMix64: tiny, fast and good enough to pick requests; not for anything secret.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }

    /// A number in `0..bound`; `bound` must not be 0.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }

    /// True with probability `share`.
    pub fn chance(&mut self, share: f64) -> bool {
        share > 0.0 && ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < share
    }
}

/// The SplitMix64 finaliser: spreads the bits of `z` over the whole word.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use serde_json::Value;

    use super::*;

    fn generator(ingest: Ingest, duplicate_share: f64, search_share: f64) -> Generator {
        let mix = Mix {
            ingest,
            duplicate_share,
            search_share,
        };
        Generator::new("r0123456789", 7, mix, Arc::new(Catalog::new()))
    }

    fn single_event(generator: &mut Generator) -> Value {
        match generator.next_call() {
            Call::Single(body) => serde_json::from_slice(&body).expect("valid JSON"),
            other => panic!("expected a single event, got {other:?}"),
        }
    }

    #[test]
    fn single_events_are_valid_json_of_about_300_bytes() {
        let mut generator = generator(Ingest::Single, 0.0, 0.0);
        let mut total = 0;
        for _ in 0..1_000 {
            let Call::Single(body) = generator.next_call() else {
                panic!("expected a single event");
            };
            assert!((230..=380).contains(&body.len()), "{} bytes", body.len());
            total += body.len();
            let event: Value = serde_json::from_slice(&body).expect("valid JSON");
            assert!(EVENT_TYPES.contains(&event["event_type"].as_str().unwrap_or_default()));
            assert!(event["payload"]["customer"]["id"].is_string());
            assert!(
                event["payload"]["items"]
                    .as_array()
                    .is_some_and(|items| !items.is_empty())
            );
            assert!(event["payload"]["total"].is_f64());
        }
        let mean = total / 1_000;
        assert!((270..=330).contains(&mean), "mean {mean} bytes");
    }

    #[test]
    fn batches_hold_the_requested_number_of_unique_events() {
        let mut generator = generator(Ingest::Batch(1_000), 0.0, 0.0);
        let mut ids = HashSet::new();
        for _ in 0..3 {
            let Call::Batch { body, events } = generator.next_call() else {
                panic!("expected a batch");
            };
            assert_eq!(events, 1_000);
            let envelope: Value = serde_json::from_slice(&body).expect("valid JSON");
            let batch = envelope["events"].as_array().expect("an events array");
            assert_eq!(batch.len(), 1_000);
            for event in batch {
                let id = event["event_id"].as_str().expect("a string id").to_owned();
                assert!(id.starts_with("r0123456789-7-"), "{id}");
                assert!(ids.insert(id), "ids are unique without duplicates");
            }
        }
    }

    #[test]
    fn duplicates_resend_identical_events_at_the_configured_share() {
        let mut generator = generator(Ingest::Single, 0.25, 0.0);
        let mut seen = std::collections::HashMap::new();
        let mut duplicates = 0;
        for _ in 0..20_000 {
            let event = single_event(&mut generator);
            let id = event["event_id"].as_str().expect("a string id").to_owned();
            match seen.get(&id) {
                Some(first) => {
                    assert_eq!(first, &event, "a resend is the same event");
                    duplicates += 1;
                }
                None => {
                    seen.insert(id, event);
                }
            }
        }
        let share = f64::from(duplicates) / 20_000.0;
        assert!((0.23..=0.27).contains(&share), "duplicate share {share}");
    }

    #[test]
    fn batch_resends_are_earlier_events_and_never_repeat_within_a_batch() {
        let mut generator = generator(Ingest::Batch(500), 0.5, 0.0);
        let mut sent = HashSet::new();
        let mut resent = 0;
        for _ in 0..5 {
            let Call::Batch { body, .. } = generator.next_call() else {
                panic!("expected a batch");
            };
            let envelope: Value = serde_json::from_slice(&body).expect("valid JSON");
            let ids: Vec<String> = envelope["events"]
                .as_array()
                .expect("an events array")
                .iter()
                .filter_map(|event| event["event_id"].as_str().map(str::to_owned))
                .collect();
            let unique: HashSet<&String> = ids.iter().collect();
            assert_eq!(unique.len(), ids.len(), "no event twice in one batch");
            resent += ids.iter().filter(|id| sent.contains(*id)).count();
            sent.extend(ids);
        }
        // The first batch has nothing to resend; the other four resend about half.
        let share = resent as f64 / 2_000.0;
        assert!((0.45..=0.55).contains(&share), "duplicate share {share}");
    }

    #[test]
    fn search_share_is_respected() {
        let mut generator = generator(Ingest::Single, 0.0, 0.1);
        let searches = (0..20_000)
            .filter(|_| matches!(generator.next_call(), Call::Search(_)))
            .count();
        assert!((1_800..=2_200).contains(&searches), "{searches} searches");
    }

    #[test]
    fn numbers_and_times_are_written_like_format_would() {
        let mut buf = BytesMut::new();
        for n in [0, 7, 10, 1_234_567_890, u64::MAX] {
            push_number(&mut buf, n);
            assert_eq!(buf.split().as_ref(), n.to_string().as_bytes());
        }
        push_time_of_day(&mut buf, 86_399_999);
        assert_eq!(buf.split().as_ref(), b"23:59:59.999");
        push_time_of_day(&mut buf, 3_723_004);
        assert_eq!(buf.split().as_ref(), b"01:02:03.004");
    }

    #[test]
    fn run_ids_are_short_and_distinct() {
        let first = new_run_id();
        std::thread::sleep(std::time::Duration::from_millis(1));
        let second = new_run_id();
        assert_eq!(first.len(), 11);
        assert_ne!(first, second);
    }
}
