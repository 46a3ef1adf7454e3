#!/usr/bin/env python3
"""The DuckDB side of `smrdb-bench query`.

Reads a JSON spec (path as the only argument):

    {"customers_csv": PATH, "purchases_csv": PATH, "threads": 2, "repeats": 5,
     "queries": [{"name": "Q1", "sql": "SELECT ..."}, ...]}

loads both CSVs into in-memory tables with the same column types as smrdb's
(read_csv with explicit columns, no sniffing), runs every query once as a warm-up
and then `repeats` times, timing `con.execute(sql).fetchall()` with
time.perf_counter, and prints one JSON object on stdout:

    {"duckdb_version", "python_version", "threads", "load_s": {"customers", "purchases"},
     "queries": [{"name", "sql", "warmup_s", "times_s": [...], "rows": [[...]],
                  "error": null | "text"}]}

Progress goes to stderr. The harness (harness/src/query_bench.rs) embeds this file
and runs it with the interpreter of the venv it manages.
"""

import json
import platform
import sys
import time

import duckdb

CUSTOMERS = [
    ("cust_id", "INTEGER", True),
    ("name", "VARCHAR", False),
    ("is_new", "BOOLEAN", False),
    ("region", "INTEGER", False),
]
PURCHASES = [
    ("purchase_id", "BIGINT", True),
    ("cust_id", "INTEGER", True),
    ("month", "INTEGER", False),
    ("amount", "DOUBLE", False),
    ("item", "INTEGER", False),
]


def sql_str(s):
    return "'" + s.replace("'", "''") + "'"


def load(con, table, cols, path):
    ddl = ", ".join(f"{n} {t}{' NOT NULL' if nn else ''}" for n, t, nn in cols)
    con.execute(f"CREATE TABLE {table} ({ddl})")
    columns = "{" + ", ".join(f"{sql_str(n)}: {sql_str(t)}" for n, t, _ in cols) + "}"
    t = time.perf_counter()
    con.execute(
        f"INSERT INTO {table} SELECT * FROM read_csv({sql_str(path)}, header = false, "
        f"delim = ',', quote = '\"', auto_detect = false, columns = {columns})"
    )
    secs = time.perf_counter() - t
    (n,) = con.execute(f"SELECT count(*) FROM {table}").fetchone()
    return secs, n


def cell(v):
    # JSON-safe; the harness compares cells as text (numbers with a tolerance).
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def main():
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    con = duckdb.connect(":memory:")
    con.execute(f"SET threads TO {int(spec['threads'])}")
    out = {
        "duckdb_version": duckdb.__version__,
        "python_version": platform.python_version(),
        "threads": con.execute("SELECT current_setting('threads')").fetchone()[0],
        "load_s": {},
        "rows_loaded": {},
        "queries": [],
    }
    for table, cols, key in (
        ("customers", CUSTOMERS, "customers_csv"),
        ("purchases", PURCHASES, "purchases_csv"),
    ):
        secs, n = load(con, table, cols, spec[key])
        out["load_s"][table] = secs
        out["rows_loaded"][table] = n
        print(f"duckdb: loaded {n} {table} in {secs:.2f} s", file=sys.stderr)
    for q in spec["queries"]:
        r = {"name": q["name"], "sql": q["sql"], "warmup_s": None, "times_s": [],
             "rows": [], "error": None}
        try:
            t = time.perf_counter()
            con.execute(q["sql"]).fetchall()
            r["warmup_s"] = time.perf_counter() - t
            for _ in range(int(spec["repeats"])):
                t = time.perf_counter()
                rows = con.execute(q["sql"]).fetchall()
                r["times_s"].append(time.perf_counter() - t)
            r["rows"] = [[cell(v) for v in row] for row in rows]
        except Exception as e:  # reported per query, the harness decides
            r["error"] = f"{type(e).__name__}: {e}"
        print(f"duckdb: {q['name']} done", file=sys.stderr)
        out["queries"].append(r)
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
