use super::*;
use proptest::prelude::*;

/// The slow, obvious version of [`allocate`]: recomputes and sorts every share from scratch
/// for every agent. Kept for property tests and as the specification.
fn naive(input: &Input) -> Vec<Allocation> {
    let mut fw_alloc: HashMap<FrameworkId, Resources> = input
        .frameworks
        .iter()
        .map(|f| (f.id.clone(), f.allocated.clone()))
        .collect();
    let mut out = Vec::new();
    for agent in &input.agents {
        if agent.available.is_empty() {
            continue;
        }
        let mut role_alloc: HashMap<String, Resources> = input.other_role_allocation.clone();
        for f in &input.frameworks {
            role_alloc
                .entry(f.role.clone())
                .or_default()
                .add(&fw_alloc[&f.id]);
        }
        let mut candidates: Vec<(f64, String, f64, FrameworkId)> = input
            .frameworks
            .iter()
            .filter(|f| !f.suppressed)
            .map(|f| {
                let rs = dominant_share(&role_alloc[&f.role], &input.total)
                    / weight_of(&input.weights, &f.role);
                let fs = dominant_share(&fw_alloc[&f.id], &input.total);
                (rs, f.role.clone(), fs, f.id.clone())
            })
            .collect();
        candidates.sort_by(|a, b| {
            a.0.total_cmp(&b.0)
                .then_with(|| a.1.cmp(&b.1))
                .then_with(|| a.2.total_cmp(&b.2))
                .then_with(|| a.3.cmp(&b.3))
        });
        let pick = candidates.into_iter().find(|(_, _, _, fid)| {
            !input
                .frameworks
                .iter()
                .find(|f| &f.id == fid)
                .is_some_and(|f| f.filtered_agents.contains(&agent.id))
        });
        if let Some((_, _, _, fid)) = pick {
            fw_alloc.get_mut(&fid).unwrap().add(&agent.available);
            out.push(Allocation {
                framework_id: fid,
                agent_id: agent.id.clone(),
                resources: agent.available.clone(),
            });
        }
    }
    out
}

fn agent(i: usize, cpus: f64, mem: f64) -> AgentInput {
    AgentInput {
        id: AgentId::new(format!("a{i:03}")),
        available: Resources::scalar("cpus", cpus).plus(&Resources::scalar("mem", mem)),
    }
}

fn fw(id: &str, role: &str) -> FrameworkInput {
    FrameworkInput {
        id: FrameworkId::new(id),
        role: role.into(),
        allocated: Resources::new(),
        suppressed: false,
        filtered_agents: HashSet::new(),
    }
}

fn total(agents: &[AgentInput]) -> Resources {
    let mut t = Resources::new();
    for a in agents {
        t.add(&a.available);
    }
    t
}

fn count(out: &[Allocation], id: &str) -> usize {
    out.iter().filter(|a| a.framework_id.as_str() == id).count()
}

#[test]
fn equal_weights_split_evenly() {
    let agents: Vec<_> = (0..40).map(|i| agent(i, 4.0, 4096.0)).collect();
    let input = Input {
        total: total(&agents),
        agents,
        frameworks: vec![fw("f1", "a"), fw("f2", "b")],
        ..Default::default()
    };
    let out = allocate(&input);
    assert_eq!(count(&out, "f1"), 20);
    assert_eq!(count(&out, "f2"), 20);
}

#[test]
fn weights_one_and_three_split_one_to_three() {
    let agents: Vec<_> = (0..40).map(|i| agent(i, 4.0, 4096.0)).collect();
    let input = Input {
        total: total(&agents),
        agents,
        frameworks: vec![fw("f1", "light"), fw("f2", "heavy")],
        weights: [("heavy".to_string(), 3.0)].into_iter().collect(),
        ..Default::default()
    };
    let out = allocate(&input);
    assert_eq!(count(&out, "f1"), 10);
    assert_eq!(count(&out, "f2"), 30);
}

#[test]
fn frameworks_inside_a_role_share_evenly() {
    let agents: Vec<_> = (0..30).map(|i| agent(i, 2.0, 1024.0)).collect();
    let input = Input {
        total: total(&agents),
        agents,
        frameworks: vec![fw("f1", "r"), fw("f2", "r"), fw("f3", "r")],
        ..Default::default()
    };
    let out = allocate(&input);
    for f in ["f1", "f2", "f3"] {
        assert_eq!(count(&out, f), 10);
    }
}

#[test]
fn dominant_resource_decides() {
    // f1 already holds much memory, f2 holds cpus; memory is f1's dominant resource.
    let agents: Vec<_> = (0..4).map(|i| agent(i, 1.0, 1000.0)).collect();
    let mut f1 = fw("f1", "r1");
    f1.allocated = Resources::scalar("mem", 2000.0);
    let mut f2 = fw("f2", "r2");
    f2.allocated = Resources::scalar("cpus", 1.0);
    let mut t = total(&agents);
    t.add(&Resources::scalar("mem", 2000.0));
    t.add(&Resources::scalar("cpus", 1.0));
    let input = Input {
        total: t,
        agents,
        frameworks: vec![f1, f2],
        ..Default::default()
    };
    let out = allocate(&input);
    // f2's share (1/5 cpus) is below f1's (2000/6000 mem), so f2 is served first.
    assert_eq!(out[0].framework_id.as_str(), "f2");
}

#[test]
fn suppressed_and_filtered_frameworks_get_nothing_there() {
    let agents: Vec<_> = (0..3).map(|i| agent(i, 1.0, 100.0)).collect();
    let mut f1 = fw("f1", "r");
    f1.suppressed = true;
    let mut f2 = fw("f2", "r");
    f2.filtered_agents.insert(AgentId::new("a001"));
    let input = Input {
        total: total(&agents),
        agents,
        frameworks: vec![f1, f2],
        ..Default::default()
    };
    let out = allocate(&input);
    assert_eq!(count(&out, "f1"), 0);
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|a| a.agent_id.as_str() != "a001"));
}

fn arb_input() -> impl Strategy<Value = Input> {
    let agents = proptest::collection::vec((1u32..8, 1u32..8), 0..40);
    let fws = proptest::collection::vec(
        (
            0usize..3,
            0u32..20,
            0u32..20,
            any::<bool>(),
            proptest::collection::vec(0usize..40, 0..5),
        ),
        0..8,
    );
    let weights = proptest::collection::vec(1u32..5, 3);
    (agents, fws, weights).prop_map(|(agents, fws, weights)| {
        let agents: Vec<AgentInput> = agents
            .into_iter()
            .enumerate()
            .map(|(i, (c, m))| agent(i, c as f64, m as f64 * 256.0))
            .collect();
        let mut t = total(&agents);
        let frameworks: Vec<FrameworkInput> = fws
            .into_iter()
            .enumerate()
            .map(|(i, (role, c, m, suppressed, filtered))| {
                let allocated = Resources::scalar("cpus", c as f64)
                    .plus(&Resources::scalar("mem", m as f64 * 256.0));
                t.add(&allocated);
                FrameworkInput {
                    id: FrameworkId::new(format!("f{i}")),
                    role: format!("role{role}"),
                    allocated,
                    suppressed,
                    filtered_agents: filtered
                        .into_iter()
                        .map(|a| AgentId::new(format!("a{a:03}")))
                        .collect(),
                }
            })
            .collect();
        Input {
            total: t,
            agents,
            frameworks,
            weights: weights
                .into_iter()
                .enumerate()
                .map(|(i, w)| (format!("role{i}"), w as f64))
                .collect(),
            other_role_allocation: HashMap::new(),
        }
    })
}

proptest! {
    #[test]
    fn matches_naive_reference(input in arb_input()) {
        prop_assert_eq!(allocate(&input), naive(&input));
    }

    #[test]
    fn never_offers_twice_or_beyond_availability(input in arb_input()) {
        let out = allocate(&input);
        let mut seen = HashSet::new();
        for a in &out {
            prop_assert!(seen.insert(a.agent_id.clone()), "agent offered twice");
            let avail = &input.agents.iter().find(|x| x.id == a.agent_id).unwrap().available;
            prop_assert_eq!(&a.resources, avail);
            let f = input.frameworks.iter().find(|f| f.id == a.framework_id).unwrap();
            prop_assert!(!f.suppressed);
            prop_assert!(!f.filtered_agents.contains(&a.agent_id));
        }
        // Every agent that some framework could take was given out.
        for ag in &input.agents {
            let someone = input.frameworks.iter().any(|f| !f.suppressed && !f.filtered_agents.contains(&ag.id));
            prop_assert_eq!(seen.contains(&ag.id), someone && !ag.available.is_empty());
        }
    }

    #[test]
    fn allocating_again_after_granting_changes_nothing(input in arb_input()) {
        // Once every grant is accounted for and agents are empty, a second cycle offers nothing.
        let out = allocate(&input);
        let mut again = input.clone();
        for a in &out {
            let f = again.frameworks.iter_mut().find(|f| f.id == a.framework_id).unwrap();
            f.allocated.add(&a.resources);
        }
        for ag in again.agents.iter_mut() {
            if out.iter().any(|a| a.agent_id == ag.id) {
                ag.available = Resources::new();
            }
        }
        let second = allocate(&again);
        for a in &second {
            prop_assert!(!out.iter().any(|o| o.agent_id == a.agent_id));
        }
    }
}
