#!/usr/bin/env python3
"""The DuckDB side of smrdb's benchmarks (`smrdb-bench query` and any workload of
harness/src/workload.rs).

Reads a JSON spec (path as the only argument):

    {"threads": 2, "repeats": 5,
     "tables": [{"name": "customers", "ddl": "CREATE TABLE customers (...)",
                 "csv": PATH}, ...],
     "queries": [{"name": "Q1", "sql": "SELECT ..."}, ...]}

creates every table with its DDL and loads its CSV into it (in the order given) with
read_csv and explicit column types (the table's own, read back from
information_schema: no sniffing; comma separated, `"` quotes doubled inside, no
header, a quoted empty field is an empty string), runs every query once as a warm-up
and then `repeats` times, timing `con.execute(sql).fetchall()` with
time.perf_counter, and prints one JSON object on stdout:

    {"duckdb_version", "python_version", "threads",
     "tables": [{"name", "load_s", "rows"}],
     "queries": [{"name", "sql", "warmup_s", "times_s": [...], "rows": [[...]],
                  "error": null | "text"}]}

Cells are JSON numbers, strings, booleans or null; dates and decimals as text
(`1995-03-15`). Progress goes to stderr. The harness (harness/src/query_bench.rs)
embeds this file and runs it with the interpreter of the venv it manages.
"""

import json
import math
import platform
import sys
import time

import duckdb


def sql_str(s):
    return "'" + s.replace("'", "''") + "'"


def quote_ident(s):
    return '"' + s.replace('"', '""') + '"'


def load(con, table):
    name = table["name"]
    con.execute(f"DROP TABLE IF EXISTS {quote_ident(name)}")
    con.execute(table["ddl"])
    cols = con.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = ? ORDER BY ordinal_position",
        [name],
    ).fetchall()
    if not cols:
        raise RuntimeError(f"the DDL of {name} did not create a table named {name}")
    columns = "{" + ", ".join(f"{sql_str(n)}: {sql_str(t)}" for n, t in cols) + "}"
    t = time.perf_counter()
    con.execute(
        f"INSERT INTO {quote_ident(name)} SELECT * FROM read_csv({sql_str(table['csv'])}, "
        f"header = false, delim = ',', quote = '\"', escape = '\"', auto_detect = false, "
        f"allow_quoted_nulls = false, columns = {columns})"
    )
    secs = time.perf_counter() - t
    (n,) = con.execute(f"SELECT count(*) FROM {quote_ident(name)}").fetchone()
    return secs, n


def cell(v):
    # JSON-safe; the harness compares cells as text (numbers with a tolerance).
    # NaN and infinities are not JSON: sent as text ("nan", "inf").
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
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
        "tables": [],
        "queries": [],
    }
    for table in spec["tables"]:
        secs, n = load(con, table)
        out["tables"].append({"name": table["name"], "load_s": secs, "rows": n})
        print(f"duckdb: loaded {n} {table['name']} in {secs:.2f} s", file=sys.stderr)
    for q in spec["queries"]:
        r = {"name": q["name"], "sql": q["sql"], "warmup_s": None, "times_s": [],
             "rows": [], "error": None}
        try:
            t = time.perf_counter()
            rows = con.execute(q["sql"]).fetchall()
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
