//! The backbone server's metrics, served at `GET /metrics` in the Prometheus (OpenMetrics)
//! text format by the `prometheus-client` crate: sessions alive and opened, KV blocks used and free, rows and
//! sessions per batched pass, time queued before a pass, pass time, rows run (their rate is
//! the server's tokens per second), refusals and KV cache evictions.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The server's instruments; cheap to update from the scheduler and the handlers.
pub struct Metrics {
    registry: Registry,
    pub sessions: Gauge,
    pub sessions_opened: Counter,
    pub kv_blocks: Family<Vec<(String, String)>, Gauge>,
    pub batch_rows: Histogram,
    pub batch_sessions: Histogram,
    pub queue_wait: Histogram,
    pub pass_seconds: Histogram,
    pub rows: Family<Vec<(String, String)>, Counter>,
    pub refused: Family<Vec<(String, String)>, Counter>,
    pub evictions: Counter,
}

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every instrument under the `shadowpeft` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("shadowpeft");
        let sessions = Gauge::default();
        let sessions_opened = Counter::default();
        let kv_blocks = Family::<Vec<(String, String)>, Gauge>::default();
        let batch_rows = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        let batch_sessions = Histogram::new(exponential_buckets(1.0, 2.0, 8));
        let queue_wait = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let pass_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let rows = Family::<Vec<(String, String)>, Counter>::default();
        let refused = Family::<Vec<(String, String)>, Counter>::default();
        let evictions = Counter::default();
        registry.register("sessions", "Sessions alive", sessions.clone());
        registry.register(
            "sessions_opened",
            "Sessions opened (clients rebuilding lost sessions open new ones)",
            sessions_opened.clone(),
        );
        registry.register(
            "kv_blocks",
            "KV cache blocks by state (used, free)",
            kv_blocks.clone(),
        );
        registry.register(
            "batch_rows",
            "Rows (tokens) per batched base pass",
            batch_rows.clone(),
        );
        registry.register(
            "batch_sessions",
            "Sessions per batched base pass",
            batch_sessions.clone(),
        );
        registry.register(
            "queue_wait_seconds",
            "Time a request waited in the queue before its first pass",
            queue_wait.clone(),
        );
        registry.register(
            "pass_seconds",
            "Time of one batched base pass, read-back included",
            pass_seconds.clone(),
        );
        registry.register(
            "rows",
            "Rows run through the base by kind (fused, stepped, embed); rate() is tokens per second",
            rows.clone(),
        );
        registry.register(
            "refused",
            "Requests refused with 429 by reason (kv_blocks, sessions)",
            refused.clone(),
        );
        registry.register(
            "kv_evictions",
            "Sessions whose KV cache was dropped for an older session's (the client rebuilds them)",
            evictions.clone(),
        );
        Metrics {
            registry,
            sessions,
            sessions_opened,
            kv_blocks,
            batch_rows,
            batch_sessions,
            queue_wait,
            pass_seconds,
            rows,
            refused,
            evictions,
        }
    }

    /// A labelled instrument's label set.
    pub fn label(key: &str, value: &str) -> Vec<(String, String)> {
        vec![(key.to_string(), value.to_string())]
    }

    /// Counts one 429 for `reason`.
    pub fn refuse(&self, reason: &str) {
        self.refused
            .get_or_create(&Self::label("reason", reason))
            .inc();
    }

    /// The text exposition, after setting the KV gauges to `used` and `free` blocks.
    pub fn render(&self, used: usize, free: usize) -> String {
        self.kv_blocks
            .get_or_create(&Self::label("state", "used"))
            .set(used as i64);
        self.kv_blocks
            .get_or_create(&Self::label("state", "free"))
            .set(free as i64);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
