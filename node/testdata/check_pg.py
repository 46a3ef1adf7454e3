#!/usr/bin/env python3
r"""Check the expected values of node/src/values.rs's tests against a real PostgreSQL.

The unit tests in values.rs read two tables beside this script:

- pg_values.tsv: result values. Per row an Arrow value (kind, value), the same value in
  PostgreSQL (an SQL expression), and what PostgreSQL says of it: type OID, typmod,
  typlen, text output, binary output (hex, the type's send function). This script
  evaluates each expression and compares OID and typmod (of a column made by CREATE
  TABLE AS, and in the RowDescription of a SELECT), typlen (RowDescription), text
  (`psql -At`) and binary (`COPY ... TO STDOUT (FORMAT binary)`).
- pg_params.tsv: parameters of the extended protocol. Per row a PostgreSQL type, a
  format (text / binary), the client's value (hex for binary) and the SQL literal
  smrdb makes of it, or `ERROR <sqlstate>`. For text rows this script checks that
  PostgreSQL reads the value (`'value'::type`) as the same value, by text, as it
  reads the literal (`(literal)::type`), or fails with the same SQLSTATE; for binary rows, that the
  literal's binary form (COPY binary) is the value given.

Needs psql and a PostgreSQL 15 server (PGHOST, PGPORT, PGUSER, PGDATABASE as usual;
session TimeZone UTC is set here). With --fill, rewrites the PostgreSQL columns of
pg_values.tsv from the server instead of checking them (then review the diff).

    python3 node/testdata/check_pg.py [--fill]

A throwaway server on a unix socket (Debian's postgresql package, run as postgres):

    initdb -D /tmp/pgvals/data -A trust -U postgres --locale=C.UTF-8
    pg_ctl -D /tmp/pgvals/data -l /tmp/pgvals/log \
        -o "-k /tmp/pgvals -p 5533 -c listen_addresses=127.0.0.1" start
    PGHOST=/tmp/pgvals PGPORT=5533 PGUSER=postgres PGDATABASE=postgres \
        python3 node/testdata/check_pg.py
"""

import os
import socket
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ENV = dict(os.environ, PGTZ="UTC", PGOPTIONS="-c DateStyle=ISO,MDY -c IntervalStyle=postgres -c extra_float_digits=1")


def psql(sql, binary=False):
    """Runs sql; returns (ok, stdout bytes or error text with SQLSTATE)."""
    p = subprocess.run(
        ["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose", "-c", sql],
        capture_output=True,
        env=ENV,
    )
    if p.returncode != 0:
        return False, p.stderr.decode()
    return True, p.stdout if binary else p.stdout.decode()


def copy_binary(expr):
    """The binary form (hex) of the single value of `SELECT expr`."""
    ok, out = psql(f"COPY (SELECT {expr}) TO STDOUT (FORMAT binary)", binary=True)
    if not ok:
        raise RuntimeError(out)
    # Header: 11-byte signature, flags, extension length; then one tuple.
    assert out[:11] == b"PGCOPY\n\xff\r\n\x00"
    k = 19 + int.from_bytes(out[15:19], "big")
    assert int.from_bytes(out[k : k + 2], "big") == 1
    n = int.from_bytes(out[k + 2 : k + 6], "big", signed=True)
    return "NULL" if n < 0 else out[k + 6 : k + 6 + n].hex()


def text(expr):
    ok, out = psql(f"SELECT {expr}")
    if not ok:
        raise RuntimeError(out)
    assert out.endswith("\n")
    return out[:-1]


def oid_typmod(expr):
    ok, out = psql(
        f"CREATE TEMP TABLE v AS SELECT {expr} AS v; "
        "SELECT atttypid, atttypmod FROM pg_attribute "
        "WHERE attrelid = 'v'::regclass AND attname = 'v'"
    )
    if not ok:
        raise RuntimeError(out)
    oid, typmod = out.strip().split("\n")[-1].split("|")
    return oid, typmod


class Wire:
    """A minimal protocol-3 client (trust authentication) to read RowDescription."""

    def __init__(self):
        host = os.environ.get("PGHOST", "/var/run/postgresql")
        port = int(os.environ.get("PGPORT", "5432"))
        if host.startswith("/"):
            self.s = socket.socket(socket.AF_UNIX)
            self.s.connect(f"{host}/.s.PGSQL.{port}")
        else:
            self.s = socket.create_connection((host, port))
        user = os.environ.get("PGUSER", os.environ.get("USER", "postgres"))
        params = f"user\0{user}\0database\0{os.environ.get('PGDATABASE', user)}\0\0".encode()
        self.s.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
        self.until_ready()

    def recv(self, n):
        b = b""
        while len(b) < n:
            c = self.s.recv(n - len(b))
            if not c:
                raise RuntimeError("connection closed")
            b += c
        return b

    def until_ready(self):
        msgs = []
        while True:
            t, n = struct.unpack("!ci", self.recv(5))
            body = self.recv(n - 4)
            if t == b"R" and struct.unpack("!i", body[:4])[0] != 0:
                raise RuntimeError("the server wants a password; use trust")
            if t == b"Z":
                return msgs
            msgs.append((t, body))

    def describe(self, sql):
        """(oid, typlen, typmod) of the one result column of sql."""
        q = sql.encode() + b"\0"
        self.s.sendall(b"Q" + struct.pack("!i", 4 + len(q)) + q)
        for t, body in self.until_ready():
            if t == b"E":
                raise RuntimeError(body)
            if t == b"T":
                assert struct.unpack("!h", body[:2])[0] == 1
                k = body.index(b"\0", 2) + 1
                _, _, oid, typlen, typmod, _ = struct.unpack("!ihihih", body[k : k + 18])
                return str(oid), str(typlen), str(typmod)
        raise RuntimeError(f"no RowDescription for {sql}")


def values(fill):
    path = os.path.join(HERE, "pg_values.tsv")
    lines = open(path, encoding="utf-8").read().split("\n")
    out, bad = [], 0
    wire = Wire()
    for line in lines:
        if not line or line.startswith("#"):
            out.append(line)
            continue
        kind, value, sql, *rest = line.split("\t")
        oid, typmod = oid_typmod(sql)
        # What a client sees in RowDescription: the same type, and its width.
        d_oid, typlen, d_typmod = wire.describe(f"SELECT {sql}")
        if (d_oid, d_typmod) != (oid, typmod):
            bad += 1
            print(f"pg_values.tsv: {sql}: RowDescription {d_oid} {d_typmod}, column {oid} {typmod}")
        if kind.endswith("*"):
            typmod = "*"
        got = [oid, typmod, typlen, text(sql), copy_binary(sql)]
        if fill:
            out.append("\t".join([kind, value, sql] + got))
        elif rest != got:
            bad += 1
            print(f"pg_values.tsv: {kind} {value} ({sql}): table {rest}, PostgreSQL {got}")
    if fill:
        open(path, "w", encoding="utf-8").write("\n".join(out))
    return sum(1 for l in lines if l and not l.startswith("#")), bad


def sqlstate(err):
    # VERBOSITY verbose: "ERROR:  22P02: invalid input syntax ..."
    for line in err.splitlines():
        if line.startswith("ERROR:"):
            return line.split(":")[1].strip()
    return err


def params():
    path = os.path.join(HERE, "pg_params.tsv")
    n, bad = 0, 0
    for line in open(path, encoding="utf-8").read().split("\n"):
        if not line or line.startswith("#"):
            continue
        n += 1
        ty, fmt, value, expect = line.split("\t")
        if fmt == "binary":
            if expect.startswith("ERROR"):
                continue  # PostgreSQL's own binary reader is not reachable from psql
            got = copy_binary(expect)
            if got != value:
                bad += 1
                print(f"pg_params.tsv: {ty} binary {value}: {expect} is {got} in PostgreSQL")
            continue
        lit = "'" + value.replace("'", "''") + "'"
        ok, got = psql(f"SELECT ({lit}::{ty})::text")
        if expect.startswith("ERROR"):
            want = expect.split()[1]
            if ok or sqlstate(got) != want:
                bad += 1
                print(f"pg_params.tsv: {ty} {value!r}: expected {want}, PostgreSQL: {got.strip()}")
            continue
        if not ok:
            bad += 1
            print(f"pg_params.tsv: {ty} {value!r}: PostgreSQL fails: {got.strip()}")
            continue
        ok2, mine = psql(f"SELECT (({expect})::{ty})::text")
        if not ok2 or mine != got:
            bad += 1
            print(f"pg_params.tsv: {ty} {value!r}: PostgreSQL {got.strip()!r}, {expect} {mine.strip()!r}")
    return n, bad


def main():
    fill = "--fill" in sys.argv[1:]
    n1, b1 = values(fill)
    n2, b2 = (0, 0) if fill else params()
    print(text("version()"))
    print(f"{n1 + n2 - b1 - b2} passed, {b1 + b2} failed")
    sys.exit(1 if b1 + b2 else 0)


if __name__ == "__main__":
    main()
