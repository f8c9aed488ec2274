//! Percentiles over samples.

use std::time::Duration;

/// The `p` quantile (0..=1) of `samples` in milliseconds, nearest rank; NaN when empty.
pub fn pct_ms(samples: &[Duration], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut s = samples.to_vec();
    s.sort();
    let i = ((s.len() as f64 - 1.0) * p.clamp(0.0, 1.0)).round() as usize;
    s[i].as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(pct_ms(&v, 0.5).round(), 51.0);
        assert_eq!(pct_ms(&v, 0.99).round(), 99.0);
        assert_eq!(pct_ms(&v, 1.0).round(), 100.0);
        assert!(pct_ms(&[], 0.5).is_nan());
    }
}
