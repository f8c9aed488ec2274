//! Allocation-cycle benchmark: times `drover_master::allocator::allocate` at 1,000 and
//! 10,000 agents × 10, 100 and 1,000 frameworks.
//!
//! The allocator is a pure module; this binary compiles that very source file
//! (`master/src/allocator/mod.rs`) against `drover-proto` alone, so a release build of the
//! benchmark does not need a release build of RocksDB. Run with
//! `cargo run --release -p drover-bench --bin alloc-bench`.
//!
//! Two cycles are timed per size:
//! - full: every agent has free resources and every framework wants offers (the worst
//!   case, e.g. right after a leader election);
//! - incremental: 1% of agents were freed since the last cycle (the steady state: only
//!   agents with free resources are visited).

#[allow(dead_code)]
#[path = "../../../master/src/allocator/mod.rs"]
mod allocator;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use allocator::{AgentInput, FrameworkInput, Input};
use drover_proto::{AgentId, FrameworkId, Resources};

fn input(agents: usize, frameworks: usize, free_fraction: f64) -> Input {
    let per_agent = Resources::parse("cpus:16;mem:65536;disk:500000;ports:[31000-32000]").unwrap();
    let mut total = Resources::new();
    let mut list = Vec::new();
    let free_every = (1.0 / free_fraction).round().max(1.0) as usize;
    for i in 0..agents {
        total.add(&per_agent);
        if i % free_every == 0 {
            list.push(AgentInput {
                id: AgentId::new(format!("agent-{i:05}")),
                available: per_agent.clone(),
            });
        }
    }
    let fws = (0..frameworks)
        .map(|i| FrameworkInput {
            id: FrameworkId::new(format!("fw-{i:04}")),
            role: format!("role-{}", i % 10),
            allocated: Resources::scalar("cpus", (i % 7) as f64)
                .plus(&Resources::scalar("mem", (i % 13) as f64 * 1024.0)),
            suppressed: false,
            // A few frameworks filter a few agents, as declines do.
            filtered_agents: if i % 10 == 0 {
                (0..5)
                    .map(|k| AgentId::new(format!("agent-{:05}", (i * 7 + k) % agents)))
                    .collect()
            } else {
                HashSet::new()
            },
        })
        .collect();
    Input {
        total,
        agents: list,
        frameworks: fws,
        weights: (0..10)
            .map(|r| (format!("role-{r}"), 1.0 + r as f64))
            .collect::<HashMap<_, _>>(),
        other_role_allocation: HashMap::new(),
    }
}

fn time(input: &Input, rounds: usize) -> (Duration, Duration, usize) {
    let mut samples = Vec::new();
    let mut grants = 0;
    for _ in 0..rounds {
        let start = Instant::now();
        let out = allocator::allocate(input);
        samples.push(start.elapsed());
        grants = out.len();
    }
    samples.sort();
    (
        samples[samples.len() / 2],
        samples[samples.len() - 1],
        grants,
    )
}

fn main() {
    println!("| agents | frameworks | cycle | agents visited | offers | median | max |");
    println!("|---:|---:|---|---:|---:|---:|---:|");
    for agents in [1_000usize, 10_000] {
        for frameworks in [10usize, 100, 1_000] {
            for (label, frac) in [("full", 1.0), ("incremental (1% freed)", 0.01)] {
                let inp = input(agents, frameworks, frac);
                let rounds = if agents >= 10_000 && frac == 1.0 {
                    11
                } else {
                    31
                };
                let (median, max, grants) = time(&inp, rounds);
                println!(
                    "| {agents} | {frameworks} | {label} | {} | {grants} | {:.2} ms | {:.2} ms |",
                    inp.agents.len(),
                    median.as_secs_f64() * 1e3,
                    max.as_secs_f64() * 1e3
                );
            }
        }
    }
}
