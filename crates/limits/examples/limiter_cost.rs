//! The cost of one rate-limit decision, in-process and in Redis, for BENCHMARKS.md.
//!
//! `cargo run --release -p pulsestream-limits --example limiter_cost -- [redis://127.0.0.1:6379]`

use std::time::Instant;

use pulsestream_core::{RateLimit, TenantId};
use pulsestream_limits::{Backend, RateLimiter, RedisSettings};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let limit = RateLimit::new(u32::MAX / 2, Some(u32::MAX / 2)).expect("a valid limit");
    let tenants: Vec<TenantId> = (0..100).map(|_| TenantId::random()).collect();

    let local = RateLimiter::local();
    measure("local", &local, &tenants, limit, 1_000_000).await;

    let mut settings = RedisSettings::new(url);
    settings.key_prefix = format!("pulsestream-bench-{}", TenantId::random());
    settings.timeout = std::time::Duration::from_secs(1);
    let redis = RateLimiter::with_redis(settings).expect("a Redis URL");
    measure("redis", &redis, &tenants, limit, 50_000).await;
    assert_eq!(
        redis.backend(),
        Backend::Redis,
        "Redis answered every decision"
    );
}

async fn measure(
    name: &str,
    limiter: &RateLimiter,
    tenants: &[TenantId],
    limit: RateLimit,
    decisions: usize,
) {
    // Warm up: connection, script load, map entries.
    for tenant in tenants {
        limiter.admit(*tenant, limit, 1).await;
    }
    let mut samples = Vec::with_capacity(decisions);
    let started = Instant::now();
    for i in 0..decisions {
        let at = Instant::now();
        let decision = limiter.admit(tenants[i % tenants.len()], limit, 1).await;
        samples.push(at.elapsed().as_nanos() as u64);
        assert!(decision.allowed);
    }
    let total = started.elapsed();
    samples.sort_unstable();
    let pick = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize] as f64 / 1_000.0;
    println!(
        "{name}: {decisions} decisions in {:.2}s, {:.0}/s, per decision p50 {:.2} µs, p99 {:.2} µs",
        total.as_secs_f64(),
        decisions as f64 / total.as_secs_f64(),
        pick(0.5),
        pick(0.99)
    );
}
