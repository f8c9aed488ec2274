//! The allocator: hierarchical weighted DRF, as a pure function of a snapshot.
//!
//! Input: the agents that have free resources (and a live connection to this leader), every
//! framework that could receive offers with its role, current allocation (tasks plus
//! outstanding offers), suppression and per-agent decline filters, role weights, and the
//! cluster's total. Output: which framework gets which agent's free resources.
//!
//! Each eligible agent's free resources go, whole, to one framework (coarse-grained offers,
//! as in Mesos): the role with the lowest weighted dominant share among roles that have a
//! framework able to take this agent, then the framework with the lowest dominant share
//! inside that role. Shares are updated after every grant, so one cycle spreads a contended
//! cluster fairly. Ties break by name, so the result is deterministic.
//!
//! Cost: sorted sets keyed by share make each grant `O(log R + log F)` plus the frameworks
//! skipped because a filter excludes them, and only agents with free resources are visited,
//! so a cycle's work follows what changed rather than the cluster's size.
//! The tests keep a slow, obvious reference (`tests::naive`) that recomputes everything
//! from scratch, and check this allocator against it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use drover_proto::{AgentId, FrameworkId, Resources};

#[cfg(test)]
mod tests;

/// The resources shares are computed over (others, like ports, are offered but not weighed).
pub const SHARE_RESOURCES: [&str; 4] = ["cpus", "mem", "disk", "gpus"];

#[derive(Debug, Clone)]
pub struct AgentInput {
    pub id: AgentId,
    /// What can be offered now: total − tasks − outstanding offers − pending launches.
    pub available: Resources,
}

#[derive(Debug, Clone)]
pub struct FrameworkInput {
    pub id: FrameworkId,
    pub role: String,
    /// Resources of its tasks plus its outstanding offers.
    pub allocated: Resources,
    /// A suppressed framework wants no offers.
    pub suppressed: bool,
    /// Agents it declined with a filter that has not expired.
    pub filtered_agents: HashSet<AgentId>,
}

#[derive(Debug, Clone, Default)]
pub struct Input {
    /// The cluster's total resources (denominator of every share).
    pub total: Resources,
    pub agents: Vec<AgentInput>,
    pub frameworks: Vec<FrameworkInput>,
    /// Role weights; roles not listed weigh 1.
    pub weights: HashMap<String, f64>,
    /// Allocation of roles from frameworks not in `frameworks` (e.g. disconnected ones
    /// whose tasks still run): they count towards their role's share.
    pub other_role_allocation: HashMap<String, Resources>,
}

/// One grant: this agent's resources are offered to this framework.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub framework_id: FrameworkId,
    pub agent_id: AgentId,
    pub resources: Resources,
}

/// A share as a totally ordered key (shares are finite and non-negative).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Share(f64);
impl Eq for Share {}
impl PartialOrd for Share {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Share {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Dominant share of `alloc` against `total`, over [`SHARE_RESOURCES`].
pub fn dominant_share(alloc: &Resources, total: &Resources) -> f64 {
    SHARE_RESOURCES
        .iter()
        .filter_map(|r| {
            let t = total.get_scalar_milli(r);
            (t > 0).then(|| alloc.get_scalar_milli(r) as f64 / t as f64)
        })
        .fold(0.0, f64::max)
}

fn weight_of(weights: &HashMap<String, f64>, role: &str) -> f64 {
    match weights.get(role) {
        Some(w) if w.is_finite() && *w > 0.0 => *w,
        _ => 1.0,
    }
}

struct RoleState {
    allocated: Resources,
    /// (share, framework id) of the role's frameworks that want offers.
    frameworks: BTreeSet<(Share, FrameworkId)>,
}

/// Runs one allocation cycle. See the module docs for the policy.
pub fn allocate(input: &Input) -> Vec<Allocation> {
    let mut out = Vec::new();
    if input.agents.is_empty() {
        return out;
    }
    let fws: HashMap<&FrameworkId, &FrameworkInput> =
        input.frameworks.iter().map(|f| (&f.id, f)).collect();
    let mut fw_alloc: HashMap<FrameworkId, Resources> = HashMap::new();
    let mut roles: BTreeMap<String, RoleState> = BTreeMap::new();

    for f in &input.frameworks {
        let role = roles.entry(f.role.clone()).or_insert_with(|| RoleState {
            allocated: input
                .other_role_allocation
                .get(&f.role)
                .cloned()
                .unwrap_or_default(),
            frameworks: BTreeSet::new(),
        });
        role.allocated.add(&f.allocated);
        fw_alloc.insert(f.id.clone(), f.allocated.clone());
        if !f.suppressed {
            let s = dominant_share(&f.allocated, &input.total);
            role.frameworks.insert((Share(s), f.id.clone()));
        }
    }
    // Roles ordered by weighted share; only roles with a framework that wants offers.
    let mut role_order: BTreeSet<(Share, String)> = roles
        .iter()
        .filter(|(_, r)| !r.frameworks.is_empty())
        .map(|(name, r)| {
            let s = dominant_share(&r.allocated, &input.total) / weight_of(&input.weights, name);
            (Share(s), name.clone())
        })
        .collect();

    for agent in &input.agents {
        if agent.available.is_empty() {
            continue;
        }
        let mut chosen: Option<(Share, String, Share, FrameworkId)> = None;
        'roles: for (rs, rname) in role_order.iter() {
            let role = &roles[rname];
            for (fs, fid) in role.frameworks.iter() {
                if !fws[fid].filtered_agents.contains(&agent.id) {
                    chosen = Some((*rs, rname.clone(), *fs, fid.clone()));
                    break 'roles;
                }
            }
        }
        let Some((rs, rname, fs, fid)) = chosen else {
            continue;
        };
        out.push(Allocation {
            framework_id: fid.clone(),
            agent_id: agent.id.clone(),
            resources: agent.available.clone(),
        });
        // Update the framework's and the role's shares.
        let a = fw_alloc
            .get_mut(&fid)
            .expect("every framework has an entry");
        a.add(&agent.available);
        let new_fs = Share(dominant_share(a, &input.total));
        let role = roles.get_mut(&rname).expect("role exists");
        role.frameworks.remove(&(fs, fid.clone()));
        role.frameworks.insert((new_fs, fid));
        role.allocated.add(&agent.available);
        role_order.remove(&(rs, rname.clone()));
        let new_rs = Share(
            dominant_share(&role.allocated, &input.total) / weight_of(&input.weights, &rname),
        );
        role_order.insert((new_rs, rname));
    }
    out
}
