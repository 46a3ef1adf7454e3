#!/usr/bin/env python3
r"""Run sqllogictest files against a real PostgreSQL and report every difference.

The expected answers in tests/slt/*.slt follow PostgreSQL; this script checks a file
against one, rendering values the way harness/tests/slt.rs does: NULL, t/f, integers
as is, floats with three decimals (Rust's `{:.3}`: the exact binary value rounded,
ties to even; Python's format does the same), NUMERIC rounded from the exact decimal
half away from zero, dates YYYY-MM-DD, the empty string `(empty)`, anything else as
PostgreSQL's text. Column-type letters: int2/int4/int8 I, float4/float8/numeric R,
the rest T. Cells are compared after the harness's normalisation (whitespace runs
collapsed, cells joined by one space); `rowsort` sorts the unnormalised rows.

Understood: `statement ok`, `statement count N`, `statement error (SQLSTATE)` (any
other text after `statement error` only requires an error), `query <letters>
[rowsort|valuesort|nosort]` with `----` results, `query error (SQLSTATE)`, `control
substitution on|off` ($SLT_DATA / ${SLT_DATA} -> tests/slt/data). Skipped with a note:
records that use smrdb-only things (`smrdb_` tables, `SET smrdb.`, `$SLT_GEN`) and
`onlyif` records for another engine.

Documented type differences: a comment line `# pg-types: <letters>` directly above a
query says that PostgreSQL types its columns as <letters> while smrdb (DataFusion)
types them as in the `query` line (e.g. SUM(bigint) is numeric in PostgreSQL and
Int64 in DataFusion; EXTRACT is numeric in PostgreSQL and Int32 in DataFusion). The
checker then requires PostgreSQL's letters to equal <letters>, and renders an integral
numeric as an integer in a column that the `query` line types I.

Warnings (not failures): an R value whose exact value is within 1e-6 of a rounding
tie at 3 decimals, or that renders as -0.000; engines may render those differently.

A server for it (Debian's postgresql package; a C collation, so that text sorts
bytewise like smrdb):
    apt-get install -y postgresql && pip install 'psycopg[binary]'
    mkdir -p /tmp/pgslt && chown postgres /tmp/pgslt
    su postgres -c "/usr/lib/postgresql/15/bin/initdb -D /tmp/pgslt/data -U postgres \
        --auth=trust -E UTF8 --locale=C.UTF-8"
    su postgres -c "/usr/lib/postgresql/15/bin/pg_ctl -D /tmp/pgslt/data -l /tmp/pgslt/log \
        -o '-k /tmp -p 5499 -c listen_addresses=127.0.0.1' start"
    su postgres -c "psql -h 127.0.0.1 -p 5499 -c 'CREATE DATABASE slt'"

Usage (a server on 127.0.0.1:5499, database slt, user postgres, by default):
    python3 tests/slt/pg_check.py tests/slt/subquery.slt [more.slt ...]
    python3 tests/slt/pg_check.py --dsn "host=... port=... dbname=... user=..." FILE
    python3 tests/slt/pg_check.py --fix FILE   # rewrite expected rows, letters (of
        # queries without `# pg-types:`) and statement counts from PostgreSQL
Exit status 0 when every file matched (warnings allowed), 1 otherwise.
"""

import argparse
import os
import re
import struct
import sys
from decimal import Decimal, ROUND_HALF_UP

import psycopg
from psycopg.adapt import Loader

HERE = os.path.dirname(os.path.abspath(__file__))
DATA_DIR = os.path.join(HERE, "data")
INT_OIDS = {20, 21, 23}
FLOAT4, FLOAT8, NUMERIC = 700, 701, 1700
SMRDB_ONLY = re.compile(r"smrdb_|SET\s+smrdb\.|\$\{?SLT_GEN", re.I)


class TextLoader(Loader):
    """Every value as PostgreSQL's text output (rendered by `render` below)."""

    def load(self, data):
        return bytes(data).decode()


def connect(dsn):
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute("SET jit = off")  # 64-table joins of unanalysed tables would JIT-compile
    conn.execute("SET datestyle = 'ISO, MDY'")
    conn.execute("SET extra_float_digits = 1")  # shortest exact text for floats
    collate = conn.execute("SELECT datcollate FROM pg_database WHERE datname = current_database()").fetchone()[0]
    if collate not in ("C", "POSIX", "C.UTF-8", "C.utf8"):
        print(f"warning: database collation is {collate}; text sorts bytewise only under C")
    for t in conn.adapters.types:  # every built-in type, so nothing is parsed
        conn.adapters.register_loader(t.oid, TextLoader)
    return conn


def letter(oid):
    return "I" if oid in INT_OIDS else "R" if oid in (FLOAT4, FLOAT8, NUMERIC) else "T"


def render(oid, v, warn):
    if v is None:
        return "NULL"
    if oid in (FLOAT4, FLOAT8, NUMERIC):
        if v in ("NaN", "Infinity", "-Infinity"):
            return v
        if oid == NUMERIC:
            exact = Decimal(v)
            s = str(exact.quantize(Decimal("0.001"), rounding=ROUND_HALF_UP))
        else:
            x = float(v)
            if oid == FLOAT4:  # the harness widens the f32 it received
                x = struct.unpack("f", struct.pack("f", x))[0]
            exact = Decimal(x)
            s = format(x, ".3f")
        frac = abs(exact * 1000) % 1
        if abs(frac - Decimal("0.5")) < Decimal("0.000001"):
            warn(f"value {v} is (nearly) a rounding tie at 3 decimals")
        if s == "-0.000":
            warn(f"value {v} renders as -0.000")
        return s
    if oid == 16:
        return v  # PostgreSQL's text is already t / f
    return "(empty)" if v == "" else v


def render_int(v):
    """A numeric that smrdb types as an integer (see `# pg-types:`)."""
    if v is None:
        return "NULL"
    d = Decimal(v)
    return str(int(d)) if d == d.to_integral_value() else v


def norm(s):
    return " ".join(s.split())


class Record:
    def __init__(self, kind, header, start, comments):
        self.kind = kind          # statement | query | control
        self.header = header      # the header line's words
        self.start = start        # index of the header line
        self.comments = comments  # comment lines just above
        self.sql = []
        self.expected = []
        self.sep = None           # index of the ---- line
        self.end = None           # index after the last line
        self.conditions = []


def parse(lines):
    records, comments, conditions, i = [], [], [], 0
    while i < len(lines):
        line = lines[i].rstrip("\n")
        words = line.split()
        if not words:
            comments, i = [], i + 1
            continue
        if line.startswith("#"):
            comments.append(line)
            i += 1
            continue
        if words[0] in ("onlyif", "skipif"):
            conditions.append(words)
            i += 1
            continue
        if words[0] in ("statement", "query", "control"):
            rec = Record(words[0], words, i, comments)
            rec.conditions, comments, conditions = conditions, [], []
            i += 1
            if rec.kind != "control":
                while i < len(lines) and lines[i].strip() and lines[i].rstrip("\n") != "----":
                    rec.sql.append(lines[i].rstrip("\n"))
                    i += 1
                if i < len(lines) and lines[i].rstrip("\n") == "----":
                    rec.sep = i
                    i += 1
                    while i < len(lines) and lines[i].strip():
                        rec.expected.append(lines[i].rstrip("\n"))
                        i += 1
            rec.end = i
            records.append(rec)
            continue
        # hash-threshold, halt, include ...: not used by this corpus
        print(f"  line {i + 1}: ignoring unsupported line: {line}")
        comments, i = [], i + 1
    return records


def expected_code(words):
    m = re.match(r"\((\w{5})\)$", " ".join(words))
    return m.group(1) if m else None


def check_file(path, conn, fix):
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    records = parse(lines)
    subst = False
    fails = warns = skipped = ran = 0
    edits = []  # (start, end, new lines)
    name = os.path.basename(path)
    with conn.cursor() as cur:
        # A fresh session per file, as the harness opens a new connection per file.
        for rec in records:
            if rec.kind == "control":
                if rec.header[1:2] == ["substitution"]:
                    subst = rec.header[2:3] == ["on"]
                continue
            where = f"{name}:{rec.start + 1}"
            sql = "\n".join(rec.sql)
            if subst:
                sql = sql.replace("${SLT_DATA}", DATA_DIR).replace("$SLT_DATA", DATA_DIR)
            if any(c[0] == "onlyif" and c[1] != "postgres" for c in rec.conditions) or any(
                c[0] == "skipif" and c[1] == "postgres" for c in rec.conditions
            ):
                print(f"{where}: skipped (condition {rec.conditions})")
                skipped += 1
                continue
            if SMRDB_ONLY.search(sql):
                print(f"{where}: skipped (smrdb-only: {sql.splitlines()[0][:60]})")
                skipped += 1
                continue
            ran += 1
            record_warns = []
            try:
                cur.execute(sql)
                err = None
            except psycopg.Error as e:
                err = e
            code = getattr(err, "sqlstate", None) if err else None
            msg = str(err).splitlines()[0] if err else ""
            problems = []

            is_error = rec.header[1:2] == ["error"]
            if is_error:
                want = expected_code(rec.header[2:])
                if err is None:
                    problems.append(f"expected error {want or ''} but it succeeded")
                elif want and want != code:
                    problems.append(f"expected SQLSTATE {want}, PostgreSQL says {code}: {msg}")
            elif err is not None:
                problems.append(f"unexpected error {code}: {msg}")
            elif rec.kind == "statement":
                if rec.header[1:2] == ["count"]:
                    n = cur.rowcount
                    if str(n) != rec.header[2]:
                        problems.append(f"expected count {rec.header[2]}, PostgreSQL says {n}")
                        edits.append((rec.start, rec.start + 1, [f"statement count {n}\n"]))
            else:  # query with results
                desc = cur.description or []
                oids = [d.type_code for d in desc]
                pg_letters = "".join(letter(o) for o in oids)
                want_letters = rec.header[1]
                rows = cur.fetchall() if desc else []
                warn = record_warns.append
                documented = [c.split(":", 1)[1].strip() for c in rec.comments
                              if c.lstrip("# ").startswith("pg-types:")]
                # Documented I-for-numeric columns: an integral value renders as an integer.
                as_int = {i for i, (w, p) in enumerate(zip(want_letters, pg_letters))
                          if documented and w == "I" and p == "R"}
                rows = [[render_int(v) if i in as_int else render(o, v, warn)
                         for i, (o, v) in enumerate(zip(oids, r))] for r in rows]
                sort = rec.header[2] if len(rec.header) > 2 else None
                if sort == "rowsort":
                    rows.sort()
                elif sort == "valuesort":
                    rows = sorted([c] for r in rows for c in r)
                actual = [" ".join(norm(c) for c in r) for r in rows]
                if documented:
                    if pg_letters != documented[0]:
                        problems.append(f"# pg-types: {documented[0]}, but PostgreSQL types "
                                        f"are {pg_letters}")
                    if len(want_letters) != len(pg_letters):
                        problems.append(f"letters {want_letters} for {len(pg_letters)} columns")
                    new_letters = want_letters
                else:
                    new_letters = pg_letters
                    if pg_letters != want_letters:
                        problems.append(f"type letters {want_letters}, PostgreSQL gives {pg_letters}")
                if actual != [norm(e) for e in rec.expected]:
                    problems.append("results differ:\n    expected:\n"
                                    + "".join(f"      {e}\n" for e in rec.expected)
                                    + "    PostgreSQL:\n"
                                    + "".join(f"      {a}\n" for a in actual))
                if fix and problems:
                    head = " ".join(["query", new_letters] + rec.header[2:]) + "\n"
                    body = [l + "\n" for l in rec.sql] + ["----\n"] + [a + "\n" for a in actual]
                    edits.append((rec.start, rec.end, [head] + body))
            for w in record_warns:
                print(f"{where}: warning: {w}")
                warns += 1
            if problems:
                fails += 1
                print(f"{where}: {sql.splitlines()[0][:100]}")
                for p in problems:
                    print(f"    {p}")
    if fix and edits:
        for start, end, new in sorted(edits, reverse=True):
            lines[start:end] = new
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(lines)
        print(f"{name}: rewrote {len(edits)} records")
    print(f"{name}: {ran} records run, {fails} differ, {warns} warnings, {skipped} skipped")
    return fails


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--dsn", default=os.environ.get(
        "PG_CHECK_DSN", "host=127.0.0.1 port=5499 dbname=slt user=postgres"))
    ap.add_argument("--fix", action="store_true",
                    help="rewrite expected results from PostgreSQL (review the diff!)")
    args = ap.parse_args()
    total = 0
    for path in args.files:
        with connect(args.dsn) as conn:
            total += check_file(path, conn, args.fix)
    print(f"total: {total} differing records")
    sys.exit(1 if total else 0)


if __name__ == "__main__":
    main()
