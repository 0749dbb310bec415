//! The `pulsestream` CLI against a real server: every command, what it prints for a person
//! and for scripts (`--output json`), and how it fails (the problem's title and detail on
//! stderr, a non-zero exit code).

use std::time::Duration;

use serde_json::Value;

use crate::harness::{ADMIN_TOKEN, Run, TestApp, TestTenant, pulsestream, tenant_cli};
use crate::receiver::{Behaviour, Receiver, wait_until};

async fn admin(app: &TestApp, args: &[&str]) -> Run {
    pulsestream(
        &app.base,
        args,
        &[("PULSESTREAM_ADMIN_TOKEN", ADMIN_TOKEN)],
        "",
    )
    .await
}

#[tokio::test]
async fn tenant_commands_create_list_get_update_and_manage_keys() {
    let app = TestApp::spawn().await;

    let created = admin(
        &app,
        &[
            "tenant",
            "create",
            "--name",
            "acme",
            "--rate-limit-per-minute",
            "600",
        ],
    )
    .await
    .ok();
    assert!(created.stdout.contains("name        acme"), "{created:#?}");
    assert!(
        created.stdout.contains("600 per minute, burst 600"),
        "{created:#?}"
    );
    assert!(
        created.stdout.contains("shown only this once"),
        "{created:#?}"
    );
    let api_key = created
        .stdout
        .lines()
        .find_map(|line| line.strip_prefix("api key     "))
        .expect("the API key is printed")
        .to_owned();
    let id = created
        .stdout
        .lines()
        .find_map(|line| line.strip_prefix("id"))
        .expect("the id is printed")
        .trim()
        .to_owned();

    let listed = admin(&app, &["tenant", "list"]).await.ok();
    let header = listed.stdout.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("ID") && header.contains("PER MINUTE"),
        "{listed:#?}"
    );
    assert!(
        listed.stdout.contains(&id) && listed.stdout.contains("acme"),
        "{listed:#?}"
    );
    let as_json = admin(&app, &["tenant", "list", "--output", "json"])
        .await
        .ok()
        .json();
    assert_eq!(as_json["tenants"][0]["id"], id.as_str());

    let updated = admin(
        &app,
        &[
            "tenant",
            "update",
            &id,
            "--name",
            "acme inc",
            "--rate-limit-per-minute",
            "1200",
        ],
    )
    .await
    .ok();
    assert!(
        updated.stdout.contains("1200 per minute, burst 1200"),
        "{updated:#?}"
    );
    // `--output` is global: accepted before the subcommand too.
    let read = admin(&app, &["tenant", "--output", "json", "get", &id])
        .await
        .ok()
        .json();
    assert_eq!(read["name"], "acme inc");

    let added = admin(&app, &["tenant", "add-key", &id, "--output", "json"])
        .await
        .ok()
        .json();
    let second_key = added["api_key"].as_str().unwrap().to_owned();
    let key_id = added["id"].as_str().unwrap().to_owned();
    let second = TestTenant {
        id: id.clone(),
        api_key: second_key,
    };
    tenant_cli(&app, &second, &["events", "search"], "")
        .await
        .ok();

    let revoked = admin(&app, &["tenant", "revoke-key", &id, &key_id])
        .await
        .ok();
    assert_eq!(revoked.stdout.trim(), format!("revoked key {key_id}"));
    let refused = tenant_cli(&app, &second, &["events", "search"], "")
        .await
        .failed();
    assert!(refused.stderr.contains("(401)"), "{refused:#?}");
    let first = TestTenant {
        id: id.clone(),
        api_key,
    };
    tenant_cli(&app, &first, &["events", "search"], "")
        .await
        .ok();
}

#[tokio::test]
async fn refusals_print_the_problem_and_exit_non_zero() {
    let app = TestApp::spawn().await;
    let missing = admin(
        &app,
        &["tenant", "get", "0190a8c4-0000-7000-8000-000000000000"],
    )
    .await
    .failed();
    assert!(
        missing
            .stderr
            .starts_with("error: Not found (404): no tenant with id"),
        "{missing:#?}"
    );

    let created = admin(
        &app,
        &["tenant", "create", "--name", "x", "--output", "json"],
    )
    .await
    .ok()
    .json();
    let id = created["id"].as_str().unwrap();
    let invalid = admin(&app, &["tenant", "update", id, "--burst", "0"])
        .await
        .failed();
    assert!(invalid.stderr.contains("(422)"), "{invalid:#?}");
    assert!(
        invalid.stderr.contains("  body.burst: must be at least 1"),
        "each field error with its location: {invalid:#?}"
    );
    // Scripts get the problem document on stdout.
    let as_json = admin(
        &app,
        &["tenant", "update", id, "--burst", "0", "--output", "json"],
    )
    .await
    .failed()
    .json();
    assert_eq!(as_json["status"], 422);

    let wrong_token = pulsestream(
        &app.base,
        &["tenant", "list"],
        &[("PULSESTREAM_ADMIN_TOKEN", "not-the-token")],
        "",
    )
    .await
    .failed();
    assert!(wrong_token.stderr.contains("(401)"), "{wrong_token:#?}");

    let no_token = pulsestream(&app.base, &["tenant", "list"], &[], "")
        .await
        .failed();
    assert!(
        no_token.stderr.contains("set PULSESTREAM_ADMIN_TOKEN"),
        "{no_token:#?}"
    );

    let port = crate::harness::free_port();
    let unreachable = pulsestream(
        &format!("http://127.0.0.1:{port}"),
        &["tenant", "list"],
        &[("PULSESTREAM_ADMIN_TOKEN", ADMIN_TOKEN)],
        "",
    )
    .await
    .failed();
    assert!(
        unreachable.stderr.contains("failed to reach the server"),
        "{unreachable:#?}"
    );
}

#[tokio::test]
async fn events_commands_send_one_or_ndjson_search_and_get() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant().await;

    // The same event twice, its payload's keys in another order the second time.
    let send_order = |payload: &'static str| {
        let args = [
            "events",
            "send",
            "--type",
            "order.created",
            "--event-id",
            "o-1",
            "--source",
            "cli",
            "--payload",
            payload,
        ];
        let (app, tenant) = (&app, &tenant);
        async move { tenant_cli(app, tenant, &args, "").await }
    };
    let sent = send_order(r#"{"total": 10, "plan": "pro"}"#).await.ok();
    let id = sent
        .stdout
        .trim()
        .strip_prefix("stored ")
        .unwrap_or_else(|| panic!("{sent:#?}"))
        .to_owned();
    let again = send_order(r#"{"plan": "pro", "total": 10}"#).await.ok();
    assert_eq!(again.stdout.trim(), format!("duplicate of {id}"));
    let conflict = tenant_cli(
        &app,
        &tenant,
        &[
            "events",
            "send",
            "--type",
            "order.created",
            "--event-id",
            "o-1",
        ],
        "",
    )
    .await
    .failed();
    assert!(conflict.stderr.contains("(409)"), "{conflict:#?}");

    // NDJSON from stdin: three lines, one invalid.
    let ndjson = [
        r#"{"event_type": "page.viewed", "payload": {"n": 1}}"#,
        r#"{"payload": {"n": 2}}"#,
        r#"{"event_type": "page.viewed", "payload": {"n": 3}}"#,
    ]
    .join("\n");
    let batch = tenant_cli(&app, &tenant, &["events", "send", "--file", "-"], &ndjson)
        .await
        .failed();
    assert!(
        batch
            .stdout
            .contains("line 2: rejected: body.1.event_type: field required"),
        "{batch:#?}"
    );
    assert!(
        batch
            .stdout
            .contains("sent 3 events: 2 stored, 0 duplicates, 0 conflicts, 1 rejected"),
        "{batch:#?}"
    );
    assert!(
        batch.stderr.contains("1 of 3 events were not stored"),
        "{batch:#?}"
    );

    // More than one batch: 2,500 lines go as three requests.
    let many: String = (0..2_500)
        .map(|i| format!("{{\"event_id\": \"bulk-{i}\", \"event_type\": \"bulk\"}}\n"))
        .collect();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &many).unwrap();
    let path = file.path().display().to_string();
    let bulk = tenant_cli(&app, &tenant, &["events", "send", "--file", &path], "")
        .await
        .ok();
    assert!(
        bulk.stdout.contains("sent 2500 events: 2500 stored"),
        "{bulk:#?}"
    );
    let resent = tenant_cli(&app, &tenant, &["events", "send", "--file", &path], "")
        .await
        .ok();
    assert!(
        resent.stdout.contains("0 stored, 2500 duplicates"),
        "{resent:#?}"
    );

    let found = tenant_cli(
        &app,
        &tenant,
        &[
            "events",
            "search",
            "--type",
            "order.created",
            "--payload",
            "total=10",
        ],
        "",
    )
    .await
    .ok();
    let lines: Vec<&str> = found.stdout.lines().collect();
    assert!(
        lines[0].starts_with("TIMESTAMP") && lines[0].contains("PAYLOAD"),
        "{found:#?}"
    );
    assert_eq!(lines.len(), 2, "{found:#?}");
    assert!(
        lines[1].contains(&id) && lines[1].contains("cli"),
        "{found:#?}"
    );

    let paged = tenant_cli(
        &app,
        &tenant,
        &["events", "search", "--type", "page.viewed", "--limit", "1"],
        "",
    )
    .await
    .ok();
    assert!(paged.stdout.contains("more: --cursor "), "{paged:#?}");
    let all = tenant_cli(
        &app,
        &tenant,
        &[
            "events", "search", "--type", "bulk", "--limit", "1000", "--all", "--output", "json",
        ],
        "",
    )
    .await
    .ok();
    let pages: Vec<Value> = all
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(pages.len(), 3, "one JSON document per page");
    let total: usize = pages
        .iter()
        .map(|page| page["events"].as_array().unwrap().len())
        .sum();
    assert_eq!(total, 2_500);

    let shown = tenant_cli(&app, &tenant, &["events", "get", &id], "")
        .await
        .ok();
    assert!(
        shown.stdout.contains("type       order.created"),
        "{shown:#?}"
    );
    assert!(shown.stdout.contains("\"plan\": \"pro\""), "{shown:#?}");
}

#[tokio::test]
async fn destination_commands_create_list_get_dead_letters_replay_delete() {
    let app = TestApp::spawn_with(|config| {
        config.allow_private_destinations = true;
        config.delivery_retry_base_ms = 10;
    })
    .await;
    let tenant = app.create_tenant().await;
    let receiver = Receiver::start(Behaviour::AlwaysFail(400)).await;

    let created = tenant_cli(
        &app,
        &tenant,
        &[
            "destination",
            "create",
            "--kind",
            "webhook",
            "--url",
            &receiver.url,
            "--event-type",
            "order.*,user.signup",
            "--max-attempts",
            "1",
            "--output",
            "json",
        ],
        "",
    )
    .await
    .ok()
    .json();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));

    let listed = tenant_cli(&app, &tenant, &["destination", "list"], "")
        .await
        .ok();
    assert!(listed.stdout.contains(&id), "{listed:#?}");
    assert!(listed.stdout.contains("order.*,user.signup"), "{listed:#?}");

    tenant_cli(
        &app,
        &tenant,
        &[
            "events",
            "send",
            "--type",
            "order.created",
            "--event-id",
            "dl-1",
        ],
        "",
    )
    .await
    .ok();
    wait_until(
        "the event is dead-lettered",
        Duration::from_secs(20),
        || async {
            tenant_cli(
                &app,
                &tenant,
                &["destination", "get", &id, "--output", "json"],
                "",
            )
            .await
            .json()["dead_lettered"]
                == 1
        },
    )
    .await;
    let shown = tenant_cli(&app, &tenant, &["destination", "get", &id], "")
        .await
        .ok();
    assert!(shown.stdout.contains("dead letters  1"), "{shown:#?}");
    assert!(shown.stdout.contains("last error"), "{shown:#?}");

    let letters = tenant_cli(&app, &tenant, &["destination", "dead-letters", &id], "")
        .await
        .ok();
    let lines: Vec<&str> = letters.stdout.lines().collect();
    assert!(
        lines[0].starts_with("EVENT") && lines[0].contains("LAST ERROR"),
        "{letters:#?}"
    );
    assert_eq!(lines.len(), 2, "{letters:#?}");

    let replayed = tenant_cli(&app, &tenant, &["destination", "replay", &id], "")
        .await
        .ok();
    assert_eq!(replayed.stdout.trim(), "replayed 1 dead letters");
    assert!(receiver.delivered_events().is_empty());

    let deleted = tenant_cli(&app, &tenant, &["destination", "delete", &id], "")
        .await
        .ok();
    assert_eq!(deleted.stdout.trim(), format!("deleted destination {id}"));
    let gone = tenant_cli(&app, &tenant, &["destination", "get", &id], "")
        .await
        .failed();
    assert!(gone.stderr.contains("Not found (404)"), "{gone:#?}");

    let bad = tenant_cli(
        &app,
        &tenant,
        &[
            "destination",
            "create",
            "--kind",
            "webhook",
            "--url",
            "ftp://example.com",
        ],
        "",
    )
    .await
    .failed();
    assert!(
        bad.stderr.contains("(422)") && bad.stderr.contains("body.url"),
        "{bad:#?}"
    );
}

#[tokio::test]
async fn destination_create_takes_brokers_tables_filters_and_ordering() {
    let app = TestApp::spawn_with(|config| config.allow_private_destinations = true).await;
    let tenant = app.create_tenant().await;
    let created = tenant_cli(
        &app,
        &tenant,
        &[
            "destination",
            "create",
            "--kind",
            "postgres",
            "--url",
            "postgres://writer:hunter2@db.example:5432/warehouse",
            "--table",
            "analytics.events",
            "--create-table",
            "--column",
            "id=event_uuid,source=",
            "--filter",
            "source=web",
            "--filter",
            "payload.plan=pro",
            "--ordering",
            "payload.user_id",
        ],
        "",
    )
    .await
    .ok();
    let out = &created.stdout;
    for expected in [
        "kind          postgres",
        "target        postgres://writer@db.example:5432/warehouse table analytics.events",
        "filter        payload.plan=pro source=web",
        "ordering      payload.user_id",
    ] {
        assert!(out.contains(expected), "{expected:?} in\n{out}");
    }
    assert!(!out.contains("hunter2"), "{out}");
    let id = out
        .lines()
        .find_map(|line| line.strip_prefix("id"))
        .unwrap()
        .trim()
        .to_owned();
    let shown = tenant_cli(
        &app,
        &tenant,
        &["destination", "get", &id, "--output", "json"],
        "",
    )
    .await
    .json();
    assert_eq!(shown["columns"]["id"], "event_uuid");
    assert_eq!(shown["columns"]["source"], Value::Null);
    assert_eq!(shown["create_table"], true);

    let amqp = tenant_cli(
        &app,
        &tenant,
        &[
            "destination",
            "create",
            "--kind",
            "amqp",
            "--url",
            "amqp://guest:guest@broker.example:5672/%2f",
            "--exchange",
            "events",
            "--routing-key",
            "ps.{event_type}",
        ],
        "",
    )
    .await
    .ok();
    assert!(
        amqp.stdout.contains(
            "amqp://guest@broker.example:5672/%2f exchange \"events\" key ps.{event_type}"
        ),
        "{amqp:#?}"
    );
    let bad = tenant_cli(
        &app,
        &tenant,
        &[
            "destination",
            "create",
            "--kind",
            "mqtt",
            "--url",
            "mqtt://broker.example",
            "--topic",
            "t",
            "--filter",
            "colour=red",
        ],
        "",
    )
    .await
    .failed();
    assert!(bad.stderr.contains("body.filter.colour"), "{bad:#?}");
}
