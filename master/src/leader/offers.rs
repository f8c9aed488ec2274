//! Allocation cycles and offer bookkeeping.

use std::collections::{BTreeMap, HashSet};

use drover_proto::pb;
use drover_proto::{AgentId, FrameworkId, OfferId, Resources};

use super::{Effect, Leader, OfferRec};
use crate::allocator::{self, AgentInput, FrameworkInput};
use crate::error::MasterError;
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
pub fn refuse_until(now_ms: u64, filters: Option<&pb::Filters>) -> Result<u64, MasterError> {
    let secs = filters
        .and_then(|f| f.refuse_seconds)
        .unwrap_or(DEFAULT_REFUSE_SECONDS);
    if secs.is_nan() || secs < 0.0 {
        return Err(MasterError::InvalidArgument(format!(
            "refuse_seconds must be zero or positive, got {secs}"
        )));
    }
    Ok(now_ms + (secs.min(MAX_REFUSE_SECONDS) * 1000.0) as u64)
}

/// Free resources of every connected, active agent, as the allocator may offer them, in
/// agent id order.
fn available(leader: &Leader, reg: &Registry) -> Vec<AgentInput> {
    let mut offered: BTreeMap<&AgentId, Resources> = BTreeMap::new();
    for o in leader.offers.values() {
        offered.entry(&o.agent_id).or_default().add(&o.resources);
    }
    let mut out = Vec::new();
    for id in leader.agents.keys() {
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
        if let Some(p) = leader.pending.get(id) {
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
    out
}

impl Leader {
    /// One allocation cycle: offers every connected agent's free resources following DRF,
    /// one OFFERS event per framework.
    pub fn allocate(&mut self, reg: &Registry, now_ms: u64) -> Vec<Effect> {
        if !self.serving {
            return Vec::new();
        }
        let agents = available(self, reg);
        if agents.is_empty() {
            return Vec::new();
        }
        let mut offered_fw: BTreeMap<&FrameworkId, Resources> = BTreeMap::new();
        for o in self.offers.values() {
            offered_fw
                .entry(&o.framework_id)
                .or_default()
                .add(&o.resources);
        }
        let mut frameworks = Vec::new();
        let mut other: std::collections::HashMap<String, Resources> = Default::default();
        for (id, f) in &reg.frameworks {
            match self.frameworks.get(id) {
                Some(session) => {
                    let mut allocated = f.used.clone();
                    if let Some(o) = offered_fw.get(id) {
                        allocated.add(o);
                    }
                    let filtered_agents: HashSet<AgentId> = session
                        .filters
                        .iter()
                        .filter(|(_, until)| **until > now_ms)
                        .map(|(a, _)| a.clone())
                        .collect();
                    frameworks.push(FrameworkInput {
                        id: id.clone(),
                        role: f.role().to_string(),
                        allocated,
                        suppressed: session.suppressed,
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
        let mut per_fw: BTreeMap<FrameworkId, Vec<pb::Offer>> = BTreeMap::new();
        for g in grants {
            let Some(agent) = reg.agents.get(&g.agent_id) else {
                continue;
            };
            let id = OfferId::new(self.fresh_id());
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
            self.offers.insert(
                id,
                OfferRec {
                    framework_id: g.framework_id,
                    agent_id: g.agent_id,
                    resources: g.resources,
                    created_ms: now_ms,
                },
            );
        }
        // An OFFERS event that cannot be sent disconnects the framework, which takes its
        // offers back (see `Leader::framework_stream_lost`).
        let mut effects: Vec<Effect> = per_fw
            .into_iter()
            .filter_map(|(fw, offers)| {
                self.event(&fw, pb::event::Event::Offers(pb::event::Offers { offers }))
            })
            .collect();
        if !effects.is_empty() {
            // The offers made now all expire together.
            let expiry = now_ms.saturating_add(self.settings.offer_timeout_ms);
            self.wake_by(expiry, now_ms, &mut effects);
        }
        effects
    }

    /// Rescinds one offer (its resources return to the pool) and tells its framework.
    pub(crate) fn rescind(&mut self, id: &OfferId, effects: &mut Vec<Effect>) {
        if let Some(o) = self.offers.remove(id) {
            Metrics::inc(&self.metrics().offers_rescinded);
            effects.extend(self.event(
                &o.framework_id,
                pb::event::Event::Rescind(pb::event::Rescind {
                    offer_id: Some(id.clone()),
                }),
            ));
        }
    }

    /// Rescinds every offer of an agent (it went away).
    pub(crate) fn rescind_agent_offers(&mut self, agent: &AgentId, effects: &mut Vec<Effect>) {
        let ids: Vec<OfferId> = self
            .offers
            .iter()
            .filter(|(_, o)| &o.agent_id == agent)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            self.rescind(&id, effects);
        }
    }

    /// When an offer expires: the offer timeout after it was made.
    pub fn offer_deadline(&self, offer: &OfferRec) -> u64 {
        offer
            .created_ms
            .saturating_add(self.settings.offer_timeout_ms)
    }

    /// Rescinds offers older than the offer timeout, and drops expired filters. (A
    /// filter's expiry is no deadline: allocation cycles ignore expired filters
    /// themselves.)
    pub fn expire_offers(&mut self, now_ms: u64) -> Vec<Effect> {
        let old: Vec<OfferId> = self
            .offers
            .iter()
            .filter(|(_, o)| now_ms >= self.offer_deadline(o))
            .map(|(id, _)| id.clone())
            .collect();
        let mut effects = Vec::new();
        for id in &old {
            self.rescind(id, &mut effects);
        }
        for session in self.frameworks.values_mut() {
            session.filters.retain(|_, until| *until > now_ms);
        }
        if !old.is_empty() {
            effects.push(Effect::Allocate);
        }
        effects
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
