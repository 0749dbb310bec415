//! How long `NewEvent::from_json` takes per event: the validation every ingested event goes
//! through (parse, field rules, the payload scan, the content hash). Run in release mode:
//! `cargo run --release -p pulsestream-core --example validate`. For counts that do not move
//! with the machine's load: `ROUNDS=2000 valgrind --tool=callgrind target/release/examples/validate`.

use std::time::Instant;

use pulsestream_core::NewEvent;

fn main() {
    // The benchmark's order event (~330 bytes), and a wider one: 40 keys in three objects.
    let order = r#"{"event_id":"run-1-000042","event_type":"order.created","source":"checkout","timestamp":"2025-10-02T12:00:00Z","payload":{"order_id":"ord_000042","customer":{"id":"cus_01234","email":"c01234@example.com"},"items":[{"sku":"SKU-0042","qty":2,"price":12.99},{"sku":"SKU-0777","qty":1,"price":5.49}],"currency":"EUR","total":31.47}}"#;
    let fields: Vec<String> = (0..40)
        .map(|i| format!(r#""field_{i}":{{"a":{i},"b":"value {i}"}}"#))
        .collect();
    let wide = format!(
        r#"{{"event_id":"w-1","event_type":"profile.updated","payload":{{{}}}}}"#,
        fields.join(",")
    );
    let only = std::env::var("CASE").ok();
    for (name, json) in [("order", order), ("wide", wide.as_str())] {
        if only.as_deref().is_some_and(|only| only != name) {
            continue;
        }
        assert!(NewEvent::from_json(json).is_ok(), "{name} is valid");
        let rounds: u32 = std::env::var("ROUNDS")
            .ok()
            .and_then(|rounds| rounds.parse().ok())
            .unwrap_or(200_000);
        let mut best = f64::MAX;
        for _ in 0..if rounds < 10_000 { 1 } else { 5 } {
            let started = Instant::now();
            for _ in 0..rounds {
                std::hint::black_box(NewEvent::from_json(std::hint::black_box(json)).ok());
            }
            best = best.min(started.elapsed().as_nanos() as f64 / rounds as f64);
        }
        println!(
            "{name}: {} bytes, {best:.0} ns per event (best of 5)",
            json.len()
        );
    }
}
