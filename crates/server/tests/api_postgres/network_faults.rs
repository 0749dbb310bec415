//! Network faults between a node and its dependencies, made by the kernel. One node runs in a
//! network namespace the test creates, joined to this host by three veth links: one for its
//! clients and its webhook receiver, one for PostgreSQL and one for Redis (each reached
//! through a TCP forwarder on the host's end of its link, as both listen on 127.0.0.1 only).
//! nftables rules inside the namespace drop every packet of a link — a silent partition, where
//! nothing is refused and every packet just vanishes — or a random share of them. The kernel
//! of these machines is built without `netem` (`CONFIG_NET_SCH_NETEM` is not set), so the
//! latency is added by the forwarder, which holds each chunk before passing it on. A second
//! node on the host keeps its direct path to both and serves the same tenant meanwhile.
//!
//! After each fault heals, the node must serve again without a restart; at the end every
//! acknowledged event is stored exactly once and delivered. Root only (CI runs as root, and
//! installs `nft`): the namespace, its links and its rules are made here and removed at the
//! end, and no other address, interface or rule of the machine is touched.

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::database_faults::{Proxy, database_address, database_url_via};
use crate::harness::{ApiClient, ServerProcess, TestApp, TestStore, TestTenant};
use crate::load::{Answer, Load, Shape};
use crate::receiver::{Behaviour, Receiver, wait_until};

/// Runs a command that must succeed.
fn run(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("{program}: {err}"));
    assert!(
        output.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// One veth link between this host and the namespace.
struct Link {
    host_interface: String,
    namespace_interface: &'static str,
    host_address: String,
    namespace_address: String,
}

/// A network namespace with its three links, removed on drop.
struct Namespace {
    name: String,
    clients: Link,
    postgres: Link,
    redis: Link,
}

impl Namespace {
    /// Makes the namespace, or says why it cannot (fails under CI, skips elsewhere).
    fn create() -> Option<Self> {
        let skip = |why: String| {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
            eprintln!("skipping: {why}");
        };
        if !Command::new("nft")
            .arg("--version")
            .output()
            .is_ok_and(|output| output.status.success())
        {
            skip("`nft` is needed (apt-get install nftables)".into());
            return None;
        }
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let name = format!("pstest-{tag}");
        if let Err(why) = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .map_err(|err| err.to_string())
            .and_then(|output| {
                output
                    .status
                    .success()
                    .then_some(())
                    .ok_or_else(|| String::from_utf8_lossy(&output.stderr).into_owned())
            })
        {
            skip(format!(
                "cannot make a network namespace (root and iproute2): {why}"
            ));
            return None;
        }
        // A /29 of 10.200.0.0/13 that nothing on a test machine uses: three /30 links in it.
        let random = uuid::Uuid::new_v4().as_u128();
        let (second, third) = (200 + (random % 8) as u8, ((random >> 8) % 256) as u8);
        let fourth = ((random >> 16) % 16) as u8 * 16;
        let link = |n: u8, kind: char, inside: &'static str| Link {
            host_interface: format!("ps{kind}{tag}"),
            namespace_interface: inside,
            host_address: format!("10.{second}.{third}.{}", fourth + n * 4 + 1),
            namespace_address: format!("10.{second}.{third}.{}", fourth + n * 4 + 2),
        };
        let namespace = Self {
            clients: link(0, 'c', "clients0"),
            postgres: link(1, 'p', "postgres0"),
            redis: link(2, 'r', "redis0"),
            name,
        };
        run("ip", &["-n", &namespace.name, "link", "set", "lo", "up"]);
        namespace.nft(&["add", "table", "inet", "pstest"]);
        namespace.nft(&[
            "add",
            "chain",
            "inet",
            "pstest",
            "out",
            "{ type filter hook output priority 0; }",
        ]);
        namespace.nft(&[
            "add",
            "chain",
            "inet",
            "pstest",
            "in",
            "{ type filter hook input priority 0; }",
        ]);
        for link in namespace.links() {
            run(
                "ip",
                &[
                    "link",
                    "add",
                    &link.host_interface,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    link.namespace_interface,
                    "netns",
                    &namespace.name,
                ],
            );
            let host = format!("{}/30", link.host_address);
            let inside = format!("{}/30", link.namespace_address);
            run("ip", &["addr", "add", &host, "dev", &link.host_interface]);
            run("ip", &["link", "set", &link.host_interface, "up"]);
            run(
                "ip",
                &[
                    "-n",
                    &namespace.name,
                    "addr",
                    "add",
                    &inside,
                    "dev",
                    link.namespace_interface,
                ],
            );
            run(
                "ip",
                &[
                    "-n",
                    &namespace.name,
                    "link",
                    "set",
                    link.namespace_interface,
                    "up",
                ],
            );
        }
        Some(namespace)
    }

    fn links(&self) -> [&Link; 3] {
        [&self.clients, &self.postgres, &self.redis]
    }

    /// Runs `nft` inside the namespace (its own netfilter tables: the host's are not touched).
    fn nft(&self, rule: &[&str]) {
        let mut args = vec!["netns", "exec", &self.name, "nft"];
        args.extend(rule);
        run("ip", &args);
    }

    /// Drops `percent` of the packets crossing `link`, each way (100: a silent partition).
    fn lose(&self, link: &Link, percent: u8) {
        let percent = percent.to_string();
        for (chain, direction) in [("out", "oifname"), ("in", "iifname")] {
            let mut rule = vec!["add", "rule", "inet", "pstest", chain, direction];
            rule.push(link.namespace_interface);
            if percent != "100" {
                rule.extend(["numgen", "random", "mod", "100", "<", &percent]);
            }
            rule.push("drop");
            self.nft(&rule);
        }
    }

    /// Takes every loss off every link.
    fn heal(&self) {
        for chain in ["out", "in"] {
            self.nft(&["flush", "chain", "inet", "pstest", chain]);
        }
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // The host ends go with their peers when the namespace goes; deleted first anyway, in
        // case a process still holds the namespace open.
        for link in self.links() {
            let _ = Command::new("ip")
                .args(["link", "del", &link.host_interface])
                .output();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

async fn ready(node: &ApiClient) -> StatusCode {
    match node.client.get(node.url("/readyz")).send().await {
        Ok(response) => response.status(),
        Err(_) => StatusCode::BAD_GATEWAY,
    }
}

/// Sends again what got no 2xx (through the steady node), as a client retrying would.
async fn retry_refused(node: &ApiClient, tenant: &TestTenant, answers: &[Answer]) {
    for answer in answers.iter().filter(|answer| !answer.acknowledged()) {
        let response = if answer.batch {
            node.post_batch(tenant, &answer.events).await
        } else {
            node.post_event(tenant, &answer.events[0]).await
        };
        assert!(
            response.status().is_success(),
            "a retry through the steady node: {}",
            response.status()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_partitioned_from_postgres_and_redis_recovers_without_a_restart_and_loses_nothing() {
    let Some(namespace) = Namespace::create() else {
        return;
    };
    let store = TestStore::new().await;
    let database = database_address();
    let postgres = Proxy::listen(&namespace.postgres.host_address, database.clone()).await;
    let redis_url = crate::rate_limits::test_redis_url();
    let redis_address = redis_url
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_owned();
    let redis = Proxy::listen(&namespace.redis.host_address, redis_address).await;
    let prefix = format!("pstest-{}", uuid::Uuid::new_v4().simple());
    let common = [
        "--redis-key-prefix",
        prefix.as_str(),
        "--allow-private-destinations",
        "true",
        "--delivery-retry-base-ms",
        "50",
        "--database-timeout-ms",
        "2000",
    ];
    let mut steady_flags = vec!["--redis-url", redis_url.as_str()];
    steady_flags.extend(common);
    let steady = ServerProcess::start(&store, &steady_flags);

    let via = database_url_via(
        &store,
        &database,
        &format!("{}:{}", namespace.postgres.host_address, postgres.port),
    );
    let url = store.database_url.clone().unwrap();
    let store_args: Vec<String> = store
        .serve_args()
        .into_iter()
        .map(|arg| if arg == url { via.clone() } else { arg })
        .collect();
    let redis_via = format!("redis://{}:{}", namespace.redis.host_address, redis.port);
    let mut cut_flags = vec!["--redis-url", redis_via.as_str()];
    cut_flags.extend(common);
    let cut_off = ServerProcess::start_in_netns(
        &namespace.name,
        &namespace.clients.namespace_address,
        store_args,
        &cut_flags,
    );

    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    steady.wait_ready(&client).await;
    cut_off.wait_ready(&client).await;
    let nodes = [
        TestApp::attach(&steady.base, client.clone()),
        TestApp::attach(&cut_off.base, client.clone()),
    ];
    let tenant = nodes[0].create_tenant().await;
    // Both nodes reach the receiver: it listens on the host's end of the clients' link.
    let receiver = Receiver::start_at(&namespace.clients.host_address, Behaviour::Accept).await;
    let created = client
        .post(nodes[0].url("/v1/destinations"))
        .bearer_auth(&tenant.api_key)
        .json(&json!({"kind": "webhook", "url": receiver.url, "event_types": ["net.*"], "max_attempts": 100}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);

    let shape = Shape {
        single_clients: 1,
        batch_clients: 1,
        batch_size: 10,
        pause: Duration::from_millis(20),
    };
    let steady_load = Load::start(&nodes[0], &tenant, "net.steady", shape);
    let cut_load = Load::start(&nodes[1], &tenant, "net.cut", shape);
    cut_load
        .wait_for_more_acknowledged(50, "the namespaced node serves")
        .await;

    // 1. PostgreSQL partitioned away: every packet dropped, both ways.
    let partitioned = std::time::Instant::now();
    namespace.lose(&namespace.postgres, 100);
    wait_until(
        "the partitioned node says it is not ready",
        Duration::from_secs(20),
        || async { ready(&nodes[1]).await == StatusCode::SERVICE_UNAVAILABLE },
    )
    .await;
    let not_ready_after = partitioned.elapsed();
    steady_load
        .wait_for_more_acknowledged(100, "the other node serves during the partition")
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    namespace.heal();
    let healed = std::time::Instant::now();
    wait_until(
        "the node is ready again after the partition heals, without a restart",
        Duration::from_secs(60),
        || async { ready(&nodes[1]).await == StatusCode::OK },
    )
    .await;
    let ready_after = healed.elapsed();
    cut_load
        .wait_for_more_acknowledged(50, "the node acknowledges again after the partition")
        .await;
    println!(
        "partition from PostgreSQL: /readyz 503 after {not_ready_after:?}; healed: ready after \
         {ready_after:?}, 50 more events acknowledged after {:?}",
        healed.elapsed()
    );

    // 2. Redis partitioned away: the node limits in-process and keeps acknowledging.
    let before_redis = cut_load.answers().len();
    namespace.lose(&namespace.redis, 100);
    cut_load
        .wait_for_more_acknowledged(100, "the node acknowledges without Redis")
        .await;
    namespace.heal();
    let during_redis = &cut_load.answers()[before_redis..];
    let refused: Vec<StatusCode> = during_redis
        .iter()
        .filter(|answer| !answer.acknowledged())
        .map(|answer| answer.status)
        .collect();
    assert!(refused.is_empty(), "refused without Redis: {refused:?}");
    let slowest = during_redis.iter().map(|answer| answer.took).max();
    println!(
        "partition from Redis: {} answers, all 2xx, slowest {slowest:?}",
        during_redis.len()
    );

    // 3. 5 % of packets lost each way, and 100 ms each way (200 ms more per round trip).
    let before_lossy = cut_load.answers().len();
    namespace.lose(&namespace.postgres, 5);
    postgres.set_delay(Duration::from_millis(100));
    cut_load
        .wait_for_more_acknowledged(30, "the node acknowledges over a slow, lossy link")
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let lossy = &cut_load.answers()[before_lossy..];
    let mut took: Vec<Duration> = lossy.iter().map(|answer| answer.took).collect();
    took.sort_unstable();
    println!(
        "lossy, slow link to PostgreSQL: {} answers, {} refused, median {:?}, slowest {:?}",
        lossy.len(),
        lossy.iter().filter(|answer| !answer.acknowledged()).count(),
        took[took.len() / 2],
        took[took.len() - 1]
    );
    namespace.heal();
    postgres.set_delay(Duration::ZERO);
    cut_load
        .wait_for_more_acknowledged(50, "the node acknowledges after the link heals")
        .await;

    let steady_answers = steady_load.stop().await;
    let cut_answers = cut_load.stop().await;
    // The steady node never noticed; the other refused only with 503 and Retry-After.
    for answer in &steady_answers {
        assert!(answer.acknowledged(), "steady node: {}", answer.status);
    }
    for answer in cut_answers.iter().filter(|answer| !answer.acknowledged()) {
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(answer.retry_after, "a 503 without Retry-After");
    }
    let refused = cut_answers
        .iter()
        .filter(|answer| !answer.acknowledged())
        .count();
    println!(
        "network faults: steady node {} answers, all 2xx; partitioned node {} answers, {refused} refused with 503",
        steady_answers.len(),
        cut_answers.len()
    );
    retry_refused(&nodes[0], &tenant, &cut_answers).await;

    // Exactly once: every event sent is stored once (acknowledged, or retried above).
    let sent: HashSet<String> = steady_answers
        .iter()
        .chain(&cut_answers)
        .flat_map(|answer| answer.event_ids().map(str::to_owned))
        .collect();
    let stored = nodes[0]
        .event_id_counts(&tenant, "event_type=net.steady&event_type=net.cut")
        .await;
    let doubled = stored.values().filter(|n| **n > 1).count();
    assert_eq!(doubled, 0, "events stored twice");
    assert_eq!(stored.len(), sent.len(), "stored vs sent");
    assert!(sent.iter().all(|id| stored.contains_key(id)));

    // Deliveries resume: each event reaches the receiver (what the partitioned node had
    // claimed is sent again once its lease runs out).
    wait_until(
        "every stored event is delivered",
        Duration::from_secs(150),
        || async {
            let delivered: HashSet<String> = receiver
                .delivered_events()
                .iter()
                .map(|event| event["event_id"].as_str().unwrap().to_owned())
                .collect();
            sent.iter().all(|id| delivered.contains(id))
        },
    )
    .await;

    // The partitioned node serves on, never restarted.
    let last = crate::harness::event("net-last", "net.cut", json!({}));
    assert_eq!(
        nodes[1].post_event(&tenant, &last).await.status(),
        StatusCode::CREATED
    );
    drop(cut_off);
    drop(steady);
}
