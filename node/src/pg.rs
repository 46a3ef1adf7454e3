//! The Postgres wire-protocol front end (pgwire): simple and extended query
//! protocols, `COPY ... FROM STDIN`, typed results (INT4, INT8, FLOAT8, TEXT, DATE,
//! BOOL; text and binary formats), errors with SQLSTATEs. No authentication: any user
//! and database name is accepted (the documented ones are `smrdb` / `smrdb`).
//!
//! Extended protocol: `$n` parameters are bound as SQL literals before planning.
//! Parameter types the client does not declare are described as TEXT (so untyped
//! numeric parameters need a declared type or a text value).

use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::BytesMut;
use futures::{stream, Sink, SinkExt};
use pgwire::api::auth::noop::NoopStartupHandler;
use pgwire::api::copy::CopyHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{CopyResponse, FieldFormat, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireServerHandlers, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::copy::{CopyData, CopyDone, CopyFail};
use pgwire::messages::data::DataRow;
use pgwire::messages::PgWireBackendMessage;
use smrdb_tstore::DataType;

use crate::copy::CopyFormat;
use crate::engine::{CommandTag, Engine, Output, Session};
use crate::error::Error;
use crate::sqltext::{bind_params, count_params, quote_literal, split_statements};
use crate::values::{civil_from_days, encode_rows, pg_oid, PG_EPOCH_DAYS};

fn user_error(e: &Error) -> ErrorInfo {
    ErrorInfo::new("ERROR".into(), e.sqlstate().to_string(), e.to_string())
}

fn pg_error(e: &Error) -> PgWireError {
    PgWireError::UserError(Box::new(user_error(e)))
}

fn pg_type(t: DataType) -> Type {
    Type::from_oid(pg_oid(t)).unwrap_or(Type::TEXT)
}

fn tag(t: &CommandTag) -> Tag {
    let mut g = Tag::new(&t.command);
    if let Some(o) = t.oid {
        g = g.with_oid(o);
    }
    if let Some(r) = t.rows {
        g = g.with_rows(r as usize);
    }
    g
}

fn fields(columns: &[(String, DataType)], format: Option<&Format>) -> Vec<FieldInfo> {
    columns
        .iter()
        .enumerate()
        .map(|(i, (n, t))| {
            let f = format.map(|f| f.format_for(i)).unwrap_or(FieldFormat::Text);
            FieldInfo::new(n.clone(), None, None, pg_type(*t), f)
        })
        .collect()
}

struct PendingCopy {
    table: String,
    format: CopyFormat,
    data: Vec<u8>,
}

/// One client connection's handlers and session state.
pub struct Conn {
    engine: Arc<Engine>,
    session: Arc<Mutex<Session>>,
    copy: Mutex<Option<PendingCopy>>,
    parser: Arc<Parser>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Conn {
    /// Handlers for a new connection.
    pub fn new(engine: Arc<Engine>) -> Arc<Conn> {
        Arc::new(Conn {
            parser: Arc::new(Parser {
                engine: engine.clone(),
            }),
            engine,
            session: Arc::new(Mutex::new(Session::default())),
            copy: Mutex::new(None),
        })
    }

    /// Runs statements on a blocking thread, stopping at the first error or COPY.
    async fn run(&self, stmts: Vec<String>) -> Vec<Result<Output, Error>> {
        let engine = self.engine.clone();
        let session = self.session.clone();
        tokio::task::spawn_blocking(move || {
            let mut s = lock(&session);
            let mut out = Vec::new();
            'all: for sql in stmts {
                match engine.execute_sql(&sql, &mut s) {
                    Ok(outs) => {
                        for o in outs {
                            let stop = matches!(o, Output::CopyIn { .. });
                            out.push(Ok(o));
                            if stop {
                                break 'all;
                            }
                        }
                    }
                    Err(e) => {
                        out.push(Err(e));
                        break;
                    }
                }
            }
            out
        })
        .await
        .unwrap_or_else(|e| vec![Err(Error::sql("XX000", format!("statement panicked: {e}")))])
    }

    fn response(&self, o: Output, format: Option<&Format>) -> PgWireResult<Response> {
        Ok(match o {
            Output::Rows {
                columns,
                batch,
                command,
            } => {
                let schema = Arc::new(fields(&columns, format));
                let binary: Vec<bool> = schema
                    .iter()
                    .map(|f| f.format() == FieldFormat::Binary)
                    .collect();
                let rows = encode_rows(&batch, &binary).map_err(|e| pg_error(&e))?;
                let n = columns.len() as i16;
                let rows: Vec<PgWireResult<DataRow>> = rows
                    .into_iter()
                    .map(|r| Ok(DataRow::new(BytesMut::from(&r[..]), n)))
                    .collect();
                let mut q = QueryResponse::new(schema, stream::iter(rows));
                q.set_command_tag(command);
                Response::Query(q)
            }
            Output::Command(t) => Response::Execution(tag(&t)),
            Output::Transaction {
                begin: true,
                tag: t,
            } => Response::TransactionStart(tag(&t)),
            Output::Transaction { tag: t, .. } => Response::TransactionEnd(tag(&t)),
            Output::CopyIn {
                table,
                format,
                columns,
            } => {
                *lock(&self.copy) = Some(PendingCopy {
                    table,
                    format,
                    data: Vec::new(),
                });
                Response::CopyIn(CopyResponse::new(0, columns, stream::empty()))
            }
        })
    }
}

/// The connection's handler set for pgwire.
pub struct Handlers(pub Arc<Conn>);

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.0.clone()
    }
    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.0.clone()
    }
    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        self.0.clone()
    }
    fn copy_handler(&self) -> Arc<impl CopyHandler> {
        self.0.clone()
    }
}

impl NoopStartupHandler for Conn {}

#[async_trait]
impl SimpleQueryHandler for Conn {
    async fn do_query<C>(&self, _client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let stmts = split_statements(query);
        if stmts.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let mut out = Vec::new();
        for r in self.run(stmts).await {
            match r {
                Ok(o) => out.push(self.response(o, None)?),
                Err(e) => out.push(Response::Error(Box::new(user_error(&e)))),
            }
        }
        Ok(out)
    }
}

/// A prepared statement: its text and what Describe says about it.
#[derive(Debug, Clone)]
pub struct Prepared {
    sql: Option<String>,
    params: usize,
    columns: Option<Vec<(String, DataType)>>,
}

/// Parses (plans, for Describe) statements of the extended protocol.
pub struct Parser {
    engine: Arc<Engine>,
}

#[async_trait]
impl QueryParser for Parser {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut stmts = split_statements(sql);
        if stmts.len() > 1 {
            return Err(pg_error(&Error::sql(
                "42601",
                "cannot insert multiple commands into a prepared statement",
            )));
        }
        let Some(sql) = stmts.pop() else {
            return Ok(Some(Prepared {
                sql: None,
                params: 0,
                columns: None,
            }));
        };
        let params = count_params(&sql);
        let probe =
            bind_params(&sql, &vec!["NULL".to_string(); params]).map_err(|e| pg_error(&e))?;
        let columns = match self.engine.describe(&probe) {
            Ok(c) => c,
            Err(e) if params == 0 => return Err(pg_error(&e)),
            Err(_) => None,
        };
        Ok(Some(Prepared {
            sql: Some(sql),
            params,
            columns,
        }))
    }

    fn get_parameter_types(&self, stmt: &Prepared) -> PgWireResult<Vec<Type>> {
        Ok(vec![Type::TEXT; stmt.params])
    }

    fn get_result_schema(
        &self,
        stmt: &Prepared,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        Ok(stmt
            .columns
            .as_deref()
            .map(|c| fields(c, format))
            .unwrap_or_default())
    }
}

fn bad_param(i: usize, why: &str) -> PgWireError {
    pg_error(&Error::sql("22P02", format!("parameter ${}: {why}", i + 1)))
}

/// A parameter value as a SQL literal.
fn param_literal(i: usize, v: Option<&[u8]>, ty: &Type, binary: bool) -> PgWireResult<String> {
    let Some(v) = v else {
        return Ok("NULL".into());
    };
    let be = |n: usize| -> PgWireResult<&[u8]> {
        if v.len() == n {
            Ok(v)
        } else {
            Err(bad_param(
                i,
                &format!("{} bytes for a {n}-byte type", v.len()),
            ))
        }
    };
    if binary {
        let s = match *ty {
            Type::INT2 => i16::from_be_bytes(be(2)?.try_into().unwrap_or_default()).to_string(),
            Type::INT4 => i32::from_be_bytes(be(4)?.try_into().unwrap_or_default()).to_string(),
            Type::INT8 => i64::from_be_bytes(be(8)?.try_into().unwrap_or_default()).to_string(),
            Type::FLOAT4 => {
                let f = f32::from_be_bytes(be(4)?.try_into().unwrap_or_default());
                float_literal(f64::from(f))
            }
            Type::FLOAT8 => {
                float_literal(f64::from_be_bytes(be(8)?.try_into().unwrap_or_default()))
            }
            Type::BOOL => if be(1)?[0] != 0 { "TRUE" } else { "FALSE" }.into(),
            Type::DATE => {
                let d = i32::from_be_bytes(be(4)?.try_into().unwrap_or_default());
                let (y, m, dd) = civil_from_days(d.wrapping_add(PG_EPOCH_DAYS));
                quote_literal(&format!("{y:04}-{m:02}-{dd:02}"))
            }
            _ => {
                let s = std::str::from_utf8(v).map_err(|_| bad_param(i, "not UTF-8"))?;
                quote_literal(s)
            }
        };
        return Ok(s);
    }
    let s = std::str::from_utf8(v).map_err(|_| bad_param(i, "not UTF-8"))?;
    Ok(match *ty {
        Type::INT2 | Type::INT4 | Type::INT8 => {
            let n: i64 = s
                .trim()
                .parse()
                .map_err(|_| bad_param(i, "not an integer"))?;
            n.to_string()
        }
        Type::FLOAT4 | Type::FLOAT8 | Type::NUMERIC => {
            let f: f64 = s.trim().parse().map_err(|_| bad_param(i, "not a number"))?;
            float_literal(f)
        }
        Type::BOOL => match s.trim().to_ascii_lowercase().as_str() {
            "t" | "true" | "1" | "yes" | "on" => "TRUE".into(),
            "f" | "false" | "0" | "no" | "off" => "FALSE".into(),
            _ => return Err(bad_param(i, "not a boolean")),
        },
        _ => quote_literal(s),
    })
}

fn float_literal(f: f64) -> String {
    if f.is_finite() {
        format!("{f:?}")
    } else {
        quote_literal(&crate::values::format_f64(f))
    }
}

#[async_trait]
impl ExtendedQueryHandler for Conn {
    type Statement = Prepared;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        _client: &mut C,
        portal: &Portal<Prepared>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: pgwire::api::store::PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let stmt = &portal.statement;
        let Some(sql) = &stmt.statement.sql else {
            return Ok(Response::EmptyQuery);
        };
        let mut lits = Vec::with_capacity(portal.parameters.len());
        for (i, p) in portal.parameters.iter().enumerate() {
            let ty = stmt
                .parameter_types
                .get(i)
                .cloned()
                .flatten()
                .unwrap_or(Type::TEXT);
            let binary = portal.parameter_format.is_binary(i);
            lits.push(param_literal(i, p.as_deref(), &ty, binary)?);
        }
        let bound = bind_params(sql, &lits).map_err(|e| pg_error(&e))?;
        let mut outs = self.run(vec![bound]).await;
        match outs.pop() {
            Some(Ok(o)) => self.response(o, Some(&portal.result_column_format)),
            Some(Err(e)) => Err(pg_error(&e)),
            None => Ok(Response::EmptyQuery),
        }
    }
}

#[async_trait]
impl CopyHandler for Conn {
    async fn on_copy_data<C>(&self, _client: &mut C, copy_data: CopyData) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let Some(p) = lock(&self.copy).as_mut() {
            p.data.extend_from_slice(&copy_data.data);
        }
        Ok(())
    }

    async fn on_copy_done<C>(&self, client: &mut C, _done: CopyDone) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let Some(p) = lock(&self.copy).take() else {
            return Err(pg_error(&Error::sql(
                "08P01",
                "CopyDone without COPY FROM STDIN",
            )));
        };
        let engine = self.engine.clone();
        let n = tokio::task::spawn_blocking(move || engine.copy_in(&p.table, &p.format, &p.data))
            .await
            .map_err(|e| pg_error(&Error::sql("XX000", format!("COPY panicked: {e}"))))?
            .map_err(|e| pg_error(&e))?;
        client
            .send(PgWireBackendMessage::CommandComplete(
                Tag::new("COPY").with_rows(n as usize).into(),
            ))
            .await?;
        Ok(())
    }

    async fn on_copy_fail<C>(&self, _client: &mut C, fail: CopyFail) -> PgWireError
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        lock(&self.copy).take();
        pg_error(&Error::sql(
            "57014",
            format!("COPY from stdin failed: {}", fail.message),
        ))
    }
}

/// Serves Postgres clients on `listener` until `stop` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    engine: Arc<Engine>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            r = listener.accept() => match r {
                Ok((sock, peer)) => {
                    tracing::debug!("client connected from {peer}");
                    let _ = sock.set_nodelay(true);
                    let h = Handlers(Conn::new(engine.clone()));
                    tokio::spawn(async move {
                        if let Err(e) = pgwire::tokio::process_socket(sock, None, h).await {
                            tracing::debug!("client {peer}: {e}");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
}
