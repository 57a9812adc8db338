#!/usr/bin/env python3
"""Replays meterflow's ClickHouse statements and documented queries on current ClickHouse.

The integration test runs meterflow against ClickHouse 18.16 with METERFLOW_SQL_LOG set, dumps
every table, and calls this script, which uses the ClickHouse engine embedded in `chdb-core`
(current ClickHouse) to:

(and, with --http, the documented queries on the 18.16 server as well) to:

1. create the schema with the exact CREATE statements meterflow sent,
2. load the dumped rows,
3. run every query in the given Markdown docs (```sql blocks) over that data,
4. run every other statement meterflow sent (SELECTs, ALTER ... DELETE, ...).

Any statement that fails is printed with its error, and the exit status is 1.

    chdb_check.py --log sql.log --dump DIR --docs docs/clickhouse.md \
                  [--csv-docs docs/outputs.md --csv-out DEMO_OUT] [--describe TABLES.tsv]
"""

import argparse
import os
import re
import sys
import tempfile


def statements(text):
    """Statements separated by `;` at the end of a line (comment lines dropped), each with
    whether a comment says it must return no rows (`-- expect no rows`)."""
    out = []
    for part in re.split(r";[ \t]*(?:\n|$)", text):
        lines = [l for l in part.splitlines() if not l.strip().startswith("--")]
        sql = "\n".join(lines).strip()
        if sql:
            out.append((sql, "expect no rows" in part))
    return out


def grafana_queries(path):
    """Every panel's and template variable's SQL of a Grafana dashboard, with `${var}` filled in
    by a value (the panels must be valid SQL whatever the variable holds)."""
    import json
    with open(path) as f:
        d = json.load(f)
    found = [v["query"] for v in d.get("templating", {}).get("list", []) if isinstance(v.get("query"), str)]
    found += [t["rawSql"] for p in d.get("panels", []) for t in p.get("targets", []) if t.get("rawSql")]
    return [(re.sub(r"\$\{\w+\}", "acme", q), False) for q in found]


def sql_blocks(markdown):
    return [s for block in re.findall(r"```sql\n(.*?)```", markdown, re.S) for s in statements(block)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--log", required=True, help="statements meterflow sent (METERFLOW_SQL_LOG)")
    ap.add_argument("--dump", required=True, help="directory of <table>.tsv (TabSeparatedWithNamesAndTypes)")
    ap.add_argument("--database", default="meterflow")
    ap.add_argument("--docs", nargs="*", default=[], help="Markdown files whose sql blocks query the tables")
    ap.add_argument("--csv-docs", nargs="*", default=[], help="Markdown files whose sql blocks read CSV output under out/")
    ap.add_argument("--csv-out", help="a CSV output directory, substituted for out/")
    ap.add_argument("--http", help="also run the --docs queries on this server (the 18.16 one)")
    ap.add_argument("--grafana", nargs="*", default=[], help="Grafana dashboard JSON files whose panel SQL queries the tables")
    ap.add_argument("--describe", help="write each table's columns, engine and keys as created (TSV) here")
    args = ap.parse_args()

    try:
        from chdb import session
    except ImportError:
        sys.exit("chdb is not installed: run deploy/install-test-servers.sh (pip install chdb-core)")
    import chdb

    sent = [sql for sql, _ in statements(open(args.log).read())]
    def is_ddl(sql):
        up = sql.upper()
        return up.startswith("CREATE") or (up.startswith("ALTER") and "ADD COLUMN" in up)

    creates = [s for s in sent if is_ddl(s)]
    others = [s for s in sent if not is_ddl(s)]
    if not creates:
        sys.exit(f"{args.log} holds no CREATE statements: was METERFLOW_SQL_LOG set for `meterflow migrate`?")

    failures = []
    ran = 0
    with tempfile.TemporaryDirectory() as tmp:
        sess = session.Session(os.path.join(tmp, "chdb"))

        def run(sql, what, rows_wanted=None):
            nonlocal ran
            try:
                res = sess.query(sql, "TabSeparated")
                ran += 1
                text = res.bytes().decode() if hasattr(res, "bytes") else str(res)
                rows = [l for l in text.splitlines() if l]
                if rows_wanted == "none" and rows:
                    failures.append((what, sql, f"expected no rows, got {len(rows)}: {rows[:3]}"))
                return rows
            except Exception as e:  # chdb raises its own error types
                failures.append((what, sql, str(e).strip()[:600]))
                return []

        for sql in creates:
            run(sql, "meterflow's DDL")
        if args.describe:
            # What the migrations made, for the registry check in the Rust test: one line per
            # column (table, "column", name, type) and per table (table, "table", engine,
            # partition key, sorting key).
            described = run(f"SELECT table, 'column', name, type FROM system.columns "
                            f"WHERE database = '{args.database}' ORDER BY table, position",
                            "describing the tables")
            described += run(f"SELECT name, 'table', engine, partition_key, sorting_key FROM system.tables "
                             f"WHERE database = '{args.database}' ORDER BY name",
                             "describing the tables")
            with open(args.describe, "w") as f:
                f.write("\n".join(described) + "\n")
        for name in sorted(os.listdir(args.dump)):
            if name.endswith(".tsv"):
                table = name[:-4]
                path = os.path.abspath(os.path.join(args.dump, name))
                run(f"INSERT INTO {args.database}.{table} SELECT * FROM file('{path}', 'TabSeparatedWithNamesAndTypes')",
                    f"loading {table}")
        loaded = run(f"SELECT count() FROM {args.database}.invoice_lines", "counting loaded rows")
        for doc in args.docs:
            for sql, expect_none in sql_blocks(open(doc).read()):
                run(sql, doc, "none" if expect_none else None)
        for doc in args.grafana:
            for sql, _ in grafana_queries(doc):
                run(sql, doc)
        for doc in args.csv_docs:
            if not args.csv_out:
                sys.exit("--csv-docs needs --csv-out")
            for sql, expect_none in sql_blocks(open(doc).read()):
                run(sql.replace("'out/", f"'{os.path.abspath(args.csv_out)}/"), doc,
                    "none" if expect_none else None)
        for sql in others:
            run(sql, "statement meterflow sent")

    if args.http:
        import urllib.error
        import urllib.request
        for doc in args.docs + args.grafana:
            queries = grafana_queries(doc) if doc.endswith(".json") else sql_blocks(open(doc).read())
            for sql, expect_none in queries:
                try:
                    with urllib.request.urlopen(args.http, data=sql.encode(), timeout=60) as r:
                        rows = [l for l in r.read().decode().splitlines() if l]
                    ran += 1
                    if expect_none and rows:
                        failures.append((f"{doc} on {args.http}", sql, f"expected no rows, got {rows[:3]}"))
                except urllib.error.HTTPError as e:
                    failures.append((f"{doc} on {args.http}", sql, e.read().decode()[:600]))

    print(f"chdb {chdb.__version__}: {ran} statements ran "
          f"({len(creates)} DDL, {len(others)} sent by meterflow, invoice_lines rows loaded: {loaded[:1]})")
    for what, sql, err in failures:
        print(f"\nFAILED ({what}):\n{sql}\n--> {err}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
