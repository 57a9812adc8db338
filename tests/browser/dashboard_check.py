#!/usr/bin/env python3
"""Drives headless Chromium through `meterflow dashboard` and checks what the pages show.

The numbers are computed here, independently of meterflow's code: from the run's CSV tables
(`--out`) or with SQL against ClickHouse (`--clickhouse`, over the `v_*` views meterflow's
migrations create). The browser loads the exec, account and ops views, picks a customer with the
picker, and every number below must equal the computed one:

- usage revenue and invoiced total (exec),
- capture rate in events, from the scorecard `meterflow scorecard` recorded (exec),
- a customer's consumption per SKU and remaining entitlement in its latest period (account),
- rejections by reason (ops),
- checks drifting of checks made by the latest `meterflow reconcile` (exec; when it ran),
- the contract liability each period of the revenue schedule leaves (exec), and the customer's revenue
  schedule rows in its latest period (account), when `meterflow revenue` ran.

It also checks the empty states (unknown customer, malformed period, a period without data) and
that the browser console holds no errors. Exit status 0 when everything matched; otherwise every
mismatch is printed.

    dashboard_check.py --url http://127.0.0.1:PORT --catalog DIR (--out DIR | --clickhouse URL)
                       [--customer acme] [--screenshots DIR]
    dashboard_check.py --url ... --expect-down     # ClickHouse is down: the page says so
"""

import argparse
import csv
import glob
import os
import sys
import time
import tomllib
import urllib.parse
import urllib.request
from collections import defaultdict
from decimal import ROUND_HALF_EVEN, Decimal

failures = []


def fail(what):
    failures.append(what)
    print("MISMATCH:", what)


def cents(d):
    return str(Decimal(d).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN))


def percent(part, whole):
    """meterflow's percentage text: basis points rounded half up, two decimals."""
    if whole == 0:
        return None
    bp = (part * 10000 + whole // 2) // whole
    return f"{bp // 100}.{bp % 100:02d}%"


# --- the expected numbers ----------------------------------------------------------------------

def rows(out, table):
    found = []
    for part in sorted(glob.glob(os.path.join(out, table, "*.csv"))):
        with open(part, newline="") as f:
            found.extend(csv.DictReader(f))
    return found


def expected_from_files(out, customer, included):
    lines = rows(out, "invoice_lines")
    usage, invoiced = defaultdict(Decimal), defaultdict(Decimal)
    periods = defaultdict(int)
    for r in lines:
        a = Decimal(r["amount"]) * int(r["sign"])
        invoiced[r["currency"]] += a
        if r["line_type"] in ("usage", "adjustment"):
            usage[r["currency"]] += a
        if r["customer_id"] == customer:
            periods[(r["invoice_period"], r["contract_id"], r["sku"], r["line_type"], r["service_period"], r["region"])] += int(r["sign"])
    latest = max(k[0] for k, n in periods.items() if n > 0)
    score = [r for r in rows(out, "scorecard") if r["measure"] == "capture" and r["period"] == "*"
             and r["customer_id"] == "*" and r["sku"] == "*"]
    if not score:
        sys.exit(f"{out}/scorecard is empty: run `meterflow scorecard` over the output first")
    metered = sum(int(r["events"]) for r in score if r["cause"] == "metered")
    billed = sum(int(r["events"]) for r in score if r["cause"] == "billed")
    consumption = defaultdict(Decimal)
    for r in rows(out, "usage_buckets"):
        if r["customer_id"] == customer and r["bucket_start"][:7] == latest:
            consumption[r["sku"]] += Decimal(r["quantity"]) * int(r["sign"])
    used = defaultdict(Decimal)
    for r in rows(out, "line_usage"):
        if r["customer_id"] == customer and r["service_period"] == latest:
            used[r["sku"]] += Decimal(r["quantity"]) * int(r["sign"])
    rejections = defaultdict(int)
    for r in rows(out, "rejections"):
        rejections[r["reason"]] += 1
    deferred = defaultdict(Decimal)
    revenue = defaultdict(lambda: [Decimal(0)] * 4)
    for r in rows(out, "revenue_schedule"):
        deferred[(r["period"], r["currency"])] += Decimal(r["deferred"]) * int(r["sign"])
        if r["customer_id"] == customer and r["period"] == latest:
            net = revenue[(r["contract_id"], r["obligation"], r["service_period"])]
            for i, column in enumerate(("billed", "recognised", "deferred", "unbilled")):
                net[i] += Decimal(r[column]) * int(r["sign"])
    checked = rows(out, "reconciliation")
    last_run = max(checked, key=lambda r: r["checked_at"])["run_id"] if checked else None
    checked = [r for r in checked if r["run_id"] == last_run]
    return {
        "drifting": f"{sum(r['drift'] == '1' for r in checked)} of {len(checked)}" if checked else None,
        "liability": liability(deferred),
        "revenue": {k: cents(a[1]) for k, a in revenue.items() if any(a)},
        "usage_revenue": {c: cents(a) for c, a in usage.items()},
        "invoiced": {c: cents(a) for c, a in invoiced.items()},
        "capture_events": percent(billed, metered),
        "period": latest,
        "consumption": {s: q for s, q in consumption.items() if q != 0},
        "remaining": {s: max(Decimal(0), Decimal(i) - used[s]) for s, i in included.items()},
        "used": {s: used[s] for s in included},
        "rejections": dict(rejections),
    }


def liability(deferred):
    """The contract liability each period of the revenue schedule leaves: `(period, currency) ->
    cents`, the running sum of the net `deferred` of that currency's periods up to it."""
    held, out = defaultdict(Decimal), {}
    for (period, currency), x in sorted(deferred.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        held[currency] += x
        out[(period, currency)] = cents(held[currency])
    return out


def sql(url, query):
    with urllib.request.urlopen(url, data=(query + " FORMAT TabSeparated").encode(), timeout=60) as r:
        return [l.split("\t") for l in r.read().decode().splitlines() if l]


def expected_from_clickhouse(url, db, customer, included):
    usage = {c: cents(a) for c, a in sql(url, f"SELECT currency, sum(amount) FROM {db}.v_exec_revenue "
                                              "WHERE line_type IN ('usage', 'adjustment') GROUP BY currency")}
    invoiced = {c: cents(a) for c, a in sql(url, f"SELECT currency, sum(amount) FROM {db}.v_exec_revenue GROUP BY currency")}
    [[latest]] = sql(url, f"SELECT max(invoice_period) FROM {db}.v_exec_revenue WHERE customer_id = '{customer}' AND events != 0")
    [[metered, billed]] = sql(url, f"SELECT sumIf(events, cause = 'metered'), sumIf(events, cause = 'billed') "
                                   f"FROM {db}.v_exec_capture WHERE measure = 'capture' AND period = '*' "
                                   "AND customer_id = '*' AND sku = '*'")
    consumption = {s: Decimal(q) for s, q in sql(
        url, f"SELECT sku, sum(quantity) FROM {db}.v_exec_daily WHERE customer_id = '{customer}' "
             f"AND formatDateTime(day, '%Y-%m') = '{latest}' GROUP BY sku") if Decimal(q) != 0}
    used = defaultdict(Decimal, {s: Decimal(q) for s, q in sql(
        url, f"SELECT sku, sum(quantity) FROM {db}.v_account_usage WHERE customer_id = '{customer}' "
             f"AND service_period = '{latest}' GROUP BY sku")})
    rejections = {r: int(n) for r, n in sql(url, f"SELECT reason, sum(records) FROM {db}.v_ops_rejections GROUP BY reason")}
    # From the table itself, not the view the dashboard reads.
    [[lines, drifting]] = sql(url, f"SELECT count(), sum(drift) FROM {db}.reconciliation WHERE run_id = "
                                   f"(SELECT argMax(run_id, checked_at) FROM {db}.reconciliation)")
    deferred = {(p, c): Decimal(x) for p, c, x in sql(
        url, f"SELECT period, currency, sum(deferred * sign) FROM {db}.revenue_schedule GROUP BY period, currency")}
    revenue = {(k, o, s): cents(r) for k, o, s, r, *others in sql(
        url, f"SELECT contract_id, obligation, service_period, sum(recognised * sign), sum(billed * sign), "
             f"sum(deferred * sign), sum(unbilled * sign) FROM {db}.revenue_schedule "
             f"WHERE customer_id = '{customer}' AND period = '{latest}' "
             f"GROUP BY contract_id, obligation, service_period") if any(map(Decimal, [r, *others]))}
    return {
        "drifting": f"{drifting} of {lines}" if int(lines) else None,
        "liability": liability(deferred),
        "revenue": revenue,
        "usage_revenue": usage,
        "invoiced": invoiced,
        "capture_events": percent(int(billed), int(metered)),
        "period": latest,
        "consumption": consumption,
        "remaining": {s: max(Decimal(0), Decimal(i) - used[s]) for s, i in included.items()},
        "used": {s: used[s] for s in included},
        "rejections": rejections,
    }


def included_of(catalog_dir, customer):
    """What the customer's contracts include per SKU (no rollover in the catalogs tested)."""
    included = {}
    for path in glob.glob(os.path.join(catalog_dir, "*.toml")):
        with open(path, "rb") as f:
            doc = tomllib.load(f)
        for contract in doc.get("contract", []):
            if contract.get("customer") == customer:
                for e in contract.get("entitlement", []):
                    assert not e.get("rollover"), "this check does not model rollover"
                    included[e["sku"]] = e["included"]
    return included


# --- the browser ------------------------------------------------------------------------------

def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    o = Options()
    o.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1500"):
        o.add_argument(a)
    o.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # The Debian driver, never one Selenium would download.
    return webdriver.Chrome(options=o, service=Service("/usr/bin/chromedriver"))


def wait(d, cond, what, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        try:
            v = cond()
            if v:
                return v
        except Exception:
            pass
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what} on {d.current_url}:\n{d.page_source[:2000]}")


def loaded(d):
    from selenium.webdriver.common.by import By
    return wait(d, lambda: d.find_element(By.ID, "view").get_attribute("data-loaded") == "true"
                or d.find_elements(By.ID, "empty-state"), "the view to load")


def text(d, css):
    from selenium.webdriver.common.by import By
    return d.find_element(By.CSS_SELECTOR, css).text.strip()


def money_text(by_currency):
    return " + ".join(f"{a} {c}" for c, a in sorted(by_currency.items())) or "0"


def console_errors(d, view):
    for e in d.get_log("browser"):
        if e["level"] == "SEVERE":
            fail(f"{view}: browser console error: {e['message']}")


def check(args, want):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    d = browser()
    try:
        base = args.url.rstrip("/")
        # Exec.
        d.get(base + "/exec")
        loaded(d)
        for key, css in (("usage_revenue", "#exec-usage-revenue"), ("invoiced", "#exec-invoiced")):
            got, expected = text(d, css), money_text(want[key])
            if got != expected:
                fail(f"exec {key}: page shows {got!r}, computed {expected!r}")
        got = text(d, "#exec-capture-events")
        if got != (want["capture_events"] or "n/a"):
            fail(f"exec capture rate (events): page shows {got!r}, computed {want['capture_events']!r}")
        if want["drifting"] is None:
            if not d.find_elements(By.ID, "exec-not-reconciled"):
                fail("exec: nothing was reconciled, yet the page does not say so")
        elif text(d, "#exec-drifting") != want["drifting"]:
            fail(f"exec drifting checks: page shows {text(d, '#exec-drifting')!r}, computed {want['drifting']!r}")
        if not want["liability"]:
            if not d.find_elements(By.ID, "exec-no-recognition"):
                fail("exec: no revenue schedule was made, yet the page does not say so")
        for (period, currency), expected in want["liability"].items():
            got = text(d, f'tr[data-recognition="{period} {currency}"] .liability')
            if got != expected:
                fail(f"exec contract liability after {period} ({currency}): page shows {got!r}, computed {expected!r}")
        console_errors(d, "exec")
        if args.screenshots:
            d.save_screenshot(os.path.join(args.screenshots, "exec.png"))

        # Account: start on another customer, then pick the one checked with the picker.
        d.get(base + "/account")
        loaded(d)
        picker = Select(d.find_element(By.ID, "customer"))
        other = next(o.get_attribute("value") for o in picker.options if o.get_attribute("value") != args.customer)
        for who in (other, args.customer):
            d.execute_script("document.getElementById('view').dataset.loaded = 'false'")
            Select(d.find_element(By.ID, "customer")).select_by_value(who)
            wait(d, lambda: d.find_element(By.ID, "view").get_attribute("data-loaded") == "true"
                 and f"({who})" in text(d, "#view .card h2"), f"the account of {who}")
        shown_period = Select(d.find_element(By.ID, "period")).first_selected_option.get_attribute("value")
        if shown_period != want["period"]:
            fail(f"account period: page shows {shown_period!r}, latest with lines is {want['period']!r}")
        for sku, q in want["consumption"].items():
            cells = d.find_elements(By.CSS_SELECTOR, f"tr[data-sku='{sku}'] .quantity")
            got = cells[0].text if cells else None
            if got is None or Decimal(got) != q:
                fail(f"account {args.customer} {sku} consumption in {want['period']}: page shows {got!r}, computed {q}")
        shown = {e.get_attribute("data-sku") for e in d.find_elements(By.CSS_SELECTOR, "tr[data-sku]")}
        if shown != set(want["consumption"]):
            fail(f"account SKUs with usage: page shows {sorted(shown)}, computed {sorted(want['consumption'])}")
        for key in ("used", "remaining"):
            for sku, q in want[key].items():
                cells = d.find_elements(By.CSS_SELECTOR, f"tr[data-entitlement='{sku}'] .{key}")
                got = cells[0].text if cells else None
                if got is None or Decimal(got) != q:
                    fail(f"account {args.customer} {sku} entitlement {key}: page shows {got!r}, computed {q}")
        shown = {e.get_attribute("data-revenue"): e.find_element(By.CSS_SELECTOR, ".recognised").text
                 for e in d.find_elements(By.CSS_SELECTOR, "tr[data-revenue]")}
        computed = {" ".join(k): v for k, v in want["revenue"].items()}
        if shown != computed:
            fail(f"account {args.customer} revenue schedule in {want['period']}: page shows {shown}, computed {computed}")
        if not computed and not d.find_elements(By.ID, "account-no-revenue"):
            fail(f"account {args.customer}: no revenue schedule in {want['period']}, yet the page does not say so")
        console_errors(d, "account")
        if args.screenshots:
            d.save_screenshot(os.path.join(args.screenshots, "account.png"))

        # Ops.
        d.get(base + "/ops")
        loaded(d)
        shown = {}
        for row in d.find_elements(By.CSS_SELECTOR, "tr[data-reason]"):
            shown[row.get_attribute("data-reason")] = int(row.find_element(By.CSS_SELECTOR, ".records").text)
        if shown != want["rejections"]:
            fail(f"ops rejections by reason: page shows {shown}, computed {want['rejections']}")
        if args.screenshots:
            d.save_screenshot(os.path.join(args.screenshots, "ops.png"))
        # A reason's drill-down lists its rejected records.
        reason = sorted(want["rejections"])[0]
        d.find_element(By.CSS_SELECTOR, f"tr[data-reason='{reason}'] button.num").click()
        wait(d, lambda: d.find_element(By.ID, "rows").is_displayed()
             and len(d.find_elements(By.CSS_SELECTOR, "#rows-body tbody tr")) == want["rejections"][reason],
             f"the rejected records of {reason}")
        console_errors(d, "ops")

        # Empty states: clear words, never a server error.
        for path, words in (("/account?customer=nobody-at-all", "no customer `nobody-at-all`"),
                            ("/exec?period=2026-13", "not a billing period"),
                            ("/exec?period=2031-01", "nothing in 2031-01")):
            d.get(base + path)
            loaded(d)
            found = d.find_elements(By.ID, "empty-state")
            if not found or words not in found[0].text:
                fail(f"{path}: expected an empty state saying {words!r}, page shows "
                     f"{found[0].text if found else d.find_element(By.ID, 'view').text[:200]!r}")
            for e in d.get_log("browser"):
                # The answers are 4xx by design; anything else is an error.
                if e["level"] == "SEVERE" and "status of 4" not in e["message"]:
                    fail(f"{path}: browser console error: {e['message']}")
    finally:
        d.quit()


def check_down(args):
    from selenium.webdriver.common.by import By
    d = browser()
    try:
        d.get(args.url.rstrip("/") + "/exec")
        loaded(d)
        banner = wait(d, lambda: d.find_element(By.ID, "banner").is_displayed() and text(d, "#banner"),
                      "the outage banner")
        if "Cannot read" not in banner or "Showing data read at" not in banner:
            fail(f"outage banner says {banner!r}")
        if not text(d, "#exec-usage-revenue"):
            fail("during the outage the last numbers should still show")
    finally:
        d.quit()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--catalog")
    ap.add_argument("--out")
    ap.add_argument("--clickhouse")
    ap.add_argument("--database", default="meterflow")
    ap.add_argument("--customer", default="acme")
    ap.add_argument("--screenshots")
    ap.add_argument("--expect-down", action="store_true")
    args = ap.parse_args()
    if args.expect_down:
        check_down(args)
    else:
        included = included_of(args.catalog, args.customer)
        if args.clickhouse:
            want = expected_from_clickhouse(args.clickhouse, args.database, args.customer, included)
        else:
            want = expected_from_files(args.out, args.customer, included)
        print("computed:", want)
        if args.screenshots:
            os.makedirs(args.screenshots, exist_ok=True)
        check(args, want)
    if failures:
        print(f"{len(failures)} mismatches")
        sys.exit(1)
    print("every number on the pages matches")


if __name__ == "__main__":
    main()
