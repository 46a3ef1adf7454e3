//! [`SmrdbCodec`]: `datafusion-proto`'s extension codec for smrdb's plan leaves, and
//! plan (de)serialization with it.

use std::sync::Arc;

use arrow_schema::{Schema, SchemaRef};
use datafusion_common::{DataFusionError, Result};
use datafusion_execution::TaskContext;
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
use datafusion_proto::protobuf::physical_expr_node::ExprType;
use datafusion_proto::protobuf::physical_plan_node::PhysicalPlanType;
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
    /// A piece of a deep plan or expression: the protobuf bytes of the subtree below
    /// this point, decoded as a message of its own (see [`PIECE_LEVELS`]). Only
    /// [`PgConverter`] reads it, never [`SmrdbCodec::try_decode`].
    Piece {
        bytes: Vec<u8>,
    },
}

/// Levels of plan (or of expression) per protobuf message. prost refuses messages
/// nested deeper than 100 (a plan level costs two, an expression level two, a node's
/// schema about six), so a plan or expression deeper than this is cut: every node at a
/// height that is a multiple of it (a leaf has height 0) goes as a [`Node::Piece`],
/// its subtree encoded as a message of its own. A 64-table join plan is about 200
/// levels deep; a sum of 64 columns 64.
pub const PIECE_LEVELS: usize = 16;

/// Most pieces nested in one another that a decoder accepts: with prost's limit per
/// piece this bounds the recursion of a hostile message (about 50 plan levels per
/// piece) to what a 64 MiB planning stack holds; an honest plan of 512 levels fits.
pub const MAX_PIECE_NESTING: u8 = 32;

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
            Node::Piece { .. } => return Err(err("a plan piece outside PgConverter")),
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
        buf.extend(node_bytes(&n)?);
        Ok(())
    }
}

/// An extension node's payload: the version byte, then `n` in postcard.
fn node_bytes(n: &Node) -> Result<Vec<u8>> {
    let mut buf = vec![NODE_VERSION];
    buf.extend(postcard::to_stdvec(n).map_err(|e| err(format!("encode: {e}")))?);
    Ok(buf)
}

/// The bytes of a [`Node::Piece`] payload, if `payload` is one.
fn piece_of(payload: &[u8]) -> Option<Vec<u8>> {
    match payload.split_first() {
        Some((&NODE_VERSION, rest)) => match postcard::from_bytes::<Node>(rest) {
            Ok(Node::Piece { bytes }) => Some(bytes),
            _ => None,
        },
        _ => None,
    }
}

/// Height of a tree node (a leaf: 0) given its children.
fn height<T: ?Sized>(n: &Arc<T>, children: &dyn Fn(&Arc<T>) -> Vec<&Arc<T>>) -> usize {
    children(n)
        .into_iter()
        .map(|c| 1 + height(c, children))
        .max()
        .unwrap_or(0)
}

fn plan_height(p: &Arc<dyn ExecutionPlan>) -> usize {
    height(p, &|p| p.children())
}

fn expr_height(e: &Arc<dyn PhysicalExpr>) -> usize {
    height(e, &|e| e.children())
}

/// Whether a node of this height (not the root of the message) goes as a piece.
fn cut_here(height: usize) -> bool {
    height > 0 && height % PIECE_LEVELS == 0
}

/// Decodes plans and expressions with PostgreSQL's arithmetic
/// ([`super::pgmath`]): integer and numeric `+`, `-`, `*` and integer negation fail on
/// overflow (SQLSTATE 22003) instead of wrapping; floating-point `/` and `%` fail on a
/// zero divisor (22012).
///
/// Every stage runs as decoded by this converter (the primary's own stages too), so
/// the semantics do not depend on where a stage runs.
///
/// It also cuts plans and expressions deeper than [`PIECE_LEVELS`] into pieces
/// (protobuf messages of their own, within prost's nesting limit) and joins them on
/// decode; `nesting` counts the pieces around the one being decoded.
#[derive(Debug, Default, Clone, Copy)]
pub struct PgConverter {
    nesting: u8,
}

impl PgConverter {
    /// The converter for a piece inside the one this converter decodes.
    fn inner(self) -> Result<Self> {
        if self.nesting >= MAX_PIECE_NESTING {
            return Err(err(format!(
                "malformed plan: pieces nested deeper than {MAX_PIECE_NESTING}"
            )));
        }
        Ok(Self {
            nesting: self.nesting + 1,
        })
    }
}

impl PhysicalProtoConverterExtension for PgConverter {
    fn proto_to_execution_plan(
        &self,
        proto: &protobuf::PhysicalPlanNode,
        ctx: &PhysicalPlanDecodeContext<'_>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if let Some(PhysicalPlanType::Extension(x)) = &proto.physical_plan_type {
            if let Some(bytes) = piece_of(&x.node) {
                if !x.inputs.is_empty() {
                    return Err(err("malformed plan: a plan piece with inputs"));
                }
                let p = protobuf::PhysicalPlanNode::decode(bytes.as_slice())
                    .map_err(|e| err(format!("malformed plan piece: {e}")))?;
                return self.inner()?.proto_to_execution_plan(&p, ctx);
            }
        }
        proto.try_into_physical_plan_with_context(ctx, self)
    }

    fn execution_plan_to_proto(
        &self,
        plan: &Arc<dyn ExecutionPlan>,
        codec: &dyn PhysicalExtensionCodec,
    ) -> Result<protobuf::PhysicalPlanNode> {
        let p = protobuf::PhysicalPlanNode::try_from_physical_plan_with_converter(
            plan.clone(),
            codec,
            self,
        )?;
        if !cut_here(plan_height(plan)) {
            return Ok(p);
        }
        let node = node_bytes(&Node::Piece {
            bytes: p.encode_to_vec(),
        })?;
        Ok(protobuf::PhysicalPlanNode {
            physical_plan_type: Some(PhysicalPlanType::Extension(
                protobuf::PhysicalExtensionNode {
                    node,
                    inputs: vec![],
                },
            )),
        })
    }

    fn proto_to_physical_expr(
        &self,
        proto: &protobuf::PhysicalExprNode,
        input_schema: &Schema,
        ctx: &PhysicalPlanDecodeContext<'_>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        if let Some(ExprType::Extension(x)) = &proto.expr_type {
            if let Some(bytes) = piece_of(&x.expr) {
                if !x.inputs.is_empty() {
                    return Err(err("malformed expression: a piece with inputs"));
                }
                let p = protobuf::PhysicalExprNode::decode(bytes.as_slice())
                    .map_err(|e| err(format!("malformed expression piece: {e}")))?;
                return self.inner()?.proto_to_physical_expr(&p, input_schema, ctx);
            }
        }
        let e = parse_physical_expr_with_converter(proto, input_schema, ctx, self)?;
        super::pgmath::pg_semantics(e, input_schema)
    }

    fn physical_expr_to_proto(
        &self,
        expr: &Arc<dyn PhysicalExpr>,
        codec: &dyn PhysicalExtensionCodec,
    ) -> Result<protobuf::PhysicalExprNode> {
        let p = serialize_physical_expr_with_converter(expr, codec, self)?;
        if !cut_here(expr_height(expr)) {
            return Ok(p);
        }
        let expr = node_bytes(&Node::Piece {
            bytes: p.encode_to_vec(),
        })?;
        Ok(protobuf::PhysicalExprNode {
            expr_id: None,
            expr_type: Some(ExprType::Extension(protobuf::PhysicalExtensionExprNode {
                expr,
                inputs: vec![],
            })),
        })
    }
}

/// The protobuf bytes of `plan` (smrdb leaves through [`SmrdbCodec`]).
///
/// # Errors
/// A node `datafusion-proto` cannot serialize.
pub fn plan_to_bytes(plan: Arc<dyn ExecutionPlan>) -> Result<Vec<u8>> {
    // The root directly (the converter's hook, called for each child, cuts pieces).
    let p = protobuf::PhysicalPlanNode::try_from_physical_plan_with_converter(
        plan,
        &SmrdbCodec,
        &PgConverter::default(),
    )?;
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
        PgConverter::default().proto_to_execution_plan(&p, &dctx)
    })
}

/// The protobuf bytes of an expression.
///
/// # Errors
/// An expression `datafusion-proto` cannot serialize.
pub fn expr_to_bytes(e: &Arc<dyn PhysicalExpr>) -> Result<Vec<u8>> {
    Ok(
        serialize_physical_expr_with_converter(e, &SmrdbCodec, &PgConverter::default())?
            .encode_to_vec(),
    )
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
        PgConverter::default().proto_to_physical_expr(&p, schema, &dctx)
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
