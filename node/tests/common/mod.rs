//! Helpers shared by the node's integration tests: every test file is its own crate
//! and includes this module with `mod common;` (not every file uses every helper).

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use postgres::{Client, NoTls, SimpleQueryMessage};

/// The `smrdb` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_smrdb");

/// A loopback port free right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// SIGKILL to `pid` (quietly: it may be gone already).
pub fn kill_pid(pid: u32) {
    let _ = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// A client of the primary on `port` as user smrdb, retried for up to 60 s (a
/// cluster that is still starting).
pub fn connect(port: u16) -> Client {
    connect_within(port, Duration::from_secs(60), String::new)
}

/// As [`connect`], retried for up to `limit`; the panic then names the last error and
/// `context()` (a log tail, say).
pub fn connect_within(port: u16, limit: Duration, context: impl Fn() -> String) -> Client {
    let deadline = Instant::now() + limit;
    let mut last = String::from("nothing listens");
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            match Client::connect(
                &format!("host=127.0.0.1 port={port} user=smrdb dbname=smrdb"),
                NoTls,
            ) {
                Ok(c) => return c,
                Err(e) => last = e.to_string(),
            }
        }
        assert!(
            Instant::now() < deadline,
            "no connection on port {port} ({last}); {}",
            context()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The text rows of a simple query (every statement of it).
pub fn try_rows(c: &mut Client, sql: &str) -> Result<Vec<Vec<Option<String>>>, postgres::Error> {
    Ok(c.simple_query(sql)?
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect())
}

/// As [`try_rows`]; panics, naming the statement, when it fails.
pub fn rows(c: &mut Client, sql: &str) -> Vec<Vec<Option<String>>> {
    try_rows(c, sql).unwrap_or_else(|e| match e.as_db_error() {
        Some(d) => panic!("{sql}: {} {}", d.code().code(), d.message()),
        None => panic!("{sql}: {e}"),
    })
}

/// The SQLSTATE of a database error (a description when it is not one).
pub fn sqlstate(e: &postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_string())
        .unwrap_or_else(|| format!("not a db error: {e}"))
}
