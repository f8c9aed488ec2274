//! Formatting helpers for the listings: scalar resources summed from their wire form,
//! `allocated/total` ratios, state names and short durations.
//!
//! Sums are computed here from `pb::Resource` lists rather than through
//! `drover_proto::Resources::from_proto`, because that conversion refuses reserved
//! resources (a master feature still to come) and an inspection command must print
//! whatever the master reports instead of failing on it.

use drover_proto::pb::{self, resource::Kind};
use drover_proto::states;

/// Fixed-point scale shared with `drover_proto::resources`: three decimal places, so that
/// summing many `0.1` cpus never prints `0.30000000000000004`.
const MILLI: f64 = 1000.0;

/// The sum of the scalar resource `name` over `list`, in milli-units. Entries of another
/// kind and non-finite values are ignored.
pub fn scalar_milli(list: &[pb::Resource], name: &str) -> i64 {
    list.iter()
        .filter(|r| r.name == name && r.kind == Kind::Scalar as i32 && r.scalar.is_finite())
        .map(|r| (r.scalar * MILLI).round() as i64)
        .fold(0i64, i64::saturating_add)
}

/// A milli-unit amount for people: `4`, `0.5`, `1.25`, `0.001` (never a trailing zero).
pub fn milli(m: i64) -> String {
    let sign = if m < 0 { "-" } else { "" };
    let m = m.unsigned_abs();
    let (whole, frac) = (m / 1000, m % 1000);
    if frac == 0 {
        return format!("{sign}{whole}");
    }
    let frac = format!("{frac:03}");
    format!("{sign}{whole}.{}", frac.trim_end_matches('0'))
}

/// `used/total`, e.g. `0.5/4` cpus or `512/8192` MB.
pub fn ratio(used_milli: i64, total_milli: i64) -> String {
    format!("{}/{}", milli(used_milli), milli(total_milli))
}

/// The scalar `name` of `list`, formatted (`0` when absent).
pub fn scalar(list: &[pb::Resource], name: &str) -> String {
    milli(scalar_milli(list, name))
}

/// Allocated over total for the scalar `name`.
pub fn scalar_ratio(allocated: &[pb::Resource], total: &[pb::Resource], name: &str) -> String {
    ratio(scalar_milli(allocated, name), scalar_milli(total, name))
}

/// An agent state as the operator API names it (`ACTIVE`, `UNREACHABLE`, …).
pub fn agent_state(state: i32) -> &'static str {
    use pb::agent_summary::State;
    match State::try_from(state).unwrap_or(State::Unspecified) {
        State::Unspecified => "UNKNOWN",
        State::Active => "ACTIVE",
        State::Disconnected => "DISCONNECTED",
        State::Unreachable => "UNREACHABLE",
        State::Gone => "GONE",
    }
}

/// A task state for people (`RUNNING`, `FINISHED`, …).
pub fn task_state(state: i32) -> &'static str {
    states::name(states::from_i32(state))
}

/// A duration in whole seconds for people, with the two largest units: `42s`, `5m3s`,
/// `2h1m`, `3d4h`. Negative durations print as `0s`.
pub fn duration(seconds: f64) -> String {
    let s = if seconds.is_finite() && seconds > 0.0 {
        seconds.round() as u64
    } else {
        0
    };
    let (d, h, m, s) = (s / 86_400, s / 3_600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) if s == 0 => format!("{m}m"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, 0) => format!("{h}h"),
        (0, _, _) => format!("{h}h{m}m"),
        (_, 0, _) => format!("{d}d"),
        _ => format!("{d}d{h}h"),
    }
}

/// A framework's role as shown to people: the default role `*` when unset.
pub fn role(role: &str) -> &str {
    if role.is_empty() {
        "*"
    } else {
        role
    }
}

/// An id, or `-` when the message carries none.
pub fn id_or_dash<T: ToString>(id: Option<&T>) -> String {
    match id.map(ToString::to_string) {
        Some(s) if !s.is_empty() => s,
        _ => "-".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_proto::resources::scalar as wire_scalar;

    #[test]
    fn milli_amounts_have_no_trailing_zeros() {
        assert_eq!(milli(4000), "4");
        assert_eq!(milli(500), "0.5");
        assert_eq!(milli(1250), "1.25");
        assert_eq!(milli(1), "0.001");
        assert_eq!(milli(0), "0");
        assert_eq!(milli(-1500), "-1.5");
    }

    #[test]
    fn ratios_of_cpus_and_mem() {
        let total = vec![wire_scalar("cpus", 4.0), wire_scalar("mem", 8192.0)];
        let allocated = vec![wire_scalar("cpus", 0.5), wire_scalar("mem", 512.0)];
        assert_eq!(scalar_ratio(&allocated, &total, "cpus"), "0.5/4");
        assert_eq!(scalar_ratio(&allocated, &total, "mem"), "512/8192");
        assert_eq!(scalar_ratio(&[], &total, "disk"), "0/0");
    }

    #[test]
    fn sums_are_exact_and_skip_other_kinds() {
        let mut list: Vec<pb::Resource> = (0..3).map(|_| wire_scalar("cpus", 0.1)).collect();
        list.push(pb::Resource {
            name: "cpus".into(),
            kind: Kind::Set as i32,
            set: vec!["x".into()],
            ..Default::default()
        });
        list.push(wire_scalar("cpus", f64::NAN));
        assert_eq!(scalar(&list, "cpus"), "0.3");
    }

    #[test]
    fn durations_use_two_units() {
        assert_eq!(duration(-3.0), "0s");
        assert_eq!(duration(42.2), "42s");
        assert_eq!(duration(60.0), "1m");
        assert_eq!(duration(303.0), "5m3s");
        assert_eq!(duration(7_260.0), "2h1m");
        assert_eq!(duration(7_200.0), "2h");
        assert_eq!(duration(3.0 * 86_400.0 + 4.0 * 3_600.0 + 5.0), "3d4h");
        assert_eq!(duration(86_400.0 + 59.0), "1d");
    }

    #[test]
    fn names() {
        assert_eq!(
            agent_state(pb::agent_summary::State::Active as i32),
            "ACTIVE"
        );
        assert_eq!(agent_state(99), "UNKNOWN");
        assert_eq!(task_state(pb::TaskState::TaskRunning as i32), "RUNNING");
        assert_eq!(role(""), "*");
        assert_eq!(role("web"), "web");
        assert_eq!(id_or_dash(Some(&drover_proto::TaskId::new("t1"))), "t1");
        assert_eq!(id_or_dash::<drover_proto::TaskId>(None), "-");
        assert_eq!(id_or_dash(Some(&drover_proto::TaskId::new(""))), "-");
    }
}
