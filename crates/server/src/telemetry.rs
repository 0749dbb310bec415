//! Logging: `tracing` to stderr, as text or JSON lines, filtered by `RUST_LOG` (default
//! `info`).

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber; later calls do nothing.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,fjall=warn,lsm_tree=warn"));
    // Colours only for a person at a terminal: a file or a pipe gets plain text.
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(terminal)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Returns the process's Prometheus recorder, installing it on first use. One per process:
/// every server in it (tests start several) reports into the same registry.
pub fn metrics() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
        let seconds = [
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let events = [
            1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1_000.0, 5_000.0, 10_000.0, 20_000.0,
        ];
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
            .and_then(|builder| {
                builder.set_buckets_for_metric(Matcher::Suffix("_events".into()), &events)
            })
            .expect("bucket lists are non-empty constants")
            .build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first, which this crate never does.
        let _ = metrics::set_global_recorder(recorder);
        pulsestream_api::observe::describe_metrics();
        pulsestream_store::embedded::describe_metrics();
        pulsestream_store::postgres::describe_metrics();
        pulsestream_limits::describe_metrics();
        pulsestream_delivery::describe_metrics();
        metrics::describe_gauge!("pulsestream_build_info", "Always 1; the version is a label");
        metrics::gauge!("pulsestream_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        handle
    })
}
