//! Allocation cycles and offer bookkeeping.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use drover_proto::pb;
use drover_proto::{AgentId, FrameworkId, OfferId, Resources};

use super::{Master, OfferRec, Soft};
use crate::allocator::{self, AgentInput, FrameworkInput};
use crate::metrics::Metrics;
use crate::registry::{AgentState, Registry};

/// Offers smaller than this (no cpus worth having and little memory) are not made: they
/// would only churn.
const MIN_OFFER_CPUS: f64 = 0.01;
const MIN_OFFER_MEM: f64 = 32.0;

/// Seconds a decline filters an agent when the framework gives no `refuse_seconds`.
pub const DEFAULT_REFUSE_SECONDS: f64 = 5.0;
/// Longest filter accepted (a year); longer requests are clamped.
const MAX_REFUSE_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

/// Converts a framework's filter into an expiry time, validating it.
pub fn refuse_until(now_ms: u64, filters: Option<&pb::Filters>) -> Result<u64, String> {
    let secs = filters
        .and_then(|f| f.refuse_seconds)
        .unwrap_or(DEFAULT_REFUSE_SECONDS);
    if secs.is_nan() || secs < 0.0 {
        return Err(format!(
            "refuse_seconds must be zero or positive, got {secs}"
        ));
    }
    Ok(now_ms + (secs.min(MAX_REFUSE_SECONDS) * 1000.0) as u64)
}

/// Free resources of every connected, active agent, as the allocator may offer them.
fn available(soft: &Soft, reg: &Registry) -> Vec<AgentInput> {
    let mut offered: HashMap<&AgentId, Resources> = HashMap::new();
    for o in soft.offers.values() {
        offered.entry(&o.agent_id).or_default().add(&o.resources);
    }
    let mut out = Vec::new();
    for id in soft.agents.keys() {
        let Some(a) = reg.agents.get(id) else {
            continue;
        };
        if a.state != AgentState::Active {
            continue;
        }
        let mut free = a.total.clone();
        free.sub_saturating(&a.used);
        if let Some(o) = offered.get(id) {
            free.sub_saturating(o);
        }
        if let Some(p) = soft.pending.get(id) {
            free.sub_saturating(p);
        }
        if free.cpus() < MIN_OFFER_CPUS && free.mem() < MIN_OFFER_MEM {
            continue;
        }
        out.push(AgentInput {
            id: id.clone(),
            available: free,
        });
    }
    // A stable order keeps cycles deterministic for a given state.
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

impl Master {
    /// One allocation cycle: offers every connected agent's free resources following DRF.
    pub fn allocate_once(&self) {
        let started = Instant::now();
        let now = self.now_ms();
        let mut soft = self.soft();
        if !soft.serving {
            return;
        }
        let reg = self.registry();
        let agents = available(&soft, &reg);
        if agents.is_empty() {
            return;
        }
        let mut offered_fw: HashMap<&FrameworkId, Resources> = HashMap::new();
        for o in soft.offers.values() {
            offered_fw
                .entry(&o.framework_id)
                .or_default()
                .add(&o.resources);
        }
        let mut frameworks = Vec::new();
        let mut other: HashMap<String, Resources> = HashMap::new();
        for (id, f) in &reg.frameworks {
            match soft.frameworks.get(id) {
                Some(conn) => {
                    let mut allocated = f.used.clone();
                    if let Some(o) = offered_fw.get(id) {
                        allocated.add(o);
                    }
                    let filtered_agents: HashSet<AgentId> = conn
                        .filters
                        .iter()
                        .filter(|(_, until)| **until > now)
                        .map(|(a, _)| a.clone())
                        .collect();
                    frameworks.push(FrameworkInput {
                        id: id.clone(),
                        role: f.role().to_string(),
                        allocated,
                        suppressed: conn.suppressed,
                        filtered_agents,
                    });
                }
                None => other.entry(f.role().to_string()).or_default().add(&f.used),
            }
        }
        let mut total = Resources::new();
        for a in reg
            .agents
            .values()
            .filter(|a| a.state == AgentState::Active)
        {
            total.add(&a.total);
        }
        let input = allocator::Input {
            total,
            agents,
            frameworks,
            weights: reg.weights.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            other_role_allocation: other,
        };
        let grants = allocator::allocate(&input);
        let mut per_fw: HashMap<FrameworkId, Vec<pb::Offer>> = HashMap::new();
        for g in grants {
            let Some(agent) = reg.agents.get(&g.agent_id) else {
                continue;
            };
            let id = OfferId::random();
            per_fw
                .entry(g.framework_id.clone())
                .or_default()
                .push(pb::Offer {
                    id: Some(id.clone()),
                    framework_id: Some(g.framework_id.clone()),
                    agent_id: Some(g.agent_id.clone()),
                    hostname: agent.info.hostname.clone(),
                    agent_address: agent.info.address.clone(),
                    resources: g.resources.to_proto(),
                    attributes: agent.info.attributes.clone(),
                });
            soft.offers.insert(
                id,
                OfferRec {
                    framework_id: g.framework_id,
                    agent_id: g.agent_id,
                    resources: g.resources,
                    created_ms: now,
                },
            );
        }
        drop(reg);
        for (fw, offers) in per_fw {
            let n = offers.len() as u64;
            let ids: Vec<OfferId> = offers.iter().filter_map(|o| o.id.clone()).collect();
            if Master::send_event(
                &mut soft,
                &fw,
                pb::event::Event::Offers(pb::event::Offers { offers }),
            ) {
                Metrics::add(&self.metrics.offers_sent, n);
            } else {
                for id in ids {
                    soft.offers.remove(&id);
                }
            }
        }
        self.metrics.allocation_cycle.observe(started.elapsed());
    }

    /// Rescinds one offer (its resources return to the pool) and tells its framework.
    pub fn rescind(soft: &mut Soft, metrics: &Metrics, id: &OfferId) {
        if let Some(o) = soft.offers.remove(id) {
            Metrics::inc(&metrics.offers_rescinded);
            Master::send_event(
                soft,
                &o.framework_id,
                pb::event::Event::Rescind(pb::event::Rescind {
                    offer_id: Some(id.clone()),
                }),
            );
        }
    }

    /// Rescinds every offer of an agent (it went away).
    pub fn rescind_agent_offers(soft: &mut Soft, metrics: &Metrics, agent: &AgentId) {
        let ids: Vec<OfferId> = soft
            .offers
            .iter()
            .filter(|(_, o)| &o.agent_id == agent)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            Master::rescind(soft, metrics, &id);
        }
    }

    /// Rescinds offers older than the offer timeout, and drops expired filters.
    pub fn expire_offers(&self) {
        let now = self.now_ms();
        let timeout = self.config.offer_timeout_ms;
        let mut soft = self.soft();
        let old: Vec<OfferId> = soft
            .offers
            .iter()
            .filter(|(_, o)| now.saturating_sub(o.created_ms) >= timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &old {
            Master::rescind(&mut soft, &self.metrics, id);
        }
        for conn in soft.frameworks.values_mut() {
            conn.filters.retain(|_, until| *until > now);
        }
        if !old.is_empty() {
            self.allocate_now.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuse_seconds_validation() {
        assert_eq!(refuse_until(1000, None).unwrap(), 6000);
        let f = pb::Filters {
            refuse_seconds: Some(0.0),
        };
        assert_eq!(refuse_until(1000, Some(&f)).unwrap(), 1000);
        for bad in [-1.0, f64::NAN] {
            let f = pb::Filters {
                refuse_seconds: Some(bad),
            };
            assert!(refuse_until(0, Some(&f)).is_err());
        }
        let f = pb::Filters {
            refuse_seconds: Some(f64::INFINITY),
        };
        assert!(refuse_until(0, Some(&f)).unwrap() > 0);
    }
}
