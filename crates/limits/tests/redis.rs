//! The Redis limiter against the real Redis (127.0.0.1:6379, or PULSESTREAM_TEST_REDIS_URL).
//! Each test uses its own key prefix. Without Redis these tests fail: they never skip.

use pulsestream_core::{RateLimit, TenantId};
use pulsestream_limits::{Backend, Bucket, RateLimiter, RedisSettings, decide};

fn settings() -> RedisSettings {
    let url = std::env::var("PULSESTREAM_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mut settings = RedisSettings::new(url);
    settings.key_prefix = format!("pulsestream-test-{}", TenantId::random());
    settings.timeout = std::time::Duration::from_millis(500);
    settings
}

#[tokio::test]
async fn two_nodes_on_one_redis_share_one_budget() {
    let settings = settings();
    let first_node = RateLimiter::with_redis(settings.clone()).unwrap();
    let second_node = RateLimiter::with_redis(settings).unwrap();
    let tenant = TenantId::random();
    let limit = RateLimit::new(100, None).unwrap();

    let mut admitted = 0;
    for i in 0..150 {
        let node = if i % 2 == 0 {
            &first_node
        } else {
            &second_node
        };
        admitted += u32::from(node.admit(tenant, limit, 1).await.allowed);
    }

    assert_eq!(
        first_node.backend(),
        Backend::Redis,
        "Redis must be reachable for this test"
    );
    assert!((100..=102).contains(&admitted), "{admitted} admitted");
}

#[tokio::test]
async fn the_script_decides_like_the_in_process_algorithm() {
    let limiter = RateLimiter::with_redis(settings()).unwrap();
    let tenant = TenantId::random();
    let limit = RateLimit::new(600, Some(20)).unwrap();

    let first = limiter.admit(tenant, limit, 15).await;
    let too_many = limiter.admit(tenant, limit, 10).await;
    let peek = limiter.admit(tenant, limit, 0).await;

    assert_eq!(limiter.backend(), Backend::Redis);
    let (expected, tat) = decide(limit, Bucket::default(), 1_000_000_000, 15);
    assert_eq!(
        (first.allowed, first.remaining),
        (expected.allowed, expected.remaining)
    );
    let (expected, _) = decide(limit, tat, 1_000_000_000, 10);
    assert!(!too_many.allowed && !expected.allowed);
    assert!(
        too_many.retry_after_micros > 400_000 && too_many.retry_after_micros <= 500_000,
        "{too_many:?}"
    );
    assert_eq!(peek.remaining, 5);
    assert!(peek.allowed);
}

#[tokio::test]
async fn an_unreachable_redis_falls_back_at_once_and_keeps_limiting() {
    let mut settings = settings();
    settings.url = "redis://127.0.0.1:1".into();
    settings.timeout = std::time::Duration::from_millis(100);
    let limiter = RateLimiter::with_redis(settings).unwrap();
    let tenant = TenantId::random();
    let limit = RateLimit::new(60, Some(3)).unwrap();

    let started = std::time::Instant::now();
    let decisions: Vec<bool> = admit_four(&limiter, tenant, limit).await;

    assert_eq!(decisions, [true, true, true, false]);
    assert_eq!(limiter.backend(), Backend::LocalFallback);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "no decision hangs"
    );
}

async fn admit_four(limiter: &RateLimiter, tenant: TenantId, limit: RateLimit) -> Vec<bool> {
    let mut out = Vec::new();
    for _ in 0..4 {
        out.push(limiter.admit(tenant, limit, 1).await.allowed);
    }
    out
}
