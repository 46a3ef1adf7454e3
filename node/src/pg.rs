//! The Postgres wire-protocol front end (pgwire): simple and extended query
//! protocols, `COPY ... FROM STDIN`, typed results (each Arrow result column as its
//! PostgreSQL type, in text and binary format: [`crate::values`]), errors with
//! SQLSTATEs.
//!
//! Authentication ([`crate::auth`]): `trust` accepts any user and database name (the
//! documented ones are `smrdb` / `smrdb`); `md5` and `scram-sha-256` check the user's
//! password. A wrong password and an unknown user both get FATAL 28P01
//! `password authentication failed for user "..."` and the connection closes.
//!
//! Cancel: every connection gets a process id and a random secret key
//! (BackendKeyData); a CancelRequest carrying both makes the statement running on that
//! connection fail with 57014 `canceling statement due to user request` (a cancel
//! arriving while the connection is idle is ignored). The connection stays usable.
//!
//! Extended protocol: `$n` parameters are bound as typed SQL literals before planning
//! ([`crate::values::param_literal`]). Parameter types the client does not declare
//! are described as TEXT (so untyped numeric parameters need a declared type or a
//! text value).

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, Weak};

use arrow_schema::{FieldRef, SchemaRef};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::{stream, Sink, SinkExt};
use pgwire::api::auth::{
    finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata,
    DefaultServerParameterProvider, StartupHandler,
};
use pgwire::api::cancel::CancelHandler;
use pgwire::api::copy::CopyHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{CopyResponse, FieldFormat, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::{
    ClientInfo, ClientPortalStore, PgWireConnectionState, PgWireServerHandlers, Type, METADATA_USER,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::copy::{CopyData, CopyDone, CopyFail};
use pgwire::messages::data::DataRow;
use pgwire::messages::startup::{Authentication, SecretKey};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage, ProtocolVersion};

use crate::auth::{AuthError, Authenticator, Challenge, Exchange, Step, SCRAM_SHA_256};
use crate::copy::CopyFormat;
use crate::engine::{CommandTag, Engine, Output, Session};
use crate::error::Error;
use crate::sqltext::{bind_params, count_params, split_statements};
use crate::values::{encode_rows, pg_type};

fn user_error(e: &Error) -> ErrorInfo {
    ErrorInfo::new("ERROR".into(), e.sqlstate().to_string(), e.client_message())
}

fn pg_error(e: &Error) -> PgWireError {
    PgWireError::UserError(Box::new(user_error(e)))
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

/// RowDescription fields of result columns: each Arrow field's PostgreSQL type
/// ([`pg_type`]: OID, type modifier, width) in the format the client asked for.
fn fields(columns: &[FieldRef], format: Option<&Format>) -> PgWireResult<Vec<FieldInfo>> {
    columns
        .iter()
        .enumerate()
        .map(|(i, field)| {
            let f = format.map(|f| f.format_for(i)).unwrap_or(FieldFormat::Text);
            let t = pg_type(field).map_err(|e| pg_error(&e))?;
            Ok(FieldInfo::new(field.name().clone(), None, None, t.ty, f)
                .with_type_modifier(t.typmod)
                .with_type_size(t.typlen))
        })
        .collect()
}

struct PendingCopy {
    table: String,
    format: CopyFormat,
    data: Vec<u8>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One connection's cancel target: its session's cancel flag, raised only while a
/// statement runs.
struct CancelSlot {
    /// Whether statements are running (under this lock, the flag is only raised
    /// while they are, and cleared before the next ones start).
    running: Mutex<bool>,
    flag: Arc<AtomicBool>,
}

impl CancelSlot {
    fn cancel(&self) {
        let running = lock(&self.running);
        if *running {
            self.flag.store(true, Ordering::Relaxed);
        }
    }
}

/// Marks a [`CancelSlot`] running until dropped.
struct Running<'a>(&'a CancelSlot);

impl<'a> Running<'a> {
    fn start(slot: &'a CancelSlot) -> Running<'a> {
        let mut running = lock(&slot.running);
        slot.flag.store(false, Ordering::Relaxed);
        *running = true;
        Running(slot)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut running = lock(&self.0.running);
        *running = false;
        self.0.flag.store(false, Ordering::Relaxed);
    }
}

/// The connections a CancelRequest can reach, by process id (with their secret keys).
struct CancelRegistry {
    next_pid: AtomicI32,
    conns: Mutex<HashMap<i32, (Bytes, Weak<CancelSlot>)>>,
}

impl CancelRegistry {
    /// A fresh process id and secret key for `slot` (a 4-byte key for protocol 3.0,
    /// 32 bytes for 3.2).
    fn register(
        &self,
        slot: &Arc<CancelSlot>,
        version: ProtocolVersion,
    ) -> Result<(i32, SecretKey), String> {
        let key = if version == ProtocolVersion::PROTOCOL3_0 {
            let mut b = [0u8; 4];
            getrandom::fill(&mut b).map_err(|e| format!("no randomness: {e}"))?;
            SecretKey::I32(i32::from_be_bytes(b))
        } else {
            let mut b = [0u8; 32];
            getrandom::fill(&mut b).map_err(|e| format!("no randomness: {e}"))?;
            SecretKey::Bytes(Bytes::copy_from_slice(&b))
        };
        let mut conns = lock(&self.conns);
        loop {
            // Positive ids, never one in use (the counter wraps after 2^31 connections).
            let pid = (self.next_pid.fetch_add(1, Ordering::Relaxed) & 0x7fff_ffff).max(1);
            if let std::collections::hash_map::Entry::Vacant(e) = conns.entry(pid) {
                e.insert((key.to_bytes(), Arc::downgrade(slot)));
                return Ok((pid, key));
            }
        }
    }

    fn unregister(&self, pid: i32) {
        lock(&self.conns).remove(&pid);
    }

    /// Cancels what runs on connection `pid` if `key` is its secret key; anything
    /// else is ignored silently, as PostgreSQL does.
    fn cancel(&self, pid: i32, key: &SecretKey) {
        let key = key.to_bytes();
        let slot = {
            let conns = lock(&self.conns);
            match conns.get(&pid) {
                Some((k, slot)) if k.len() == key.len() && ct_eq(k, &key) => slot.upgrade(),
                _ => None,
            }
        };
        match slot {
            Some(s) => {
                tracing::debug!("cancel request for connection {pid}");
                s.cancel();
            }
            None => tracing::debug!("cancel request for an unknown connection ignored"),
        }
    }
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What every connection of one listener shares: the engine, how clients
/// authenticate, and the connections a CancelRequest can reach.
pub struct Server {
    engine: Arc<Engine>,
    auth: Arc<Authenticator>,
    cancels: CancelRegistry,
}

impl Server {
    /// A server over `engine` authenticating with `auth`.
    pub fn new(engine: Arc<Engine>, auth: Authenticator) -> Arc<Server> {
        Arc::new(Server {
            engine,
            auth: Arc::new(auth),
            cancels: CancelRegistry {
                next_pid: AtomicI32::new(1000),
                conns: Mutex::new(HashMap::new()),
            },
        })
    }
}

/// One client connection's handlers and session state.
pub struct Conn {
    server: Arc<Server>,
    engine: Arc<Engine>,
    session: Arc<Mutex<Session>>,
    copy: Mutex<Option<PendingCopy>>,
    parser: Arc<Parser>,
    /// The authentication exchange in progress.
    exchange: Mutex<Option<Exchange>>,
    slot: Arc<CancelSlot>,
    /// The process id given to the client (for CancelRequest), once authenticated.
    pid: Mutex<Option<i32>>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(pid) = lock(&self.pid).take() {
            self.server.cancels.unregister(pid);
        }
    }
}

/// A FATAL error: the connection closes after it.
fn fatal(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".into(),
        code.into(),
        message,
    )))
}

impl Conn {
    /// Handlers for a new connection of `server`.
    pub fn new(server: Arc<Server>) -> Arc<Conn> {
        let engine = server.engine.clone();
        let flag = Arc::new(AtomicBool::new(false));
        Arc::new(Conn {
            parser: Arc::new(Parser {
                engine: engine.clone(),
            }),
            engine,
            session: Arc::new(Mutex::new(Session {
                cancel: flag.clone(),
                ..Session::default()
            })),
            copy: Mutex::new(None),
            exchange: Mutex::new(None),
            slot: Arc::new(CancelSlot {
                running: Mutex::new(false),
                flag,
            }),
            pid: Mutex::new(None),
            server,
        })
    }

    fn auth_failure<C: ClientInfo>(&self, client: &C, user: &str, e: AuthError) -> PgWireError {
        let peer = client.socket_addr();
        match e {
            AuthError::Failed => {
                tracing::info!("client {peer}: password authentication failed for user {user:?}");
                fatal(
                    "28P01",
                    format!("password authentication failed for user \"{user}\""),
                )
            }
            AuthError::Protocol(m) => {
                tracing::info!("client {peer}: authentication of user {user:?}: {m}");
                fatal("08P01", m)
            }
            AuthError::Internal(m) => {
                tracing::warn!("client {peer}: authentication of user {user:?}: {m}");
                fatal("XX000", m)
            }
        }
    }

    /// Completes the startup: the SCRAM server-final message if any, then
    /// AuthenticationOk, parameters, BackendKeyData and ReadyForQuery.
    async fn finish<C>(&self, client: &mut C, sasl_final: Option<String>) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let Some(f) = sasl_final {
            client
                .send(PgWireBackendMessage::Authentication(
                    Authentication::SASLFinal(Bytes::from(f)),
                ))
                .await?;
        }
        let (pid, key) = self
            .server
            .cancels
            .register(&self.slot, client.protocol_version())
            .map_err(|m| fatal("XX000", m))?;
        if let Some(old) = lock(&self.pid).replace(pid) {
            self.server.cancels.unregister(old);
        }
        client.set_pid_and_secret_key(pid, key);
        finish_authentication(client, &DefaultServerParameterProvider::default()).await
    }

    /// Runs statements on a blocking thread, stopping at the first error or COPY.
    /// A CancelRequest meanwhile makes the running statement fail with 57014.
    async fn run(&self, stmts: Vec<String>) -> Vec<Result<Output, Error>> {
        let _running = Running::start(&self.slot);
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
            Output::Rows { batch, command } => {
                let schema = Arc::new(fields(batch.schema().fields(), format)?);
                let binary: Vec<bool> = schema
                    .iter()
                    .map(|f| f.format() == FieldFormat::Binary)
                    .collect();
                let rows = encode_rows(&batch, &binary).map_err(|e| pg_error(&e))?;
                let n = batch.num_columns() as i16;
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
    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        self.0.clone()
    }
}

#[async_trait]
impl CancelHandler for Conn {
    async fn on_cancel_request(&self, req: CancelRequest) {
        self.server.cancels.cancel(req.pid, &req.secret_key);
    }
}

#[async_trait]
impl StartupHandler for Conn {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let user = |c: &C| c.metadata().get(METADATA_USER).cloned().unwrap_or_default();
        match message {
            PgWireFrontendMessage::Startup(startup) => {
                protocol_negotiation(client, &startup).await?;
                save_startup_parameters_to_metadata(client, &startup);
                let user = user(client);
                let begun = self.server.auth.begin(&user);
                let (challenge, exchange) = match begun {
                    Ok(None) => return self.finish(client, None).await,
                    Ok(Some(_)) if user.is_empty() => return Err(PgWireError::UserNameRequired),
                    Ok(Some(c)) => c,
                    Err(e) => return Err(self.auth_failure(client, &user, e)),
                };
                *lock(&self.exchange) = Some(exchange);
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                let ask = match challenge {
                    Challenge::Md5(salt) => Authentication::MD5Password(salt.to_vec()),
                    Challenge::Sasl => Authentication::SASL(vec![SCRAM_SHA_256.to_string()]),
                };
                client
                    .send(PgWireBackendMessage::Authentication(ask))
                    .await?;
                Ok(())
            }
            PgWireFrontendMessage::PasswordMessageFamily(msg) => {
                let user = user(client);
                let Some(mut ex) = lock(&self.exchange).take() else {
                    return Err(PgWireError::NoAuthenticationInProgress);
                };
                let data: Vec<u8> = if ex.wants_sasl_initial() {
                    let r = msg.into_sasl_initial_response()?;
                    if r.auth_method != SCRAM_SHA_256 {
                        return Err(PgWireError::UnsupportedSASLAuthMethod(r.auth_method));
                    }
                    r.data.map(|d| d.to_vec()).unwrap_or_default()
                } else if ex.wants_sasl_response() {
                    msg.into_sasl_response()?.data.to_vec()
                } else {
                    msg.into_password()?.password.into_bytes()
                };
                match ex.step(&data) {
                    Ok(Step::Continue(m)) => {
                        *lock(&self.exchange) = Some(ex);
                        client
                            .send(PgWireBackendMessage::Authentication(
                                Authentication::SASLContinue(Bytes::from(m)),
                            ))
                            .await?;
                        Ok(())
                    }
                    Ok(Step::Done(sasl_final)) => self.finish(client, sasl_final).await,
                    Err(e) => Err(self.auth_failure(client, &user, e)),
                }
            }
            _ => Ok(()),
        }
    }
}

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
    columns: Option<SchemaRef>,
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
        match stmt.columns.as_deref() {
            Some(c) => fields(c.fields(), format),
            None => Ok(Vec::new()),
        }
    }
}

/// A parameter value as a typed SQL literal ([`crate::values::param_literal`]); its
/// errors name the parameter.
fn param_literal(i: usize, v: Option<&[u8]>, ty: &Type, binary: bool) -> PgWireResult<String> {
    let Some(v) = v else {
        return Ok("NULL".into());
    };
    crate::values::param_literal(ty, v, binary).map_err(|e| {
        pg_error(&Error::sql(
            e.sqlstate(),
            format!("parameter ${}: {}", i + 1, e.client_message()),
        ))
    })
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

/// Serves Postgres clients on `listener` until `stop` resolves, authenticating them
/// with `auth`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    engine: Arc<Engine>,
    auth: Authenticator,
    stop: impl std::future::Future<Output = ()>,
) {
    let server = Server::new(engine, auth);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            r = listener.accept() => match r {
                Ok((sock, peer)) => {
                    tracing::debug!("client connected from {peer}");
                    let _ = sock.set_nodelay(true);
                    let h = Handlers(Conn::new(server.clone()));
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
