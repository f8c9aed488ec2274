//! Offer matching: what one task needs ([`TaskRequest`]) and packing a queue of pending
//! tasks onto offers ([`OfferPacker`]) without ever overcommitting an offer.

use std::collections::VecDeque;
use std::fmt;

use drover_proto::pb;
use drover_proto::{OfferId, Resources};
use tracing::warn;

/// What one task needs: scalars plus a number of ports, which are picked from each
/// offer's `ports` ranges (lowest first) when the task is placed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TaskRequest {
    /// CPUs (fractions allowed, kept to three decimals).
    pub cpus: f64,
    /// Memory in MB.
    pub mem: f64,
    /// Disk in MB.
    pub disk: f64,
    /// Number of ports.
    pub ports: u64,
}

impl TaskRequest {
    /// A request for `cpus` and `mem` (MB), no disk and no ports.
    pub fn new(cpus: f64, mem: f64) -> TaskRequest {
        TaskRequest {
            cpus,
            mem,
            disk: 0.0,
            ports: 0,
        }
    }

    /// The same request with `disk` MB of disk.
    pub fn with_disk(mut self, disk: f64) -> TaskRequest {
        self.disk = disk;
        self
    }

    /// The same request with `ports` ports.
    pub fn with_ports(mut self, ports: u64) -> TaskRequest {
        self.ports = ports;
        self
    }

    /// The scalar part of the request as [`Resources`] (ports are chosen per offer by
    /// [`TaskRequest::take_from`]).
    pub fn resources(&self) -> Resources {
        let mut r = Resources::scalar("cpus", self.cpus);
        r.add(&Resources::scalar("mem", self.mem));
        r.add(&Resources::scalar("disk", self.disk));
        r
    }

    /// True when the request fits in `available`.
    pub fn fits(&self, available: &Resources) -> bool {
        self.take_from(available).is_some()
    }

    /// Carves the request out of `available`: `Some((taken, rest))` where `taken` holds
    /// the scalars and the lowest free ports, and `taken + rest == available`.
    pub fn take_from(&self, available: &Resources) -> Option<(Resources, Resources)> {
        let (mut taken, rest) = available.split(&self.resources())?;
        if self.ports == 0 {
            return Some((taken, rest));
        }
        let ports = rest.take_ports(self.ports)?;
        let (ports, rest) = rest.split(&ports)?;
        taken.add(&ports);
        Some((taken, rest))
    }
}

impl fmt::Display for TaskRequest {
    /// `cpus:0.5 mem:128 disk:0 ports:2`, as people read it in "waiting for offers" lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cpus:{} mem:{} disk:{}", self.cpus, self.mem, self.disk)?;
        if self.ports > 0 {
            write!(f, " ports:{}", self.ports)?;
        }
        Ok(())
    }
}

/// The resources of an offer that [`OfferPacker`] can hand out: unreserved ones only,
/// since tasks built from a [`TaskRequest`] ask for unreserved resources.
pub fn offer_resources(offer: &pb::Offer) -> Result<Resources, drover_proto::ResourceError> {
    let unreserved: Vec<pb::Resource> = offer
        .resources
        .iter()
        .filter(|r| r.role.is_empty() || r.role == "*")
        .cloned()
        .collect();
    Resources::from_proto(&unreserved)
}

/// The result of packing: what to launch on which offer, and which offers to decline.
#[derive(Debug, Default)]
pub struct Packing {
    /// One entry per offer that received at least one task.
    pub launches: Vec<(OfferId, Vec<pb::TaskInfo>)>,
    /// Offers that received no task; decline them (with a filter).
    pub unused: Vec<OfferId>,
}

impl Packing {
    /// How many tasks were placed in total.
    pub fn task_count(&self) -> usize {
        self.launches.iter().map(|(_, t)| t.len()).sum()
    }
}

/// Packs pending tasks onto offers, first fit in queue order, as many per offer as fit.
///
/// ```
/// use std::collections::VecDeque;
/// use drover_sdk::{OfferPacker, TaskBuilder, TaskRequest};
/// use drover_sdk::proto::{pb, Resources};
///
/// let offer = pb::Offer {
///     id: Some("o-1".into()),
///     agent_id: Some("a-1".into()),
///     resources: Resources::parse("cpus:1;mem:256").unwrap().to_proto(),
///     ..Default::default()
/// };
/// let mut pending: VecDeque<u32> = (0..10).collect();
/// let packing = OfferPacker::new().pack(
///     vec![offer],
///     &mut pending,
///     |_| TaskRequest::new(0.25, 64.0),
///     |i, offer, resources| {
///         TaskBuilder::new(format!("copy-{i}")).shell("true").offer(offer).resources(&resources).build()
///     },
/// );
/// assert_eq!(packing.task_count(), 4); // four 0.25-cpu tasks fit in one cpu
/// assert_eq!(pending.len(), 6);        // the rest wait for the next offers
/// ```
#[derive(Clone, Debug, Default)]
pub struct OfferPacker {
    max_tasks: Option<usize>,
    max_per_offer: Option<usize>,
}

impl OfferPacker {
    /// A packer with no limits besides the offers themselves.
    pub fn new() -> OfferPacker {
        OfferPacker::default()
    }

    /// Places at most `n` tasks in one call (e.g. to cap tasks in flight).
    pub fn max_tasks(mut self, n: usize) -> OfferPacker {
        self.max_tasks = Some(n);
        self
    }

    /// Places at most `n` tasks on any one offer (to spread tasks over agents).
    pub fn max_per_offer(mut self, n: usize) -> OfferPacker {
        self.max_per_offer = Some(n);
        self
    }

    /// Places items of `pending` onto `offers`.
    ///
    /// For each offer in turn, walks `pending` in order and places every item whose
    /// request (`request_of`) still fits in what is left of the offer; `build` turns the
    /// item, its offer and the exact resources carved out for it (ports included) into a
    /// `TaskInfo`. Placed items leave `pending`; the others stay in their order. An offer
    /// whose resources cannot be read is reported unused (and logged).
    pub fn pack<T>(
        &self,
        offers: Vec<pb::Offer>,
        pending: &mut VecDeque<T>,
        mut request_of: impl FnMut(&T) -> TaskRequest,
        mut build: impl FnMut(T, &pb::Offer, Resources) -> pb::TaskInfo,
    ) -> Packing {
        let mut packing = Packing::default();
        let mut budget = self.max_tasks.unwrap_or(usize::MAX);
        for offer in offers {
            let offer_id = offer.id.clone().unwrap_or_default();
            let mut available = match offer_resources(&offer) {
                Ok(r) => r,
                Err(e) => {
                    warn!(%offer_id, "offer has unusable resources: {e}");
                    packing.unused.push(offer_id);
                    continue;
                }
            };
            let per_offer = self.max_per_offer.unwrap_or(usize::MAX);
            let mut tasks = Vec::new();
            // Requests that did not fit this offer: an equal request cannot fit either,
            // which keeps a long queue of identical tasks linear to scan.
            let mut misfits: Vec<TaskRequest> = Vec::new();
            let mut i = 0;
            while i < pending.len() && budget > 0 && tasks.len() < per_offer {
                let request = request_of(&pending[i]);
                if misfits.contains(&request) {
                    i += 1;
                    continue;
                }
                match request.take_from(&available) {
                    Some((taken, rest)) => {
                        available = rest;
                        let item = pending.remove(i).expect("index checked above");
                        tasks.push(build(item, &offer, taken));
                        budget -= 1;
                    }
                    None => {
                        misfits.push(request);
                        i += 1;
                    }
                }
            }
            if tasks.is_empty() {
                packing.unused.push(offer_id);
            } else {
                packing.launches.push((offer_id, tasks));
            }
        }
        packing
    }
}

/// Of `offers`, the one closest to fitting `request`: the largest smallest ratio of
/// offered to requested over the requested dimensions. For telling people what the cluster
/// has when nothing fits.
pub fn closest_offer<'a>(
    offers: impl IntoIterator<Item = &'a pb::Offer>,
    request: &TaskRequest,
) -> Option<&'a pb::Offer> {
    let score = |o: &pb::Offer| -> f64 {
        let Ok(r) = offer_resources(o) else {
            return -1.0;
        };
        let ratio = |have: f64, want: f64| {
            if want > 0.0 {
                have / want
            } else {
                f64::INFINITY
            }
        };
        let ports = r.get_ranges("ports").count() as f64;
        [
            ratio(r.cpus(), request.cpus),
            ratio(r.mem(), request.mem),
            ratio(r.disk(), request.disk),
            ratio(ports, request.ports as f64),
        ]
        .into_iter()
        .fold(f64::INFINITY, f64::min)
    };
    offers
        .into_iter()
        .map(|o| (score(o), o))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, o)| o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::TaskBuilder;
    use proptest::prelude::*;

    fn offer(id: &str, text: &str) -> pb::Offer {
        pb::Offer {
            id: Some(OfferId::new(id)),
            agent_id: Some(format!("agent-{id}").into()),
            resources: Resources::parse(text).unwrap().to_proto(),
            ..Default::default()
        }
    }

    fn build(i: usize, o: &pb::Offer, r: Resources) -> pb::TaskInfo {
        TaskBuilder::new(format!("t-{i}"))
            .shell("true")
            .offer(o)
            .resources(&r)
            .build()
    }

    #[test]
    fn request_takes_scalars_and_lowest_ports() {
        let avail = Resources::parse("cpus:1;mem:100;ports:[10-11,20-30]").unwrap();
        let req = TaskRequest::new(0.5, 40.0).with_ports(3);
        let (taken, rest) = req.take_from(&avail).unwrap();
        assert_eq!(taken.ports(), vec![10, 11, 20]);
        assert_eq!(taken.cpus(), 0.5);
        assert_eq!(taken.plus(&rest), avail);
        assert!(!TaskRequest::new(2.0, 1.0).fits(&avail));
        assert!(!TaskRequest::new(0.1, 1.0).with_ports(20).fits(&avail));
        assert_eq!(req.to_string(), "cpus:0.5 mem:40 disk:0 ports:3");
    }

    #[test]
    fn packs_many_per_offer_and_reports_unused() {
        let offers = vec![
            offer("a", "cpus:1;mem:100"),
            offer("b", "cpus:0.05;mem:1000"),
            offer("c", "cpus:0.3;mem:64"),
        ];
        let mut pending: VecDeque<usize> = (0..20).collect();
        let p =
            OfferPacker::new().pack(offers, &mut pending, |_| TaskRequest::new(0.1, 32.0), build);
        // a: 3 tasks (mem 100 / 32), b: none (cpus), c: 2 tasks (mem 64 / 32).
        let counts: Vec<(String, usize)> = p
            .launches
            .iter()
            .map(|(o, t)| (o.to_string(), t.len()))
            .collect();
        assert_eq!(counts, [("a".to_string(), 3), ("c".to_string(), 2)]);
        assert_eq!(p.unused, vec![OfferId::new("b")]);
        assert_eq!(pending.front(), Some(&5));
        let t = &p.launches[0].1[0];
        assert_eq!(t.agent_id.as_ref().unwrap().as_str(), "agent-a");
        assert_eq!(
            Resources::from_proto(&t.resources).unwrap(),
            TaskRequest::new(0.1, 32.0).resources()
        );
    }

    #[test]
    fn limits_and_skipping_misfits() {
        let mut pending: VecDeque<(usize, f64)> =
            vec![(0, 4.0), (1, 0.5), (2, 4.0), (3, 0.5)].into();
        let p = OfferPacker::new().max_tasks(5).pack(
            vec![offer("a", "cpus:1;mem:10")],
            &mut pending,
            |(_, cpus)| TaskRequest::new(*cpus, 1.0),
            |(i, _), o, r| build(i, o, r),
        );
        // Big requests are skipped, not blocking the small ones behind them.
        assert_eq!(p.task_count(), 2);
        assert_eq!(pending.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0, 2]);

        let mut pending: VecDeque<usize> = (0..10).collect();
        let p = OfferPacker::new().max_tasks(3).max_per_offer(2).pack(
            vec![offer("a", "cpus:8;mem:800"), offer("b", "cpus:8;mem:800")],
            &mut pending,
            |_| TaskRequest::new(0.1, 1.0),
            build,
        );
        assert_eq!(
            p.launches.iter().map(|(_, t)| t.len()).collect::<Vec<_>>(),
            [2, 1]
        );
        assert_eq!(pending.len(), 7);
    }

    #[test]
    fn unreadable_and_reserved_resources() {
        let mut bad = offer("bad", "cpus:1;mem:100");
        bad.resources[0].scalar = f64::NAN;
        let mut reserved = offer("r", "cpus:4;mem:400");
        for r in &mut reserved.resources {
            r.role = "analytics".into();
        }
        let mut pending: VecDeque<usize> = (0..2).collect();
        let p = OfferPacker::new().pack(
            vec![bad, reserved],
            &mut pending,
            |_| TaskRequest::new(0.1, 1.0),
            build,
        );
        assert_eq!(p.task_count(), 0);
        assert_eq!(p.unused.len(), 2);
    }

    #[test]
    fn closest_offer_is_the_best_partial_fit() {
        let offers = [
            offer("small", "cpus:0.1;mem:10"),
            offer("big", "cpus:0.5;mem:900"),
            offer("memless", "cpus:8"),
        ];
        let req = TaskRequest::new(1.0, 1000.0);
        assert_eq!(
            closest_offer(&offers, &req)
                .unwrap()
                .id
                .as_ref()
                .unwrap()
                .as_str(),
            "big"
        );
        assert!(closest_offer(&[], &req).is_none());
    }

    fn arb_offer() -> impl Strategy<Value = (u32, u32, Vec<(u64, u64)>)> {
        (
            0u32..4000,
            0u32..2000,
            proptest::collection::vec((30000u64..30100, 0u64..5), 0..4),
        )
    }

    fn arb_request() -> impl Strategy<Value = TaskRequest> {
        (0u32..1500, 0u32..700, 0u32..50, 0u64..4).prop_map(|(c, m, d, p)| TaskRequest {
            cpus: f64::from(c) / 1000.0,
            mem: f64::from(m),
            disk: f64::from(d),
            ports: p,
        })
    }

    proptest! {
        /// Whatever the offers and requests: the tasks placed on an offer never add up to
        /// more than it holds, no port is given twice, each task gets exactly its request,
        /// and every pending item is either placed once or still pending.
        #[test]
        fn never_overcommits(
            raw_offers in proptest::collection::vec(arb_offer(), 0..5),
            requests in proptest::collection::vec(arb_request(), 0..30),
            max_tasks in proptest::option::of(0usize..20),
        ) {
            let offers: Vec<pb::Offer> = raw_offers.iter().enumerate().map(|(i, (c, m, ports))| {
                let mut r = Resources::scalar("cpus", f64::from(*c) / 1000.0);
                r.add(&Resources::scalar("mem", f64::from(*m)));
                r.add(&Resources::scalar("disk", 100.0));
                r.add(&Resources::ranges("ports", ports.iter().map(|&(b, l)| (b, b + l)).collect()));
                pb::Offer { id: Some(OfferId::new(format!("o{i}"))), resources: r.to_proto(), ..Default::default() }
            }).collect();
            let mut pending: VecDeque<(usize, TaskRequest)> = requests.iter().copied().enumerate().collect();
            let mut packer = OfferPacker::new();
            if let Some(n) = max_tasks { packer = packer.max_tasks(n); }
            let p = packer.pack(offers.clone(), &mut pending, |(_, r)| *r, |(i, _), o, r| build(i, o, r));

            let mut seen = std::collections::BTreeSet::new();
            for (offer_id, tasks) in &p.launches {
                let offer = offers.iter().find(|o| o.id.as_ref() == Some(offer_id)).unwrap();
                let mut used = Resources::new();
                let mut ports_used = 0u64;
                for t in tasks {
                    let i: usize = t.task_id.as_ref().unwrap().as_str()[2..].parse().unwrap();
                    prop_assert!(seen.insert(i), "task placed twice");
                    let got = Resources::from_proto(&t.resources).unwrap();
                    let want = requests[i];
                    let ports = Resources::ranges("ports", got.get_ranges("ports").intervals().to_vec());
                    prop_assert_eq!(got.checked_sub(&ports), Some(want.resources()));
                    prop_assert_eq!(got.get_ranges("ports").count(), want.ports);
                    ports_used += want.ports;
                    used.add(&got);
                }
                // Ports are unions: if any port were given twice the count would shrink.
                prop_assert_eq!(used.get_ranges("ports").count(), ports_used);
                prop_assert!(Resources::from_proto(&offer.resources).unwrap().contains(&used), "offer overcommitted");
            }
            prop_assert!(p.task_count() <= max_tasks.unwrap_or(usize::MAX));
            prop_assert_eq!(seen.len() + pending.len(), requests.len());
            for (i, _) in &pending { prop_assert!(!seen.contains(i)); }
            prop_assert_eq!(p.launches.len() + p.unused.len(), offers.len());
        }
    }
}
