//! [`SmrdbCodec`]: `datafusion-proto`'s extension codec for smrdb's plan leaves, and
//! plan (de)serialization with it.

use std::sync::Arc;

use arrow_schema::{Schema, SchemaRef};
use datafusion_common::{DataFusionError, Result, ScalarValue};
use datafusion_execution::TaskContext;
use datafusion_expr::Operator;
use datafusion_physical_expr::expressions::{BinaryExpr, Literal, NegativeExpr};
use datafusion_physical_expr::{LexOrdering, PhysicalExpr};
use datafusion_physical_plan::ExecutionPlan;
use datafusion_proto::physical_plan::from_proto::{
    parse_physical_expr_with_converter, parse_physical_sort_exprs,
};
use datafusion_proto::physical_plan::to_proto::{
    serialize_physical_expr_with_converter, serialize_physical_sort_exprs,
};
use datafusion_proto::physical_plan::{
    PhysicalExtensionCodec, PhysicalPlanDecodeContext, PhysicalPlanNodeExt,
    PhysicalProtoConverterExtension,
};
use datafusion_proto::protobuf;
use prost::Message;
use serde::{Deserialize, Serialize};

use super::{ExchangeExec, MergePartitionsExec, SliceScanExec};

/// Version of the extension-node payload.
const NODE_VERSION: u8 = 2;

/// Serializes [`SliceScanExec`], [`ExchangeExec`] and [`MergePartitionsExec`] (a
/// version byte, then a postcard-encoded description; schemas as protobuf).
#[derive(Debug, Default, Clone, Copy)]
pub struct SmrdbCodec;

#[derive(Serialize, Deserialize)]
enum Node {
    SliceScan {
        table: String,
        alias: Option<String>,
        schema: Vec<u8>,
        projection: Option<Vec<usize>>,
        limit: Option<usize>,
    },
    Exchange {
        id: u16,
        kind: String,
        schema: Vec<u8>,
        partitions: usize,
        /// The order of every partition's rows: a protobuf
        /// `PhysicalSortExprNodeCollection` over `schema`.
        ordering: Option<Vec<u8>>,
    },
    Merge,
}

fn err(msg: impl Into<String>) -> DataFusionError {
    DataFusionError::Plan(msg.into())
}

fn schema_bytes(s: &SchemaRef) -> Result<Vec<u8>> {
    let p = protobuf::Schema::try_from(s.as_ref())
        .map_err(|e| err(format!("cannot encode a schema: {e}")))?;
    Ok(p.encode_to_vec())
}

fn schema_from(b: &[u8]) -> Result<SchemaRef> {
    let p = protobuf::Schema::decode(b).map_err(|e| err(format!("bad schema: {e}")))?;
    Ok(Arc::new(
        Schema::try_from(&p).map_err(|e| err(format!("bad schema: {e}")))?,
    ))
}

/// Most partitions an exchange may declare (a gather's producers, 64 K Tstores).
const MAX_PARTITIONS: usize = 1 << 16;

impl PhysicalExtensionCodec for SmrdbCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let Some((&v, rest)) = buf.split_first() else {
            return Err(err("empty extension node"));
        };
        if v != NODE_VERSION {
            return Err(err(format!(
                "extension node version {v} (this node speaks {NODE_VERSION})"
            )));
        }
        let node: Node =
            postcard::from_bytes(rest).map_err(|e| err(format!("bad extension node: {e}")))?;
        let leaf = |inputs: &[Arc<dyn ExecutionPlan>]| {
            if inputs.is_empty() {
                Ok(())
            } else {
                Err(err("a leaf node with inputs"))
            }
        };
        Ok(match node {
            Node::SliceScan {
                table,
                alias,
                schema,
                projection,
                limit,
            } => {
                leaf(inputs)?;
                let schema = schema_from(&schema)?;
                if let Some(p) = &projection {
                    if p.iter().any(|&i| i >= schema.fields().len()) {
                        return Err(err("a scan projection outside its schema"));
                    }
                }
                Arc::new(SliceScanExec::try_new(
                    table, alias, schema, projection, limit, None,
                )?)
            }
            Node::Exchange {
                id,
                kind,
                schema,
                partitions,
                ordering,
            } => {
                leaf(inputs)?;
                if partitions == 0 || partitions > MAX_PARTITIONS {
                    return Err(err(format!("an exchange of {partitions} partitions")));
                }
                let schema = schema_from(&schema)?;
                let ordering = match ordering {
                    None => None,
                    Some(b) => {
                        let p = protobuf::PhysicalSortExprNodeCollection::decode(b.as_slice())
                            .map_err(|e| err(format!("bad exchange ordering: {e}")))?;
                        let dctx = PhysicalPlanDecodeContext::new(ctx, self);
                        let exprs = parse_physical_sort_exprs(
                            &p.physical_sort_expr_nodes,
                            &dctx,
                            &schema,
                            proto_converter,
                        )?;
                        Some(
                            LexOrdering::new(exprs)
                                .ok_or_else(|| err("an empty exchange ordering"))?,
                        )
                    }
                };
                Arc::new(
                    ExchangeExec::new(id, kind, schema, partitions, None).with_ordering(ordering),
                )
            }
            Node::Merge => match inputs {
                [one] => Arc::new(MergePartitionsExec::new(one.clone())),
                _ => return Err(err("a merge without exactly one input")),
            },
        })
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        let n = if let Some(s) = node.downcast_ref::<SliceScanExec>() {
            Node::SliceScan {
                table: s.table().to_string(),
                alias: s.alias_opt().map(str::to_string),
                schema: schema_bytes(s.table_schema())?,
                projection: s.projection().map(<[usize]>::to_vec),
                limit: s.limit(),
            }
        } else if let Some(x) = node.downcast_ref::<ExchangeExec>() {
            Node::Exchange {
                id: x.id(),
                kind: x.kind().to_string(),
                schema: schema_bytes(&x.schema())?,
                partitions: x.partitions(),
                ordering: match x.ordering() {
                    None => None,
                    Some(o) => Some(
                        protobuf::PhysicalSortExprNodeCollection {
                            physical_sort_expr_nodes: serialize_physical_sort_exprs(
                                o.iter().cloned(),
                                self,
                                proto_converter,
                            )?,
                        }
                        .encode_to_vec(),
                    ),
                },
            }
        } else if node.is::<MergePartitionsExec>() {
            Node::Merge
        } else {
            return Err(DataFusionError::NotImplemented(format!(
                "no smrdb encoding for {}",
                node.name()
            )));
        };
        buf.push(NODE_VERSION);
        buf.extend(postcard::to_stdvec(&n).map_err(|e| err(format!("encode: {e}")))?);
        Ok(())
    }
}

/// Decodes plans and expressions with PostgreSQL's arithmetic: integer and numeric
/// `+`, `-`, `*` and integer negation fail on overflow (SQLSTATE 22003) instead of
/// wrapping.
///
/// Every stage runs as decoded by this converter (the primary's own stages too), so
/// the semantics do not depend on where a stage runs.
#[derive(Debug, Default, Clone, Copy)]
pub struct PgConverter;

/// Applies [`PgConverter`]'s semantics to one decoded expression (its children were
/// decoded, and so treated, first).
fn pg_semantics(e: Arc<dyn PhysicalExpr>, schema: &Schema) -> Result<Arc<dyn PhysicalExpr>> {
    if let Some(n) = e.downcast_ref::<NegativeExpr>() {
        // -x as 0 - x, which fails on the smallest integer instead of wrapping.
        let t = n.arg().data_type(schema)?;
        if t.is_signed_integer() {
            let zero: Arc<dyn PhysicalExpr> = Arc::new(Literal::new(ScalarValue::new_zero(&t)?));
            return Ok(Arc::new(
                BinaryExpr::new(zero, Operator::Minus, n.arg().clone()).with_fail_on_overflow(true),
            ));
        }
        return Ok(e);
    }
    let Some(b) = e.downcast_ref::<BinaryExpr>() else {
        return Ok(e);
    };
    if !matches!(
        b.op(),
        Operator::Plus | Operator::Minus | Operator::Multiply
    ) {
        return Ok(e);
    }
    let t = b.left().data_type(schema)?;
    if t.is_integer() || t.is_decimal() {
        return Ok(Arc::new(
            BinaryExpr::new(b.left().clone(), *b.op(), b.right().clone())
                .with_fail_on_overflow(true),
        ));
    }
    Ok(e)
}

impl PhysicalProtoConverterExtension for PgConverter {
    fn proto_to_execution_plan(
        &self,
        proto: &protobuf::PhysicalPlanNode,
        ctx: &PhysicalPlanDecodeContext<'_>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        proto.try_into_physical_plan_with_context(ctx, self)
    }

    fn execution_plan_to_proto(
        &self,
        plan: &Arc<dyn ExecutionPlan>,
        codec: &dyn PhysicalExtensionCodec,
    ) -> Result<protobuf::PhysicalPlanNode> {
        protobuf::PhysicalPlanNode::try_from_physical_plan_with_converter(plan.clone(), codec, self)
    }

    fn proto_to_physical_expr(
        &self,
        proto: &protobuf::PhysicalExprNode,
        input_schema: &Schema,
        ctx: &PhysicalPlanDecodeContext<'_>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        let e = parse_physical_expr_with_converter(proto, input_schema, ctx, self)?;
        pg_semantics(e, input_schema)
    }

    fn physical_expr_to_proto(
        &self,
        expr: &Arc<dyn PhysicalExpr>,
        codec: &dyn PhysicalExtensionCodec,
    ) -> Result<protobuf::PhysicalExprNode> {
        serialize_physical_expr_with_converter(expr, codec, self)
    }
}

/// The protobuf bytes of `plan` (smrdb leaves through [`SmrdbCodec`]).
///
/// # Errors
/// A node `datafusion-proto` cannot serialize.
pub fn plan_to_bytes(plan: Arc<dyn ExecutionPlan>) -> Result<Vec<u8>> {
    let p = PgConverter.execution_plan_to_proto(&plan, &SmrdbCodec)?;
    Ok(p.encode_to_vec())
}

/// The plan in `bytes`, its functions resolved in `ctx`, with [`PgConverter`]'s
/// semantics. Never panics: a panic inside the decoder (malformed input reaching an
/// unchecked path) becomes an error.
///
/// # Errors
/// Malformed bytes, unknown functions or node kinds.
pub fn plan_from_bytes(bytes: &[u8], ctx: &TaskContext) -> Result<Arc<dyn ExecutionPlan>> {
    catch(|| {
        let p = protobuf::PhysicalPlanNode::decode(bytes)
            .map_err(|e| err(format!("malformed plan: {e}")))?;
        let dctx = PhysicalPlanDecodeContext::new(ctx, &SmrdbCodec);
        PgConverter.proto_to_execution_plan(&p, &dctx)
    })
}

/// The protobuf bytes of an expression.
///
/// # Errors
/// An expression `datafusion-proto` cannot serialize.
pub fn expr_to_bytes(e: &Arc<dyn PhysicalExpr>) -> Result<Vec<u8>> {
    Ok(PgConverter
        .physical_expr_to_proto(e, &SmrdbCodec)?
        .encode_to_vec())
}

/// The expression in `bytes`, over `schema`, with [`PgConverter`]'s semantics.
///
/// # Errors
/// Malformed bytes, unknown functions, columns outside `schema`.
pub fn expr_from_bytes(bytes: &[u8], schema: &Schema) -> crate::Result<Arc<dyn PhysicalExpr>> {
    let ctx = super::task_context(None);
    catch(|| {
        let p = protobuf::PhysicalExprNode::decode(bytes)
            .map_err(|e| err(format!("malformed expression: {e}")))?;
        let dctx = PhysicalPlanDecodeContext::new(&ctx, &SmrdbCodec);
        PgConverter.proto_to_physical_expr(&p, schema, &dctx)
    })
    .map_err(|e| crate::Error::Corrupt(e.to_string()))
}

fn catch<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        Err(err(format!(
            "malformed plan: {}",
            crate::ipc::panic_text(&*p)
        )))
    })
}
