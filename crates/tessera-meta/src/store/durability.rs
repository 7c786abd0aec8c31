//! Durability bookkeeping in the state machine: the stripe index (stripe
//! -> owner, node -> shards), the repair queue and its leases, repair
//! compare-and-set commits, GC leases, and the figures for status pages.
//!
//! Every function here runs inside the single applier, reads the state
//! before the entry being applied, and writes into that entry's
//! [`Writes`]. Queue changes of one entry are collected in [`Effects`]
//! first, so that several changes to one stripe's item within an entry
//! (a report of two bad shards, a node going down) merge into one item.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use tessera_types::meta::{MetaError, MetaReply};
use tessera_types::repair::{
    check_shard_list, DurabilityStatus, GcLease, ProblemKind, RepairConfig, RepairItem,
    RepairOutcome, RepairReason, RepairTask, ShardLiveness, ShardProblem, StripeOwner,
};
use tessera_types::{
    NodeId, NodeState, ObjectData, ObjectManifest, ShardEntry, Stripe, StripeId, UnixMillis,
};

use super::state_machine::{
    object_key, part_key, push_gc_stripes, time_key, GcItem, SmTrees, Writes,
};
use super::{dec, enc};
use crate::MetaNodeError;
use tessera_types::meta::PartRecord;

pub(crate) const META_REPAIR_CONFIG: &[u8] = b"repair_config";
pub(crate) const META_REPAIRED: &[u8] = b"repaired";
/// Bumped whenever a node the map never had is added.
pub(crate) const META_REBALANCE_WANTED: &[u8] = b"rebalance_wanted";
/// The `wanted` value when the pass in progress started.
pub(crate) const META_REBALANCE_STARTED: &[u8] = b"rebalance_started";
/// The `wanted` value the last complete pass covered.
pub(crate) const META_REBALANCE_DONE: &[u8] = b"rebalance_done";

/// Longest back-off after failed repair attempts.
const MAX_BACKOFF_MS: i64 = 60_000;

/// Key of a shard in the node index: `node \0 stripe id index`.
pub fn node_shard_key(node: &NodeId, stripe: &StripeId, index: u8) -> Vec<u8> {
    let mut k = Vec::with_capacity(node.as_str().len() + 18);
    k.extend_from_slice(node.as_str().as_bytes());
    k.push(0);
    k.extend_from_slice(&stripe.0);
    k.push(index);
    k
}

/// Prefix of every shard of `node` in the node index.
fn node_prefix(node: &NodeId) -> Vec<u8> {
    let mut k = node.as_str().as_bytes().to_vec();
    k.push(0);
    k
}

/// Key of a repair queue item: riskiest (fewest surviving) first, then
/// oldest first.
fn queue_key(item: &RepairItem) -> Vec<u8> {
    let mut k = Vec::with_capacity(25);
    k.push(item.surviving);
    k.extend_from_slice(&time_key(item.queued_at));
    k.extend_from_slice(&item.stripe.0);
    k
}

/// Shards of `stripe` that count as surviving: on a node that is up,
/// suspect or draining, and not reported bad.
pub fn surviving(stripe: &Stripe, bad: &[(u8, NodeId)], states: &HashMap<NodeId, NodeState>) -> u8 {
    stripe
        .shards
        .iter()
        .filter(|s| {
            matches!(
                states.get(&s.node),
                Some(NodeState::Up | NodeState::Suspect | NodeState::Draining)
            ) && !bad.iter().any(|(i, n)| *i == s.index && *n == s.node)
        })
        .count() as u8
}

/// Repair-queue changes of one entry, by stripe (`None` = remove).
#[derive(Default)]
pub(crate) struct Effects {
    /// Node states as the entry sees them: the trees' (shared with the
    /// cache, see [`SmTrees::node_states`]) until the entry overrides one.
    states: Option<Arc<NodeStates>>,
    queue: BTreeMap<StripeId, Option<RepairItem>>,
}

/// The state of every node in the cluster map.
pub(crate) type NodeStates = HashMap<NodeId, NodeState>;

impl SmTrees {
    fn states<'a>(&self, fx: &'a mut Effects) -> Result<&'a NodeStates, MetaNodeError> {
        let states = match fx.states.take() {
            Some(s) => s,
            None => self.node_states()?,
        };
        Ok(fx.states.insert(states))
    }

    /// Overrides one node's state for the rest of the entry (the entry
    /// that changes it).
    pub(crate) fn set_state_in(
        &self,
        fx: &mut Effects,
        id: &NodeId,
        state: Option<NodeState>,
    ) -> Result<(), MetaNodeError> {
        self.states(fx)?;
        if let Some(map) = fx.states.as_mut().map(Arc::make_mut) {
            match state {
                Some(s) => {
                    map.insert(id.clone(), s);
                }
                None => {
                    map.remove(id);
                }
            }
        }
        Ok(())
    }

    pub fn stripe_owner(&self, id: &StripeId) -> Result<Option<StripeOwner>, MetaNodeError> {
        Self::get(&self.stripes, &id.0)
    }

    /// The queued item of `id` as this entry sees it.
    fn queued(&self, fx: &Effects, id: &StripeId) -> Result<Option<RepairItem>, MetaNodeError> {
        if let Some(v) = fx.queue.get(id) {
            return Ok(v.clone());
        }
        let Some(qk) = self.repair_idx.get(id.0)? else {
            return Ok(None);
        };
        Self::get(&self.repair, &qk)
    }

    /// Queues `stripe` (or updates its item) for `reason`, adding `bad`.
    pub(crate) fn enqueue(
        &self,
        fx: &mut Effects,
        stripe: &Stripe,
        owner: &StripeOwner,
        reason: RepairReason,
        bad: Option<(u8, NodeId)>,
        at: UnixMillis,
    ) -> Result<(), MetaNodeError> {
        let mut item = self.queued(fx, &stripe.id)?.unwrap_or(RepairItem {
            stripe: stripe.id,
            owner: owner.clone(),
            surviving: 0,
            bad: Vec::new(),
            reasons: Vec::new(),
            queued_at: at,
            attempts: 0,
            lease: None,
            not_before: 0,
            requeued: false,
        });
        // A holder that leased the item before this reason judges the
        // stripe without it: see `RepairItem::requeued`.
        item.requeued |= item.lease.is_some();
        item.owner = owner.clone();
        if !item.reasons.contains(&reason) {
            item.reasons.push(reason);
        }
        if let Some(b) = bad {
            if !item.bad.contains(&b) {
                item.bad.push(b);
            }
        }
        // Bad marks of shards the stripe no longer has are stale.
        item.bad
            .retain(|(i, n)| stripe.shards.iter().any(|s| s.index == *i && s.node == *n));
        item.surviving = surviving(stripe, &item.bad, self.states(fx)?);
        fx.queue.insert(stripe.id, Some(item));
        Ok(())
    }

    /// Adds `stripes` of `owner` to the index, queueing any that is not
    /// whole (short writes, shards on nodes that are down).
    pub(crate) fn index_add(
        &self,
        w: &mut Writes,
        fx: &mut Effects,
        owner: &StripeOwner,
        stripes: &[Stripe],
        at: UnixMillis,
    ) -> Result<(), MetaNodeError> {
        for stripe in stripes {
            w.stripes.insert(&stripe.id.0, enc(owner));
            for s in &stripe.shards {
                w.node_shards
                    .insert(node_shard_key(&s.node, &stripe.id, s.index), &[]);
            }
            let alive = surviving(stripe, &[], self.states(fx)?) as usize;
            let total = stripe.class.total_shards();
            if alive < total {
                let reason = if stripe.shards.len() < total {
                    RepairReason::ShortWrite
                } else {
                    let states = self.states(fx)?;
                    let down = stripe
                        .shards
                        .iter()
                        .find(|s| {
                            !matches!(
                                states.get(&s.node),
                                Some(NodeState::Up | NodeState::Suspect | NodeState::Draining)
                            )
                        })
                        .map(|s| s.node.clone())
                        .unwrap_or_else(|| NodeId::from(""));
                    RepairReason::NodeDown(down)
                };
                self.enqueue(fx, stripe, owner, reason, None, at)?;
            } else if let Some(item) = self.queued(fx, &stripe.id)? {
                // An owner change (a completed upload): keep the item.
                let mut item = item;
                item.owner = owner.clone();
                fx.queue.insert(stripe.id, Some(item));
            }
        }
        Ok(())
    }

    /// Removes `stripes` from the index and the repair queue (they are
    /// garbage now).
    pub(crate) fn index_remove(&self, w: &mut Writes, fx: &mut Effects, stripes: &[Stripe]) {
        for stripe in stripes {
            w.stripes.remove(&stripe.id.0);
            for s in &stripe.shards {
                w.node_shards
                    .remove(node_shard_key(&s.node, &stripe.id, s.index));
            }
            fx.queue.insert(stripe.id, None);
        }
    }

    /// Writes the queue changes of the entry.
    pub(crate) fn flush_effects(&self, w: &mut Writes, fx: Effects) -> Result<(), MetaNodeError> {
        for (id, item) in fx.queue {
            if let Some(old) = self.repair_idx.get(id.0)? {
                w.repair.remove(old);
            }
            match item {
                Some(item) => {
                    let qk = queue_key(&item);
                    w.repair.insert(qk.clone(), enc(&item));
                    w.repair_idx.insert(&id.0, qk);
                }
                None => w.repair_idx.remove(&id.0),
            }
        }
        Ok(())
    }

    /// Every stripe of an owner's container (manifest or part).
    fn owner_stripes(&self, owner: &StripeOwner) -> Result<Vec<Stripe>, MetaNodeError> {
        Ok(match owner {
            StripeOwner::Object { bucket, key } => self
                .object(bucket, key)?
                .map(|m| m.stripes().cloned().collect())
                .unwrap_or_default(),
            StripeOwner::Part {
                upload_id, number, ..
            } => {
                let rec: Option<PartRecord> =
                    Self::get(&self.parts, &part_key(upload_id, *number))?;
                rec.map(|r| r.part.stripes).unwrap_or_default()
            }
        })
    }

    /// The stripe `id` as `owner` holds it now.
    pub fn owned_stripe(
        &self,
        owner: &StripeOwner,
        id: &StripeId,
    ) -> Result<Option<Stripe>, MetaNodeError> {
        Ok(self.owner_stripes(owner)?.into_iter().find(|s| s.id == *id))
    }

    /// Replaces the shard list of stripe `id` in its owner's container.
    fn set_shards(
        &self,
        w: &mut Writes,
        owner: &StripeOwner,
        id: &StripeId,
        shards: &[ShardEntry],
    ) -> Result<(), MetaNodeError> {
        let replace = |stripes: &mut Vec<Stripe>| {
            for s in stripes.iter_mut().filter(|s| s.id == *id) {
                s.shards = shards.to_vec();
            }
        };
        match owner {
            StripeOwner::Object { bucket, key } => {
                if let Some(mut m) = self.object(bucket, key)? {
                    if let ObjectData::Parts(parts) = &mut m.data {
                        for p in parts.iter_mut() {
                            replace(&mut p.stripes);
                        }
                    }
                    w.objects.insert(object_key(bucket, key), enc(&m));
                }
            }
            StripeOwner::Part {
                upload_id, number, ..
            } => {
                let pk = part_key(upload_id, *number);
                let rec: Option<PartRecord> = Self::get(&self.parts, &pk)?;
                if let Some(mut rec) = rec {
                    replace(&mut rec.part.stripes);
                    w.parts.insert(pk, enc(&rec));
                }
            }
        }
        Ok(())
    }

    /// A node changed state: a node that went down has every stripe it
    /// holds queued; a node being drained has them queued to move.
    pub(crate) fn node_state_changed(
        &self,
        fx: &mut Effects,
        id: &NodeId,
        old: NodeState,
        new: NodeState,
        at: UnixMillis,
    ) -> Result<(), MetaNodeError> {
        self.set_state_in(fx, id, Some(new))?;
        let reason = match (old, new) {
            (NodeState::Down, NodeState::Down) => return Ok(()),
            (_, NodeState::Down) => RepairReason::NodeDown(id.clone()),
            (NodeState::Draining, NodeState::Draining) => return Ok(()),
            (_, NodeState::Draining) => RepairReason::Drain(id.clone()),
            _ => return Ok(()),
        };
        self.queue_node(fx, id, reason, at)
    }

    /// Queues every stripe with a shard on `node`.
    pub(crate) fn queue_node(
        &self,
        fx: &mut Effects,
        node: &NodeId,
        reason: RepairReason,
        at: UnixMillis,
    ) -> Result<(), MetaNodeError> {
        let mut cache: HashMap<StripeOwner, Vec<Stripe>> = HashMap::new();
        let prefix = node_prefix(node);
        for item in self.node_shards.scan_prefix(&prefix) {
            let (k, _) = item?;
            let Some(id) = StripeId::from_slice(&k[prefix.len()..k.len().saturating_sub(1)]) else {
                continue;
            };
            let Some(owner) = self.stripe_owner(&id)? else {
                continue;
            };
            if let Some(stripe) = self.cached_stripe(&mut cache, &owner, &id)? {
                self.enqueue(fx, &stripe, &owner, reason.clone(), None, at)?;
            }
        }
        Ok(())
    }

    /// Stripe `id` of `owner`, loading each owner's container once per
    /// entry (a large object has many stripes on a node).
    fn cached_stripe(
        &self,
        cache: &mut HashMap<StripeOwner, Vec<Stripe>>,
        owner: &StripeOwner,
        id: &StripeId,
    ) -> Result<Option<Stripe>, MetaNodeError> {
        if !cache.contains_key(owner) {
            let stripes = self.owner_stripes(owner)?;
            cache.insert(owner.clone(), stripes);
        }
        Ok(cache
            .get(owner)
            .and_then(|v| v.iter().find(|s| s.id == *id))
            .cloned())
    }

    /// ReportShards: queue each reported shard's stripe if the report is
    /// about the shard the stripe has now.
    pub(crate) fn report_shards(
        &self,
        fx: &mut Effects,
        problems: &[ShardProblem],
        at: UnixMillis,
    ) -> Result<MetaReply, MetaNodeError> {
        for p in problems {
            let Some(owner) = self.stripe_owner(&p.stripe)? else {
                continue;
            };
            let Some(stripe) = self.owned_stripe(&owner, &p.stripe)? else {
                continue;
            };
            if !stripe
                .shards
                .iter()
                .any(|s| s.index == p.index && s.node == p.node)
            {
                continue;
            }
            // An unreachable node is the failure detector's business; the
            // worker checks the shard and rebuilds it if it is gone.
            let bad = match p.kind {
                ProblemKind::Missing | ProblemKind::Corrupt => Some((p.index, p.node.clone())),
                ProblemKind::Unreachable => None,
            };
            self.enqueue(fx, &stripe, &owner, RepairReason::Reported(p.kind), bad, at)?;
        }
        Ok(MetaReply::Ok)
    }

    /// LeaseRepairs: see [`tessera_types::meta::MetaCommand::LeaseRepairs`].
    pub(crate) fn lease_repairs(
        &self,
        fx: &mut Effects,
        worker: &str,
        max: u32,
        lease_ms: u64,
        at: UnixMillis,
    ) -> Result<MetaReply, MetaNodeError> {
        let mut out = Vec::new();
        for entry in self.repair.iter() {
            if out.len() >= max as usize {
                break;
            }
            let (_, v) = entry?;
            let mut item: RepairItem = dec(&v)?;
            if item.lease.as_ref().is_some_and(|(_, until)| *until > at) || item.not_before > at {
                continue;
            }
            let current = match self.stripe_owner(&item.stripe)? {
                Some(owner) => self.owned_stripe(&owner, &item.stripe)?.map(|s| (owner, s)),
                None => None,
            };
            let Some((owner, stripe)) = current else {
                // Garbage now: no manifest references it.
                fx.queue.insert(item.stripe, None);
                continue;
            };
            item.owner = owner;
            item.lease = Some((worker.to_string(), at.saturating_add(lease_ms as i64)));
            item.requeued = false;
            fx.queue.insert(item.stripe, Some(item.clone()));
            out.push(RepairTask { item, stripe });
        }
        Ok(MetaReply::Repairs(out))
    }

    /// CommitRepair: see [`tessera_types::meta::MetaCommand::CommitRepair`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn commit_repair(
        &self,
        w: &mut Writes,
        fx: &mut Effects,
        index: u64,
        owner: &StripeOwner,
        id: &StripeId,
        expected: &[ShardEntry],
        shards: &[ShardEntry],
        bytes: u64,
        at: UnixMillis,
    ) -> Result<MetaReply, MetaNodeError> {
        let current = if self.stripe_owner(id)?.as_ref() == Some(owner) {
            self.owned_stripe(owner, id)?
        } else {
            None
        };
        let fresh = |e: &ShardEntry| !expected.contains(e);
        let refuse = |w: &mut Writes, err: MetaError| {
            // The rebuilt shards are referenced by nothing: collect them.
            if let Some(stripe) = &current {
                let new: Vec<ShardEntry> = shards
                    .iter()
                    .filter(|e| fresh(e) && !stripe.shards.contains(e))
                    .cloned()
                    .collect();
                let garbage = Stripe {
                    shards: new,
                    ..stripe.clone()
                };
                gc_shards(w, index, at, owner, garbage);
            }
            MetaReply::Err(err)
        };
        let Some(stripe) = current.clone() else {
            // The stripe is gone (overwritten, deleted): drop the item. Its
            // rebuilt shards are orphans on their nodes; the orphan scan
            // collects them (their stripe is in no manifest).
            fx.queue.insert(*id, None);
            return Ok(MetaReply::Err(MetaError::PreconditionFailed));
        };
        if stripe.shards != expected {
            // Changed meanwhile: let the item be leased again afresh.
            if let Some(mut item) = self.queued(fx, id)? {
                item.lease = None;
                item.requeued = false;
                fx.queue.insert(*id, Some(item));
            }
            return Ok(refuse(w, MetaError::PreconditionFailed));
        }
        if let Err(e) = check_shard_list(&stripe, shards) {
            return Ok(refuse(w, MetaError::Invalid(e)));
        }
        let mut new_shards = shards.to_vec();
        new_shards.sort_by_key(|s| s.index);
        self.set_shards(w, owner, id, &new_shards)?;
        for old in expected.iter().filter(|e| !new_shards.contains(e)) {
            w.node_shards
                .remove(node_shard_key(&old.node, id, old.index));
        }
        for new in new_shards.iter().filter(|e| fresh(e)) {
            w.node_shards
                .insert(node_shard_key(&new.node, id, new.index), &[]);
        }
        let replaced: Vec<ShardEntry> = expected
            .iter()
            .filter(|e| !new_shards.contains(e))
            .cloned()
            .collect();
        gc_shards(
            w,
            index,
            at,
            owner,
            Stripe {
                shards: replaced,
                ..stripe.clone()
            },
        );
        let (mut n, mut b): (u64, u64) = Self::get(&self.meta, META_REPAIRED)?.unwrap_or((0, 0));
        n += 1;
        b += bytes;
        w.meta.insert(META_REPAIRED, enc(&(n, b)));
        // Still not whole (not every shard could be placed)? Stay queued.
        let updated = Stripe {
            shards: new_shards,
            ..stripe
        };
        let again = self.queued(fx, id)?.filter(|item| item.requeued);
        fx.queue.insert(*id, None);
        if let Some(mut item) = again {
            // Queued again while this repair ran (a rebalance pass for a
            // node the worker did not know yet, a new report): the repair
            // was planned without that, so the item stays for a fresh look.
            item.lease = None;
            item.requeued = false;
            item.bad
                .retain(|(i, n)| updated.shards.iter().any(|s| s.index == *i && s.node == *n));
            item.surviving = surviving(&updated, &item.bad, self.states(fx)?);
            fx.queue.insert(*id, Some(item));
        }
        let states = self.states(fx)?;
        let alive = surviving(&updated, &[], states) as usize;
        let draining = updated
            .shards
            .iter()
            .find(|s| states.get(&s.node) == Some(&NodeState::Draining))
            .map(|s| s.node.clone());
        if alive < updated.class.total_shards() {
            self.enqueue(fx, &updated, owner, RepairReason::ShortWrite, None, at)?;
        } else if let Some(node) = draining {
            // Lost shards were placed but a move was not: keep draining.
            self.enqueue(fx, &updated, owner, RepairReason::Drain(node), None, at)?;
        }
        Ok(MetaReply::Ok)
    }

    /// QueueRebalance: see [`tessera_types::meta::MetaCommand::QueueRebalance`].
    pub(crate) fn queue_rebalance(
        &self,
        w: &mut Writes,
        fx: &mut Effects,
        after: Option<StripeId>,
        max: u32,
        at: UnixMillis,
    ) -> Result<MetaReply, MetaNodeError> {
        let reply = self.queue_rebalance_batch(fx, after, max, at)?;
        // Pass bookkeeping: a pass starts with `after: None` and covers the
        // additions wanted then; it is done when the cursor runs out.
        let (wanted, _) = self.rebalance_state()?;
        let started = if after.is_none() {
            w.meta.insert(META_REBALANCE_STARTED, enc(&wanted));
            wanted
        } else {
            Self::get(&self.meta, META_REBALANCE_STARTED)?.unwrap_or(0)
        };
        if reply == MetaReply::Cursor(None) {
            w.meta.insert(META_REBALANCE_DONE, enc(&started));
        }
        Ok(reply)
    }

    /// (wanted, done) of rebalance passes: a pass is due while wanted > done.
    pub fn rebalance_state(&self) -> Result<(u64, u64), MetaNodeError> {
        Ok((
            Self::get(&self.meta, META_REBALANCE_WANTED)?.unwrap_or(0),
            Self::get(&self.meta, META_REBALANCE_DONE)?.unwrap_or(0),
        ))
    }

    fn queue_rebalance_batch(
        &self,
        fx: &mut Effects,
        after: Option<StripeId>,
        max: u32,
        at: UnixMillis,
    ) -> Result<MetaReply, MetaNodeError> {
        let range = match after {
            Some(id) => self.stripes.range((
                std::ops::Bound::Excluded(id.0.to_vec()),
                std::ops::Bound::Unbounded,
            )),
            None => self.stripes.iter(),
        };
        let mut last = None;
        let mut cache: HashMap<StripeOwner, Vec<Stripe>> = HashMap::new();
        for (seen, entry) in range.enumerate() {
            if seen >= max.max(1) as usize {
                return Ok(MetaReply::Cursor(last));
            }
            let (k, v) = entry?;
            let Some(id) = StripeId::from_slice(&k) else {
                continue;
            };
            last = Some(id);
            let owner: StripeOwner = dec(&v)?;
            if let Some(stripe) = self.cached_stripe(&mut cache, &owner, &id)? {
                self.enqueue(fx, &stripe, &owner, RepairReason::Rebalance, None, at)?;
            }
        }
        Ok(MetaReply::Cursor(None))
    }

    /// ReleaseRepair: see [`RepairOutcome`].
    pub(crate) fn release_repair(
        &self,
        fx: &mut Effects,
        worker: &str,
        id: &StripeId,
        outcome: RepairOutcome,
        at: UnixMillis,
    ) -> Result<MetaReply, MetaNodeError> {
        let Some(mut item) = self.queued(fx, id)? else {
            return Ok(MetaReply::Ok);
        };
        let holder_ok = match &item.lease {
            Some((holder, until)) => holder == worker || *until <= at,
            None => true,
        };
        if !holder_ok {
            return Ok(MetaReply::Err(MetaError::PreconditionFailed));
        }
        let again = std::mem::take(&mut item.requeued);
        let retry = match outcome {
            // The worker judged the stripe whole with the cluster map it
            // had, which may predate a drain or a node going down (reasons
            // added to the item while it was leased). Meta's node states
            // are authoritative: a stripe still short of live shards, or
            // with a shard on a draining node, stays queued.
            RepairOutcome::Done => match self.stripe_owner(id)? {
                Some(owner) => match self.owned_stripe(&owner, id)? {
                    Some(stripe) => {
                        let states = self.states(fx)?;
                        let short = (surviving(&stripe, &[], states) as usize)
                            < stripe.class.total_shards();
                        let draining = stripe
                            .shards
                            .iter()
                            .any(|s| states.get(&s.node) == Some(&NodeState::Draining));
                        if short || draining {
                            item.surviving = surviving(&stripe, &item.bad, states);
                        }
                        short || draining
                    }
                    None => false,
                },
                None => false,
            },
            RepairOutcome::Failed => true,
        };
        if retry {
            item.attempts = item.attempts.saturating_add(1);
            item.lease = None;
            let backoff = 1000i64
                .saturating_mul(1i64 << item.attempts.min(16))
                .min(MAX_BACKOFF_MS);
            item.not_before = at.saturating_add(backoff);
            fx.queue.insert(*id, Some(item));
        } else if again {
            // Queued again while leased: the verdict predates that; no
            // back-off, nothing failed.
            item.lease = None;
            fx.queue.insert(*id, Some(item));
        } else {
            fx.queue.insert(*id, None);
        }
        Ok(MetaReply::Ok)
    }

    /// LeaseGc: items queued before `before`, not leased, oldest first.
    /// Shards that a live manifest places on the same node again are left
    /// out (never delete a live shard).
    pub(crate) fn lease_gc(
        &self,
        w: &mut Writes,
        worker: &str,
        max: u32,
        before: UnixMillis,
        lease_ms: u64,
        at: UnixMillis,
    ) -> Result<MetaReply, MetaNodeError> {
        let mut out = Vec::new();
        for entry in self.gc.iter() {
            if out.len() >= max as usize {
                break;
            }
            let (k, v) = entry?;
            let mut item: GcItem = dec(&v)?;
            if item.at >= before {
                break;
            }
            if item.lease.as_ref().is_some_and(|(_, until)| *until > at) {
                continue;
            }
            item.lease = Some((worker.to_string(), at.saturating_add(lease_ms as i64)));
            w.gc.insert(k.clone(), enc(&item));
            let mut stripes = Vec::with_capacity(item.stripes.len());
            for mut s in item.stripes {
                let mut keep = Vec::with_capacity(s.shards.len());
                for e in s.shards {
                    if !self
                        .node_shards
                        .contains_key(node_shard_key(&e.node, &s.id, e.index))?
                    {
                        keep.push(e);
                    }
                }
                s.shards = keep;
                stripes.push(s);
            }
            out.push(GcLease {
                key: k.to_vec(),
                at: item.at,
                stripes,
            });
        }
        Ok(MetaReply::Gc(out))
    }

    /// ReleaseLeases: clears `worker`'s leases.
    pub(crate) fn release_leases(
        &self,
        w: &mut Writes,
        fx: &mut Effects,
        worker: &str,
        repairs: bool,
        gc: bool,
    ) -> Result<MetaReply, MetaNodeError> {
        let held = |l: &Option<(String, UnixMillis)>| l.as_ref().is_some_and(|(h, _)| h == worker);
        if repairs {
            for entry in self.repair.iter() {
                let (_, v) = entry?;
                let mut item: RepairItem = dec(&v)?;
                if held(&item.lease) {
                    item.lease = None;
                    item.requeued = false;
                    fx.queue.insert(item.stripe, Some(item));
                }
            }
        }
        if gc {
            for entry in self.gc.iter() {
                let (k, v) = entry?;
                let mut item: GcItem = dec(&v)?;
                if held(&item.lease) {
                    item.lease = None;
                    w.gc.insert(k, enc(&item));
                }
            }
        }
        Ok(MetaReply::Ok)
    }

    pub(crate) fn ack_gc(&self, w: &mut Writes, keys: &[Vec<u8>]) -> MetaReply {
        for k in keys {
            w.gc.remove(k.as_slice());
        }
        MetaReply::Ok
    }

    pub fn repair_config(&self) -> Result<RepairConfig, MetaNodeError> {
        Ok(Self::get(&self.meta, META_REPAIR_CONFIG)?.unwrap_or_default())
    }

    /// The figures of `tessera admin status`.
    pub fn durability_status(&self) -> Result<DurabilityStatus, MetaNodeError> {
        // Counts kept as writes commit; only the repair queue (as long as
        // the backlog, not the data) is scanned.
        let counts = self.counts();
        let mut st = DurabilityStatus {
            stripes: counts.stripes,
            gc_items: counts.gc_items,
            gc_stripes: counts.gc_stripes,
            shards_by_node: counts
                .node_shards
                .into_iter()
                .map(|(k, n)| (NodeId(String::from_utf8_lossy(&k).into_owned()), n))
                .collect(),
            config: self.repair_config()?,
            ..Default::default()
        };
        let mut by: BTreeMap<u8, u64> = BTreeMap::new();
        let now = tessera_types::now_millis();
        for entry in self.repair.iter() {
            let (_, v) = entry?;
            let item: RepairItem = dec(&v)?;
            st.queued += 1;
            *by.entry(item.surviving).or_default() += 1;
            if item.lease.as_ref().is_some_and(|(_, until)| *until > now) {
                st.leased += 1;
            }
            if let Some(owner) = self.stripe_owner(&item.stripe)? {
                if let Some(s) = self.owned_stripe(&owner, &item.stripe)? {
                    if (item.surviving as usize) < s.class.k as usize {
                        st.at_risk_unreadable += 1;
                    }
                }
            }
        }
        st.queued_by_surviving = by.into_iter().collect();
        let (n, b): (u64, u64) = Self::get(&self.meta, META_REPAIRED)?.unwrap_or((0, 0));
        st.repaired_stripes = n;
        st.repaired_bytes = b;
        Ok(st)
    }

    /// ShardsLive: whether a live manifest places each shard on `node`.
    pub fn shards_live(
        &self,
        node: &NodeId,
        shards: &[ShardLiveness],
    ) -> Result<Vec<bool>, MetaNodeError> {
        shards
            .iter()
            .map(|s| {
                Ok(self
                    .node_shards
                    .contains_key(node_shard_key(node, &s.stripe, s.index))?)
            })
            .collect()
    }

    /// NodeShards: a page of the shards placed on `node`.
    pub fn node_shards_page(
        &self,
        node: &NodeId,
        after: Option<&ShardLiveness>,
        max: u32,
    ) -> Result<Vec<ShardLiveness>, MetaNodeError> {
        let prefix = node_prefix(node);
        let lower = match after {
            Some(a) => std::ops::Bound::Excluded(node_shard_key(node, &a.stripe, a.index)),
            None => std::ops::Bound::Included(prefix.clone()),
        };
        let mut out = Vec::new();
        for entry in self.node_shards.range((lower, std::ops::Bound::Unbounded)) {
            if out.len() >= max.clamp(1, 10_000) as usize {
                break;
            }
            let (k, _) = entry?;
            if !k.starts_with(&prefix) || k.len() != prefix.len() + 17 {
                break;
            }
            let Some(stripe) = StripeId::from_slice(&k[prefix.len()..prefix.len() + 16]) else {
                break;
            };
            out.push(ShardLiveness {
                stripe,
                index: k[prefix.len() + 16],
            });
        }
        Ok(out)
    }

    /// The first `max` items in queue order.
    pub fn repair_queue(&self, max: u32) -> Result<Vec<RepairItem>, MetaNodeError> {
        let mut out = Vec::new();
        for entry in self.repair.iter().take(max as usize) {
            let (_, v) = entry?;
            out.push(dec(&v)?);
        }
        Ok(out)
    }

    /// Shards the node index has for `node`.
    pub fn node_shard_count(&self, node: &NodeId) -> usize {
        self.node_shards.scan_prefix(node_prefix(node)).count()
    }
}

/// Queues the shards of `garbage` (one stripe) for deletion.
fn gc_shards(w: &mut Writes, index: u64, at: UnixMillis, owner: &StripeOwner, garbage: Stripe) {
    if garbage.shards.is_empty() {
        return;
    }
    let (bucket, key, version) = match owner {
        StripeOwner::Object { bucket, key } => (bucket.as_str(), key.as_str(), "repair"),
        StripeOwner::Part {
            bucket,
            key,
            upload_id,
            ..
        } => (bucket.as_str(), key.as_str(), upload_id.as_str()),
    };
    push_gc_stripes(w, index, 0, at, bucket, key, version, &[garbage]);
}

/// The owner of an object's stripes.
pub fn object_owner(m: &ObjectManifest) -> StripeOwner {
    StripeOwner::Object {
        bucket: m.bucket.clone(),
        key: m.key.clone(),
    }
}

/// Stripe ids of a manifest.
pub fn stripe_ids(m: &ObjectManifest) -> HashSet<StripeId> {
    m.stripes().map(|s| s.id).collect()
}
