//! The resource vocabulary and its arithmetic.
//!
//! A [`Resources`] value is a bag of named resources of three kinds:
//! - scalars (`cpus`, `mem` in MB, `disk` in MB, `gpus`, …), held as fixed-point integers
//!   with three decimal places, as Mesos does, so that adding and subtracting never drifts
//!   (`0.1 + 0.2 - 0.3` is exactly zero);
//! - ranges (`ports`), held as sorted, disjoint, coalesced inclusive intervals;
//! - sets, held as sorted sets of strings.
//!
//! Conversion from the wire ([`Resources::from_proto`]) validates everything: a negative,
//! NaN, infinite or absurdly large scalar, an inverted or overlapping range, an unnamed
//! resource or a name used with two kinds is refused with a [`ResourceError`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::pb::{self, resource::Kind};

/// Fixed-point scale: scalars keep three decimal places.
const SCALE: f64 = 1000.0;

/// The largest scalar accepted from the wire (10^12 units: far beyond any real machine,
/// small enough that sums of many of them cannot overflow an `i64` of milli-units).
pub const MAX_SCALAR: f64 = 1e12;

/// Most distinct ranges or set items one resource may carry.
pub const MAX_ITEMS: usize = 65_536;

/// Why a resource description was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    /// A resource without a name cannot be accounted for.
    #[error("resource has no name")]
    Unnamed,
    /// Neither `scalar`, `ranges` nor `set` was given (the resource's name).
    #[error("resource '{0}' has no kind (scalar, ranges or set)")]
    NoKind(String),
    /// A scalar that is NaN, infinite, negative or absurdly large.
    #[error("resource '{name}' has invalid value {value}: {why}")]
    BadScalar {
        /// The resource's name.
        name: String,
        /// The value as given.
        value: String,
        /// Why it was refused.
        why: &'static str,
    },
    /// A range whose begin is after its end.
    #[error("resource '{name}' has an invalid range {begin}-{end}: {why}")]
    BadRange {
        /// The resource's name.
        name: String,
        /// The range's first value.
        begin: u64,
        /// The range's last value (inclusive).
        end: u64,
        /// Why it was refused.
        why: &'static str,
    },
    /// A set item that is the empty string (the resource's name).
    #[error("resource '{0}' has an empty set item")]
    BadSetItem(String),
    /// More than [`MAX_ITEMS`] ranges or set items (the resource's name).
    #[error("resource '{0}' has too many ranges or items")]
    TooLarge(String),
    /// The same name given once as one kind and once as another (the resource's name).
    #[error("resource '{0}' appears with two different kinds")]
    MixedKinds(String),
    /// A reserved resource, which this version does not accept.
    #[error("resource '{name}' is reserved for role '{role}'; reservations are not supported yet")]
    Reserved {
        /// The resource's name.
        name: String,
        /// The role it is reserved for.
        role: String,
    },
}

/// Inclusive, sorted, disjoint, coalesced ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RangeSet(Vec<(u64, u64)>);

impl RangeSet {
    /// Builds a coalesced set from arbitrary inclusive intervals (begin <= end).
    pub fn from_intervals(mut v: Vec<(u64, u64)>) -> Self {
        v.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
        for (b, e) in v {
            match out.last_mut() {
                Some(last) if b <= last.1.saturating_add(1) => last.1 = last.1.max(e),
                _ => out.push((b, e)),
            }
        }
        RangeSet(out)
    }

    /// The intervals, sorted and disjoint.
    pub fn intervals(&self) -> &[(u64, u64)] {
        &self.0
    }

    /// True when the set holds no integer.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of integers in the set.
    pub fn count(&self) -> u64 {
        self.0.iter().map(|(b, e)| e - b + 1).sum()
    }

    /// Every integer in either set.
    pub fn union(&self, other: &RangeSet) -> RangeSet {
        let mut v = self.0.clone();
        v.extend_from_slice(&other.0);
        RangeSet::from_intervals(v)
    }

    /// True when every integer of `other` is in `self`.
    pub fn contains(&self, other: &RangeSet) -> bool {
        other.0.iter().all(|&(b, e)| {
            // Coalesced: a contained interval sits inside exactly one of ours.
            let i = self.0.partition_point(|&(_, end)| end < b);
            self.0.get(i).is_some_and(|&(sb, se)| sb <= b && e <= se)
        })
    }

    /// `self` minus `other`.
    pub fn difference(&self, other: &RangeSet) -> RangeSet {
        let mut out = Vec::new();
        let mut j = 0;
        for &(b, e) in &self.0 {
            let mut cur = b;
            let mut done = false;
            while j < other.0.len() && other.0[j].1 < cur {
                j += 1;
            }
            let mut k = j;
            while k < other.0.len() && other.0[k].0 <= e {
                let (ob, oe) = other.0[k];
                if ob > cur {
                    out.push((cur, ob - 1));
                }
                if oe >= e {
                    done = true;
                    break;
                }
                cur = oe + 1;
                k += 1;
            }
            if !done {
                out.push((cur, e));
            }
        }
        RangeSet(out)
    }

    /// The first `n` integers of the set, or `None` if it holds fewer.
    pub fn first_n(&self, n: u64) -> Option<RangeSet> {
        let mut left = n;
        let mut out = Vec::new();
        for &(b, e) in &self.0 {
            if left == 0 {
                break;
            }
            let len = e - b + 1;
            if len <= left {
                out.push((b, e));
                left -= len;
            } else {
                out.push((b, b + left - 1));
                left = 0;
            }
        }
        (left == 0).then_some(RangeSet(out))
    }
}

/// A bag of resources with exact arithmetic. See the module docs.
///
/// Serializes (serde) as its wire form, a list of `pb::Resource`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(into = "Vec<pb::Resource>", try_from = "Vec<pb::Resource>")]
pub struct Resources {
    scalars: BTreeMap<String, i64>,
    ranges: BTreeMap<String, RangeSet>,
    sets: BTreeMap<String, BTreeSet<String>>,
}

fn to_milli(v: f64) -> i64 {
    (v * SCALE).round() as i64
}

fn from_milli(v: i64) -> f64 {
    v as f64 / SCALE
}

impl Resources {
    /// No resources.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses the `--resources` syntax: `cpus:4;mem:8192;ports:[31000-32000];zones:{a,b}`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut list = Vec::new();
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once(':')
                .ok_or_else(|| format!("'{part}' is not NAME:VALUE"))?;
            let name = name.trim().to_string();
            let value = value.trim();
            if let Some(inner) = value.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
                let mut ranges = Vec::new();
                for r in inner.split(',').map(str::trim).filter(|r| !r.is_empty()) {
                    let (b, e) = r.split_once('-').unwrap_or((r, r));
                    let b: u64 = b.trim().parse().map_err(|_| format!("bad range '{r}'"))?;
                    let e: u64 = e.trim().parse().map_err(|_| format!("bad range '{r}'"))?;
                    ranges.push(pb::ValueRange { begin: b, end: e });
                }
                list.push(pb::Resource {
                    name,
                    kind: Kind::Ranges as i32,
                    ranges,
                    ..Default::default()
                });
            } else if let Some(inner) = value.strip_prefix('{').and_then(|v| v.strip_suffix('}')) {
                list.push(pb::Resource {
                    name,
                    kind: Kind::Set as i32,
                    set: inner
                        .split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect(),
                    ..Default::default()
                });
            } else {
                let v: f64 = value
                    .parse()
                    .map_err(|_| format!("'{value}' is not a number (resource {name})"))?;
                list.push(scalar(&name, v));
            }
        }
        Self::from_proto(&list).map_err(|e| e.to_string())
    }

    /// Converts and validates resources from the wire.
    pub fn from_proto(list: &[pb::Resource]) -> Result<Self, ResourceError> {
        let mut out = Resources::new();
        for r in list {
            if r.name.is_empty() {
                return Err(ResourceError::Unnamed);
            }
            if !(r.role.is_empty() || r.role == "*") {
                return Err(ResourceError::Reserved {
                    name: r.name.clone(),
                    role: r.role.clone(),
                });
            }
            let kind = Kind::try_from(r.kind).unwrap_or(Kind::Unspecified);
            let name = r.name.clone();
            match kind {
                Kind::Unspecified => return Err(ResourceError::NoKind(name)),
                Kind::Scalar => {
                    let v = r.scalar;
                    let why = if v.is_nan() {
                        Some("not a number")
                    } else if v.is_infinite() {
                        Some("infinite")
                    } else if v < 0.0 {
                        Some("negative")
                    } else if v > MAX_SCALAR {
                        Some("absurdly large")
                    } else {
                        None
                    };
                    if let Some(why) = why {
                        return Err(ResourceError::BadScalar {
                            name,
                            value: v.to_string(),
                            why,
                        });
                    }
                    if out.ranges.contains_key(&name) || out.sets.contains_key(&name) {
                        return Err(ResourceError::MixedKinds(name));
                    }
                    out.add_scalar(&name, to_milli(v));
                }
                Kind::Ranges => {
                    if r.ranges.len() > MAX_ITEMS {
                        return Err(ResourceError::TooLarge(name));
                    }
                    let mut iv = Vec::with_capacity(r.ranges.len());
                    for x in &r.ranges {
                        if x.begin > x.end {
                            return Err(ResourceError::BadRange {
                                name,
                                begin: x.begin,
                                end: x.end,
                                why: "begin is after end",
                            });
                        }
                        iv.push((x.begin, x.end));
                    }
                    let set = RangeSet::from_intervals(iv);
                    if out.scalars.contains_key(&name) || out.sets.contains_key(&name) {
                        return Err(ResourceError::MixedKinds(name));
                    }
                    let merged = out
                        .ranges
                        .get(&name)
                        .cloned()
                        .unwrap_or_default()
                        .union(&set);
                    if !merged.is_empty() {
                        out.ranges.insert(name, merged);
                    }
                }
                Kind::Set => {
                    if r.set.len() > MAX_ITEMS {
                        return Err(ResourceError::TooLarge(name));
                    }
                    if r.set.iter().any(|s| s.is_empty()) {
                        return Err(ResourceError::BadSetItem(name));
                    }
                    if out.scalars.contains_key(&name) || out.ranges.contains_key(&name) {
                        return Err(ResourceError::MixedKinds(name));
                    }
                    if !r.set.is_empty() {
                        out.sets
                            .entry(name)
                            .or_default()
                            .extend(r.set.iter().cloned());
                    }
                }
            }
        }
        Ok(out)
    }

    /// Converts to the wire form (unreserved, sorted by name).
    pub fn to_proto(&self) -> Vec<pb::Resource> {
        let mut out = Vec::new();
        for (n, v) in &self.scalars {
            out.push(scalar(n, from_milli(*v)));
        }
        for (n, r) in &self.ranges {
            out.push(pb::Resource {
                name: n.clone(),
                kind: Kind::Ranges as i32,
                ranges: r
                    .0
                    .iter()
                    .map(|&(begin, end)| pb::ValueRange { begin, end })
                    .collect(),
                ..Default::default()
            });
        }
        for (n, s) in &self.sets {
            out.push(pb::Resource {
                name: n.clone(),
                kind: Kind::Set as i32,
                set: s.iter().cloned().collect(),
                ..Default::default()
            });
        }
        out
    }

    fn add_scalar(&mut self, name: &str, milli: i64) {
        if milli == 0 {
            return;
        }
        let e = self.scalars.entry(name.to_string()).or_insert(0);
        *e = e.saturating_add(milli);
        if *e == 0 {
            self.scalars.remove(name);
        }
    }

    /// A bag holding one scalar (zero or negative values give an empty bag).
    pub fn scalar(name: &str, value: f64) -> Self {
        let mut r = Resources::new();
        if value.is_finite() && value > 0.0 {
            r.add_scalar(name, to_milli(value));
        }
        r
    }

    /// A bag holding one ranges resource.
    pub fn ranges(name: &str, intervals: Vec<(u64, u64)>) -> Self {
        let mut r = Resources::new();
        let set = RangeSet::from_intervals(intervals.into_iter().filter(|(b, e)| b <= e).collect());
        if !set.is_empty() {
            r.ranges.insert(name.to_string(), set);
        }
        r
    }

    /// The value of a scalar resource (0 when absent).
    pub fn get_scalar(&self, name: &str) -> f64 {
        self.scalars
            .get(name)
            .map(|v| from_milli(*v))
            .unwrap_or(0.0)
    }

    /// The value of a scalar in milli-units (exact).
    pub fn get_scalar_milli(&self, name: &str) -> i64 {
        self.scalars.get(name).copied().unwrap_or(0)
    }

    /// All scalar names and values, in milli-units.
    pub fn scalars_milli(&self) -> impl Iterator<Item = (&str, i64)> {
        self.scalars.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// The ranges of a ranges resource (empty when absent).
    pub fn get_ranges(&self, name: &str) -> RangeSet {
        self.ranges.get(name).cloned().unwrap_or_default()
    }

    /// The `cpus` scalar (0 when absent).
    pub fn cpus(&self) -> f64 {
        self.get_scalar("cpus")
    }

    /// The `mem` scalar in MB (0 when absent).
    pub fn mem(&self) -> f64 {
        self.get_scalar("mem")
    }

    /// The `disk` scalar in MB (0 when absent).
    pub fn disk(&self) -> f64 {
        self.get_scalar("disk")
    }

    /// True when no resource of any kind is held.
    pub fn is_empty(&self) -> bool {
        self.scalars.is_empty() && self.ranges.is_empty() && self.sets.is_empty()
    }

    /// In-place union/sum.
    pub fn add(&mut self, other: &Resources) {
        for (n, v) in &other.scalars {
            self.add_scalar(n, *v);
        }
        for (n, r) in &other.ranges {
            let merged = self.ranges.get(n).cloned().unwrap_or_default().union(r);
            self.ranges.insert(n.clone(), merged);
        }
        for (n, s) in &other.sets {
            self.sets
                .entry(n.clone())
                .or_default()
                .extend(s.iter().cloned());
        }
    }

    /// `self + other`.
    pub fn plus(&self, other: &Resources) -> Resources {
        let mut r = self.clone();
        r.add(other);
        r
    }

    /// True when `other` fits entirely inside `self`.
    pub fn contains(&self, other: &Resources) -> bool {
        other
            .scalars
            .iter()
            .all(|(n, v)| self.scalars.get(n).copied().unwrap_or(0) >= *v)
            && other
                .ranges
                .iter()
                .all(|(n, r)| self.ranges.get(n).is_some_and(|s| s.contains(r)))
            && other
                .sets
                .iter()
                .all(|(n, s)| self.sets.get(n).is_some_and(|mine| s.is_subset(mine)))
    }

    /// `self - other` if `self` contains `other`, else `None` (nothing changes).
    pub fn checked_sub(&self, other: &Resources) -> Option<Resources> {
        if !self.contains(other) {
            return None;
        }
        let mut r = self.clone();
        r.sub_saturating(other);
        Some(r)
    }

    /// Removes what `other` shares with `self`; whatever `self` lacks is ignored.
    pub fn sub_saturating(&mut self, other: &Resources) {
        for (n, v) in &other.scalars {
            if let Some(mine) = self.scalars.get_mut(n) {
                *mine = (*mine - v).max(0);
                if *mine == 0 {
                    self.scalars.remove(n);
                }
            }
        }
        for (n, r) in &other.ranges {
            if let Some(mine) = self.ranges.get_mut(n) {
                *mine = mine.difference(r);
                if mine.is_empty() {
                    self.ranges.remove(n);
                }
            }
        }
        for (n, s) in &other.sets {
            if let Some(mine) = self.sets.get_mut(n) {
                mine.retain(|x| !s.contains(x));
                if mine.is_empty() {
                    self.sets.remove(n);
                }
            }
        }
    }

    /// Splits `request` off `self`: `Some((taken, rest))` with `taken == request` and
    /// `taken + rest == self`, or `None` when `request` does not fit.
    pub fn split(&self, request: &Resources) -> Option<(Resources, Resources)> {
        let rest = self.checked_sub(request)?;
        Some((request.clone(), rest))
    }

    /// Takes `n` ports from the `ports` ranges, lowest first.
    pub fn take_ports(&self, n: u64) -> Option<Resources> {
        let set = self.ranges.get("ports")?.first_n(n)?;
        let mut r = Resources::new();
        if !set.is_empty() {
            r.ranges.insert("ports".into(), set);
        }
        Some(r)
    }

    /// The individual ports of the `ports` resource.
    pub fn ports(&self) -> Vec<u64> {
        self.ranges
            .get("ports")
            .map(|r| r.0.iter().flat_map(|&(b, e)| b..=e).collect())
            .unwrap_or_default()
    }
}

impl fmt::Display for Resources {
    /// `cpus:1; mem:128; ports:[31000-31001]`, the same syntax `--resources` reads.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (n, v) in &self.scalars {
            parts.push(format!("{n}:{}", from_milli(*v)));
        }
        for (n, r) in &self.ranges {
            let rs: Vec<String> =
                r.0.iter()
                    .map(|(b, e)| {
                        if b == e {
                            b.to_string()
                        } else {
                            format!("{b}-{e}")
                        }
                    })
                    .collect();
            parts.push(format!("{n}:[{}]", rs.join(",")));
        }
        for (n, s) in &self.sets {
            parts.push(format!(
                "{n}:{{{}}}",
                s.iter().cloned().collect::<Vec<_>>().join(",")
            ));
        }
        f.write_str(&parts.join("; "))
    }
}

impl From<Resources> for Vec<pb::Resource> {
    fn from(r: Resources) -> Self {
        r.to_proto()
    }
}

impl TryFrom<Vec<pb::Resource>> for Resources {
    type Error = ResourceError;
    fn try_from(v: Vec<pb::Resource>) -> Result<Self, Self::Error> {
        Resources::from_proto(&v)
    }
}

/// One scalar resource in wire form.
pub fn scalar(name: &str, value: f64) -> pb::Resource {
    pb::Resource {
        name: name.to_string(),
        kind: Kind::Scalar as i32,
        scalar: value,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parse_and_display() {
        let r = Resources::parse("cpus:2.5; mem:1024; ports:[31000-31009,32000]").unwrap();
        assert_eq!(r.cpus(), 2.5);
        assert_eq!(r.mem(), 1024.0);
        assert_eq!(r.get_ranges("ports").count(), 11);
        assert_eq!(Resources::parse(&r.to_string()).unwrap(), r);
        assert!(Resources::parse("cpus:abc").is_err());
        assert!(Resources::parse("cpus:-1").is_err());
    }

    #[test]
    fn fixed_point_has_no_drift() {
        let a = Resources::scalar("cpus", 0.1).plus(&Resources::scalar("cpus", 0.2));
        let b = a.checked_sub(&Resources::scalar("cpus", 0.3)).unwrap();
        assert!(b.is_empty());
    }

    #[test]
    fn validation_refuses_hostile_input() {
        for v in [-1.0, f64::NAN, f64::INFINITY, 1e300] {
            assert!(Resources::from_proto(&[scalar("cpus", v)]).is_err(), "{v}");
        }
        let inverted = pb::Resource {
            name: "ports".into(),
            kind: Kind::Ranges as i32,
            ranges: vec![pb::ValueRange { begin: 10, end: 5 }],
            ..Default::default()
        };
        assert!(Resources::from_proto(&[inverted]).is_err());
        assert!(Resources::from_proto(&[scalar("", 1.0)]).is_err());
        let mut no_kind = scalar("cpus", 1.0);
        no_kind.kind = 0;
        assert!(Resources::from_proto(&[no_kind]).is_err());
        let set = pb::Resource {
            name: "cpus".into(),
            kind: Kind::Set as i32,
            set: vec!["a".into()],
            ..Default::default()
        };
        assert_eq!(
            Resources::from_proto(&[scalar("cpus", 1.0), set]),
            Err(ResourceError::MixedKinds("cpus".into()))
        );
    }

    #[test]
    fn ports_take_lowest_first() {
        let r = Resources::ranges("ports", vec![(100, 101), (200, 205)]);
        let taken = r.take_ports(3).unwrap();
        assert_eq!(taken.ports(), vec![100, 101, 200]);
        assert!(r.take_ports(9).is_none());
        let rest = r.checked_sub(&taken).unwrap();
        assert_eq!(rest.ports(), vec![201, 202, 203, 204, 205]);
    }

    // --- property tests against a naive model: scalars as integers, ranges as a set of
    // --- integers, sets as sets of strings.

    type Naive = (BTreeMap<String, i64>, BTreeMap<String, BTreeSet<u64>>);

    fn naive(r: &Resources) -> Naive {
        let s = r.scalars.clone();
        let g = r
            .ranges
            .iter()
            .map(|(n, rs)| (n.clone(), rs.0.iter().flat_map(|&(b, e)| b..=e).collect()))
            .collect();
        (s, g)
    }

    fn arb_resources() -> impl Strategy<Value = Resources> {
        let scalars = proptest::collection::btree_map(
            prop_oneof![Just("cpus"), Just("mem"), Just("disk"), Just("gpus")],
            0i64..20_000,
            0..4,
        );
        let ranges = proptest::collection::vec((0u64..200, 0u64..20), 0..6);
        let set =
            proptest::collection::btree_set(prop_oneof![Just("a"), Just("b"), Just("c")], 0..3);
        (scalars, ranges, set).prop_map(|(s, r, set)| {
            let mut out = Resources::new();
            for (n, v) in s {
                out.add_scalar(n, v);
            }
            out.add(&Resources::ranges(
                "ports",
                r.into_iter().map(|(b, len)| (b, b + len)).collect(),
            ));
            if !set.is_empty() {
                out.sets
                    .insert("zones".into(), set.into_iter().map(String::from).collect());
            }
            out
        })
    }

    proptest! {
        #[test]
        fn add_then_subtract_is_identity(a in arb_resources(), b in arb_resources()) {
            let sum = a.plus(&b);
            prop_assert!(sum.contains(&a));
            prop_assert!(sum.contains(&b));
            // Ranges and sets are unions, so subtracting b only gives back a when disjoint;
            // scalars always come back exactly.
            let back = sum.checked_sub(&b).unwrap();
            for (n, v) in a.scalars_milli() {
                prop_assert_eq!(back.get_scalar_milli(n), v);
            }
        }

        #[test]
        fn contains_matches_naive(a in arb_resources(), b in arb_resources()) {
            let (sa, ra) = naive(&a);
            let (sb, rb) = naive(&b);
            let expect = sb.iter().all(|(n, v)| sa.get(n).copied().unwrap_or(0) >= *v)
                && rb.iter().all(|(n, s)| ra.get(n).is_some_and(|m| s.is_subset(m)))
                && b.sets.iter().all(|(n, s)| a.sets.get(n).is_some_and(|m| s.is_subset(m)));
            prop_assert_eq!(a.contains(&b), expect);
        }

        #[test]
        fn subtract_matches_naive(a in arb_resources(), b in arb_resources()) {
            let mut got = a.clone();
            got.sub_saturating(&b);
            let (sa, ra) = naive(&a);
            let (sb, rb) = naive(&b);
            let (sg, rg) = naive(&got);
            for (n, v) in &sa {
                let want = (v - sb.get(n).copied().unwrap_or(0)).max(0);
                prop_assert_eq!(sg.get(n).copied().unwrap_or(0), want);
            }
            for (n, s) in &ra {
                let want: BTreeSet<u64> = s.difference(rb.get(n).unwrap_or(&BTreeSet::new())).copied().collect();
                prop_assert_eq!(rg.get(n).cloned().unwrap_or_default(), want);
            }
            // never negative, never grows
            prop_assert!(a.contains(&got));
        }

        #[test]
        fn split_partitions_exactly(a in arb_resources(), b in arb_resources()) {
            match a.split(&b) {
                Some((taken, rest)) => {
                    prop_assert!(a.contains(&b));
                    prop_assert_eq!(&taken, &b);
                    // taken and rest together are a again, and rest shares no port with taken
                    prop_assert_eq!(taken.plus(&rest), a.clone());
                    let overlap = rest.get_ranges("ports").difference(&rest.get_ranges("ports").difference(&taken.get_ranges("ports")));
                    prop_assert!(overlap.is_empty());
                }
                None => prop_assert!(!a.contains(&b)),
            }
        }

        #[test]
        fn proto_round_trip(a in arb_resources()) {
            prop_assert_eq!(Resources::from_proto(&a.to_proto()).unwrap(), a);
        }

        #[test]
        fn rangeset_is_coalesced(v in proptest::collection::vec((0u64..100, 0u64..10), 0..10)) {
            let rs = RangeSet::from_intervals(v.iter().map(|&(b, l)| (b, b + l)).collect());
            for w in rs.intervals().windows(2) {
                prop_assert!(w[0].1 + 1 < w[1].0);
            }
        }
    }
}
