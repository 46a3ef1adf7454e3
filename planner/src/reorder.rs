//! Join order. DataFusion joins tables in the order of the FROM clause; we reorder
//! every region of inner equi-joins by estimated result size (greedy operator
//! ordering: repeatedly join the two connected inputs whose join is smallest), so the
//! most selective joins run first and a large table meets only small, already
//! filtered inputs. Bushy trees are allowed: `nation ⋈ customer ⋈ orders` can be
//! joined before it meets `lineitem`, which then probes one small join table instead
//! of broadcasting a large intermediate result. Estimates come from [`crate::estimate`].

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, NullEquality, Result};
use datafusion::logical_expr::utils::{conjunction, split_conjunction_owned};
use datafusion::logical_expr::{
    Expr, Filter, Join, JoinConstraint, JoinType, LogicalPlan, Projection,
};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};

use crate::estimate;

/// The join-ordering rule (runs among DataFusion's logical optimizer rules, after
/// filters are pushed down).
#[derive(Debug, Default)]
pub struct JoinReorder;

impl OptimizerRule for JoinReorder {
    fn name(&self) -> &str {
        "smrdb_join_reorder"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        None
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        reorder(plan)
    }
}

fn is_region_join(p: &LogicalPlan) -> bool {
    matches!(p, LogicalPlan::Join(j)
        if j.join_type == JoinType::Inner
            && j.null_equality == NullEquality::NullEqualsNothing
            && !j.null_aware)
}

fn flatten(
    p: LogicalPlan,
    leaves: &mut Vec<LogicalPlan>,
    on: &mut Vec<(Expr, Expr)>,
    filters: &mut Vec<Expr>,
) {
    match p {
        LogicalPlan::Join(j) if is_region_join(&LogicalPlan::Join(j.clone())) => {
            on.extend(j.on);
            if let Some(f) = j.filter {
                filters.extend(split_conjunction_owned(f));
            }
            flatten(Arc::unwrap_or_clone(j.left), leaves, on, filters);
            flatten(Arc::unwrap_or_clone(j.right), leaves, on, filters);
        }
        other => leaves.push(other),
    }
}

fn region_size(p: &LogicalPlan) -> usize {
    match p {
        LogicalPlan::Join(j) if is_region_join(p) => region_size(&j.left) + region_size(&j.right),
        _ => 1,
    }
}

/// Reorders the join regions of `plan` (top-down).
fn reorder(plan: LogicalPlan) -> Result<Transformed<LogicalPlan>> {
    if !is_region_join(&plan) || region_size(&plan) < 3 {
        return plan.map_children(reorder);
    }
    let original = plan.clone();
    let mut leaves = Vec::new();
    let mut on = Vec::new();
    let mut filters = Vec::new();
    flatten(plan, &mut leaves, &mut on, &mut filters);
    let leaves = leaves
        .into_iter()
        .map(|l| reorder(l).map(|t| t.data))
        .collect::<Result<Vec<_>>>()?;
    let joined = greedy(leaves, on, filters)?;
    // The region's columns in their original order.
    let out = if joined.schema().columns() == original.schema().columns() {
        joined
    } else {
        let exprs = original
            .schema()
            .columns()
            .into_iter()
            .map(Expr::Column)
            .collect::<Vec<_>>();
        LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(joined))?)
    };
    if out == original {
        Ok(Transformed::no(original))
    } else {
        Ok(Transformed::yes(out))
    }
}

struct Group {
    plan: LogicalPlan,
    rows: f64,
}

fn covers(p: &LogicalPlan, e: &Expr) -> bool {
    let refs = e.column_refs();
    !refs.is_empty() && refs.iter().all(|c: &&Column| p.schema().has_column(c))
}

/// Joins `leaves` greedily: at each step the connected pair with the smallest
/// estimated join; unconnected inputs (cross products) last, smallest first.
fn greedy(
    leaves: Vec<LogicalPlan>,
    on: Vec<(Expr, Expr)>,
    filters: Vec<Expr>,
) -> Result<LogicalPlan> {
    let mut groups: Vec<Group> = leaves
        .into_iter()
        .map(|plan| Group {
            rows: estimate::rows(&plan),
            plan,
        })
        .collect();
    let mut on: Vec<Option<(Expr, Expr)>> = on.into_iter().map(Some).collect();
    let mut filters: Vec<Option<Expr>> = filters.into_iter().map(Some).collect();
    while groups.len() > 1 {
        // (i, j, keys oriented (i side, j side), estimate)
        let mut best: Option<(usize, usize, Vec<usize>, f64)> = None;
        for i in 0..groups.len() {
            for j in i + 1..groups.len() {
                let keys: Vec<usize> = on
                    .iter()
                    .enumerate()
                    .filter_map(|(k, p)| {
                        let (a, b) = p.as_ref()?;
                        let (gi, gj) = (&groups[i].plan, &groups[j].plan);
                        ((covers(gi, a) && covers(gj, b)) || (covers(gj, a) && covers(gi, b)))
                            .then_some(k)
                    })
                    .collect();
                if keys.is_empty() {
                    continue;
                }
                let pairs: Vec<(Expr, Expr)> = keys.iter().filter_map(|&k| on[k].clone()).collect();
                let est = estimate::join_rows(
                    &groups[i].plan,
                    &groups[j].plan,
                    &pairs,
                    groups[i].rows,
                    groups[j].rows,
                );
                if best.as_ref().is_none_or(|b| est < b.3) {
                    best = Some((i, j, keys, est));
                }
            }
        }
        let (i, j, keys, est) = match best {
            Some(b) => b,
            None => {
                // No join predicate connects what is left: a cross product of the two
                // smallest inputs.
                let mut idx: Vec<usize> = (0..groups.len()).collect();
                idx.sort_by(|a, b| groups[*a].rows.total_cmp(&groups[*b].rows));
                let (a, b) = (idx[0].min(idx[1]), idx[0].max(idx[1]));
                let est = groups[a].rows * groups[b].rows;
                (a, b, Vec::new(), est)
            }
        };
        let right = groups.remove(j);
        let left = groups.remove(i);
        let mut join_on = Vec::new();
        for k in keys {
            if let Some((a, b)) = on[k].take() {
                if covers(&left.plan, &a) {
                    join_on.push((a, b));
                } else {
                    join_on.push((b, a));
                }
            }
        }
        // Conditions now fully inside the new group: remaining join keys between
        // inputs already joined (cycles) and filters.
        let both = |e: &Expr| {
            e.column_refs()
                .iter()
                .all(|c| left.plan.schema().has_column(c) || right.plan.schema().has_column(c))
        };
        let mut conds = Vec::new();
        for p in on.iter_mut() {
            if let Some((a, b)) = p {
                if both(a) && both(b) {
                    let (a, b) = p.take().unwrap_or_else(|| unreachable!());
                    conds.push(a.eq(b));
                }
            }
        }
        for f in filters.iter_mut() {
            if f.as_ref().is_some_and(|e| both(e)) {
                conds.extend(f.take());
            }
        }
        let filter = conjunction(conds);
        let plan = LogicalPlan::Join(Join::try_new(
            Arc::new(left.plan),
            Arc::new(right.plan),
            join_on,
            filter,
            JoinType::Inner,
            JoinConstraint::On,
            NullEquality::NullEqualsNothing,
            false,
        )?);
        groups.insert(
            i,
            Group {
                rows: est.max(1.0),
                plan,
            },
        );
    }
    let mut plan = groups.pop().map(|g| g.plan).ok_or_else(|| {
        datafusion::common::DataFusionError::Internal("a join region without inputs".into())
    })?;
    let rest: Vec<Expr> = filters
        .into_iter()
        .flatten()
        .chain(on.into_iter().flatten().map(|(a, b)| a.eq(b)))
        .collect();
    if let Some(f) = conjunction(rest) {
        plan = LogicalPlan::Filter(Filter::try_new(f, Arc::new(plan))?);
    }
    Ok(plan)
}
