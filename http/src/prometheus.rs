//! Prometheus text for `/metrics` (and the master's `Operator.GetMetrics`).
//!
//! Both daemons keep their metrics in a `prometheus-client` [`Registry`]. Rendering uses the
//! crate's Prometheus text encoder (format 0.0.4), not its OpenMetrics one: that format is
//! what `/metrics` has always served, and in it a counter's `# HELP` and `# TYPE` lines
//! carry the same `…_total` name as its samples. Two conventions of the crate matter to
//! whoever registers a metric:
//! - a counter is registered without its `_total` suffix; the encoder appends it, so
//!   `register("drover_agent_registrations", …)` serves `drover_agent_registrations_total`;
//! - the help text is registered without its final period; the registry appends one.

use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::prometheus_text;
use prometheus_client::registry::Registry;

/// The `Content-Type` of the Prometheus text format, version 0.0.4.
pub const TEXT_CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// `registry` in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail, and a collector fails only when its writer does.
    prometheus_text::encode(&mut out, registry).expect("encoding metrics into a String");
    out
}

/// A `200` carrying `text`, rendered by [`render`], with the format's content type.
pub fn response(text: String) -> Response {
    ([(CONTENT_TYPE, TEXT_CONTENT_TYPE)], text).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::histogram::Histogram;

    /// The conventions the module doc promises, on the crate version in use.
    #[test]
    fn counters_gain_total_and_help_gains_a_period() {
        let mut registry = Registry::default();
        let counter: Counter = Counter::default();
        registry.register("drover_test_things", "Things seen", counter.clone());
        counter.inc_by(3);
        let histogram = Histogram::new([0.0001, 0.5, 1.0]);
        registry.register("drover_test_seconds", "Time taken", histogram.clone());
        histogram.observe(0.25);
        assert_eq!(
            render(&registry),
            "# HELP drover_test_things_total Things seen.\n\
             # TYPE drover_test_things_total counter\n\
             drover_test_things_total 3\n\
             # HELP drover_test_seconds Time taken.\n\
             # TYPE drover_test_seconds histogram\n\
             drover_test_seconds_bucket{le=\"0.0001\"} 0\n\
             drover_test_seconds_bucket{le=\"0.5\"} 1\n\
             drover_test_seconds_bucket{le=\"1\"} 1\n\
             drover_test_seconds_bucket{le=\"+Inf\"} 1\n\
             drover_test_seconds_sum 0.25\n\
             drover_test_seconds_count 1\n"
        );
    }
}
