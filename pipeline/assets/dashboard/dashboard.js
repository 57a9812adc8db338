// meterflow dashboard: renders /api/{exec,account,ops} and re-reads them every few seconds.
// Numbers are shown as the API sends them (exact decimal text); only charts use floats.
"use strict";

const REFRESH_MS = 5000;
const views = ["exec", "account", "ops"];
const state = {
  view: views.find((v) => location.pathname === "/" + v) || "exec",
  period: new URLSearchParams(location.search).get("period") || "all",
  customer: new URLSearchParams(location.search).get("customer") || "",
  shown: "",
  charts: [],
};

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => (
  { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const money = (list) => (list && list.length ? list.map((m) => `${m.amount} ${m.currency}`).join(" + ") : "0");
const query = (extra) => {
  const p = new URLSearchParams();
  if (state.period !== "all") p.set("period", state.period);
  if (state.customer) p.set("customer", state.customer);
  for (const [k, v] of Object.entries(extra || {})) if (v !== undefined && v !== null) p.set(k, v);
  const s = p.toString();
  return s ? "?" + s : "";
};

async function getJson(path) {
  const r = await fetch(path, { credentials: "same-origin" });
  let body = null;
  try { body = await r.json(); } catch (_) { body = null; }
  return { ok: r.ok, code: r.status, body };
}

function showStatus(status) {
  const b = $("banner");
  if (status && status.error) {
    b.hidden = false;
    b.className = "banner down";
    b.textContent = `Cannot read ${status.source}: ${status.error}` +
      (status.failing_since ? ` (since ${status.failing_since})` : "") +
      (status.read_at ? `. Showing data read at ${status.read_at}.` : ".");
  } else {
    b.hidden = true;
  }
  $("source").textContent = status
    ? `Source: ${status.source}${status.read_at ? " · read at " + status.read_at : ""} · refreshes every ${REFRESH_MS / 1000} s`
    : "";
}

function card(title, body, wide) {
  return `<section class="card${wide ? " wide" : ""}"><h2>${esc(title)}</h2>${body}</section>`;
}
function kpi(id, value, label, drill) {
  const v = drill
    ? `<button class="num" type="button" data-drill='${esc(JSON.stringify(drill))}' id="${id}">${esc(value)}</button>`
    : `<span id="${id}">${esc(value)}</span>`;
  return `<div class="kpi"><div class="value">${v}</div><div class="label">${esc(label)}</div></div>`;
}
function table(head, rows, attrs) {
  if (!rows.length) return `<p class="empty">None.</p>`;
  const th = head.map((h) => `<th class="${h.n ? "n" : ""}">${esc(h.t)}</th>`).join("");
  const tr = rows.map((r, i) => `<tr ${attrs ? attrs(i) : ""}>${r.join("")}</tr>`).join("");
  return `<table><thead><tr>${th}</tr></thead><tbody>${tr}</tbody></table>`;
}
const td = (v, cls) => `<td class="${cls || ""}">${v}</td>`;
const tdn = (v, cls) => `<td class="n ${cls || ""}">${v}</td>`;

function destroyCharts() {
  for (const c of state.charts) c.destroy();
  state.charts = [];
}
function chart(el, title, xs, series, opts) {
  if (!el || !xs.length || typeof uPlot === "undefined") return;
  const width = Math.max(300, el.clientWidth || 400);
  const colors = ["#2f6fde", "#2e7d32", "#b7791f", "#8e44ad", "#c0392b", "#16a085"];
  const o = {
    title, width, height: 180,
    scales: { x: { time: !(opts && opts.categorical) } },
    axes: opts && opts.categorical
      ? [{ values: (_, ticks) => ticks.map((t) => opts.labels[t] ?? "") }, { size: 80 }]
      : [{}, { size: 80 }],
    series: [{}].concat(series.map((s, i) => ({
      label: s.label, stroke: colors[i % colors.length], width: 2,
      points: { show: xs.length < 40 },
    }))),
  };
  state.charts.push(new uPlot(o, [xs, ...series.map((s) => s.values)], el));
}
const dayToSeconds = (d) => Date.parse(d + "T00:00:00Z") / 1000;
function duration(ms) {
  if (ms < 1000) return `${ms} ms`;
  const units = [[86400000, "d"], [3600000, "h"], [60000, "min"], [1000, "s"]];
  for (const [size, name] of units) if (ms >= size) return `${(ms / size).toFixed(1)} ${name}`;
  return `${ms} ms`;
}

function renderExec(d) {
  const c = d.capture;
  const r = d.reconciliation;
  const sev = Object.entries(d.anomalies).map(([s, n]) => `${n} ${s}`).join(", ") || "none";
  const gap = c.gap.map((g) => [td(esc(g.cause)), tdn(g.events), tdn(esc(g.quantity)), tdn(esc(g.money || ""))]);
  const customers = d.customers.map((x) => [
    td(`<a href="/account${query({ customer: x.customer })}">${esc(x.name)}</a>`),
    tdn(`<button class="num" type="button" data-drill='${esc(JSON.stringify({ kind: "lines", customer: x.customer }))}'>${esc(money(x.usage_revenue))}</button>`),
    tdn(esc(money(x.invoiced))),
  ]);
  return card("Revenue", `<div class="kpis">
      ${kpi("exec-usage-revenue", money(d.usage_revenue), "usage revenue (usage and late-usage lines)", { kind: "lines" })}
      ${kpi("exec-invoiced", money(d.invoiced), "invoiced (all lines: fees, discounts, true-ups, credits, tax)", { kind: "lines" })}
    </div>`) +
    card("Capture", `<div class="kpis">
      ${kpi("exec-capture-events", c.events_rate || "n/a", `events billed of metered (${c.billed_events} of ${c.metered_events})`)}
      ${kpi("exec-capture-units", c.units_rate || "n/a", "units billed of metered")}
      ${kpi("exec-capture-money", c.money_rate || "n/a", "money billed of metered")}
      ${kpi("exec-invoice-error", c.invoice_error_rate || "n/a", `issued usage lines changed later (${c.changed_lines} of ${c.issued_lines})`)}
    </div>`) +
    card("Revenue at risk", `<div class="kpis">
      ${kpi("exec-at-risk-capture", d.at_risk_capture || "0", "metered but not billed (rejected, uncommitted)", { kind: "rejections" })}
      ${kpi("exec-at-risk-anomalies", money(d.at_risk_anomalies), "usage a drop or silence may be missing (at the customer's price)")}
      ${kpi("exec-at-risk-drift", r ? money(r.underbilled) : "n/a", r ? "underbilled on lines reconciliation found drifting" : "not reconciled yet: run meterflow reconcile")}
      ${kpi("exec-anomalies", sev, "open anomalies")}
    </div>${table([{ t: "metered, not billed" }, { t: "events", n: 1 }, { t: "units", n: 1 }, { t: "money", n: 1 }], gap)}`) +
    card("Reconciliation drift", r ? `<div class="kpis">
      ${kpi("exec-drifting", `${r.drifting} of ${r.lines}`, "checks drifting (events → lines, signals, invoice totals)")}
      ${kpi("exec-underbilled", money(r.underbilled), "events call for more than is billed")}
      ${kpi("exec-overbilled", money(r.overbilled), "billed beyond what the events call for")}
    </div>${table([{ t: "comparison" }, { t: "checked", n: 1 }, { t: "drifting", n: 1 }],
      r.checks.map((c) => [td(esc(c.comparison)), tdn(c.lines), tdn(`<span class="drifting">${c.drifting}</span>`)]))}
    ${r.drifting_lines.length ? "<h2>Drifting lines" + (r.drifting > r.drifting_lines.length ? ` (the ${r.drifting_lines.length} largest)` : "") + "</h2>" : ""}
    ${r.drifting_lines.length ? table([{ t: "customer" }, { t: "contract" }, { t: "SKU / line" }, { t: "service period" }, { t: "events expected / billed", n: 1 },
      { t: "quantity expected / billed", n: 1 }, { t: "billed − expected", n: 1 }], r.drifting_lines.map((l) => [td(esc(l.customer)), td(esc(l.contract)),
      td(esc(l.sku || l.what) + (l.sku && l.what ? " · " + esc(l.what) : "")), td(esc(l.service_period)), tdn(`${l.expected_events} / ${l.billed_events}`),
      tdn(`${esc(l.expected_quantity)} / ${esc(l.billed_quantity)}`),
      tdn(l.sku && l.comparison === "events_to_lines"
        ? `<button class="num" type="button" data-drill='${esc(JSON.stringify({ kind: "events", customer: l.customer, contract: l.contract, sku: l.sku, service_period: l.service_period }))}'>${esc(l.difference ? l.difference + " " + l.currency : "events")}</button>`
        : esc(l.difference ? l.difference + " " + l.currency : ""))]), (i) => `data-drift="${i}"`) : ""}
    <p class="empty">meterflow reconcile ${esc(r.run_id)} at ${esc(r.checked_at)}</p>`
      : `<p class="empty" id="exec-not-reconciled">No reconciliation recorded: run <code>meterflow reconcile</code> over this output to compare every line with its events.</p>`, true) +
    card("Usage revenue by invoice period", `<div class="chart" id="chart-trend"></div>`) +
    card("Forecast", d.forecast.length
      ? table([{ t: "month" }, { t: "contracted", n: 1 }, { t: "usage", n: 1 }, { t: "total", n: 1 }, { t: "80% interval", n: 1 }, { t: "" }],
        d.forecast.map((m) => [td(esc(m.month)), tdn(esc(m.contracted)), tdn(esc(m.usage)), tdn(`<span class="forecast-total">${esc(m.total)}</span>`),
          tdn(`${esc(m.low)} .. ${esc(m.high)}`), td(esc(m.currency))]), (i) => `data-forecast="${esc(d.forecast[i].month)}"`) +
        `<p class="empty">from usage before ${esc(d.forecast[0].as_of)} (meterflow forecast)</p>`
      : `<p class="empty" id="exec-no-forecast">No forecast yet: run <code>meterflow forecast</code> over this output.</p>`) +
    card("Revenue recognition (ASC 606)", d.recognition.length
      ? table([{ t: "period" }, { t: "billed", n: 1 }, { t: "recognised", n: 1 }, { t: "deferred", n: 1 }, { t: "unbilled", n: 1 },
        { t: "contract liability", n: 1 }, { t: "contract asset", n: 1 }, { t: "" }],
        d.recognition.map((r) => [td(esc(r.period)), tdn(esc(r.billed)), tdn(`<span class="recognised">${esc(r.recognised)}</span>`), tdn(esc(r.deferred)),
          tdn(esc(r.unbilled)), tdn(`<span class="liability">${esc(r.liability)}</span>`), tdn(esc(r.asset)), td(esc(r.currency) + (r.balances ? "" : " ⚠ does not balance"))]),
        (i) => `data-recognition="${esc(d.recognition[i].period + " " + d.recognition[i].currency)}"`) +
        `<p class="empty">recognised + deferred = billed + unbilled in every period; the liability and the asset are what the periods up to each one leave (meterflow revenue)</p>`
      : `<p class="empty" id="exec-no-recognition">No revenue schedule yet: run <code>meterflow revenue</code> over this output.</p>`, true) +
    card("Accepted events per day", `<div class="chart" id="chart-daily"></div>`) +
    card("Customers", table([{ t: "customer" }, { t: "usage revenue", n: 1 }, { t: "invoiced", n: 1 }], customers), true);
}
function chartsExec(d) {
  const periods = [...new Set(d.trend.map((t) => t.period))];
  const currencies = [...new Set(d.trend.map((t) => t.currency))];
  chart($("chart-trend"), "", periods.map((_, i) => i), currencies.map((cur) => ({
    label: `usage revenue ${cur}`,
    values: periods.map((p) => { const t = d.trend.find((x) => x.period === p && x.currency === cur); return t ? parseFloat(t.usage_revenue) : null; }),
  })), { categorical: true, labels: periods });
  chart($("chart-daily"), "", d.daily_events.map(([day]) => dayToSeconds(day)),
    [{ label: "events", values: d.daily_events.map(([, n]) => n) }]);
}

function renderAccount(d) {
  const usage = d.usage.map((u) => [td(esc(u.sku)), tdn(u.events), tdn(`<span class="quantity">${esc(u.quantity)}</span> ${esc(u.unit)}`)]);
  const ent = d.entitlements.map((e) => {
    const pct = e.used_percent ? parseFloat(e.used_percent) : 0;
    const meter = `<div class="meter${pct >= 100 ? " over" : ""}"><div style="width:${Math.min(100, pct)}%"></div></div>`;
    return [td(esc(e.sku)), td(esc(e.period)), tdn(esc(e.allowance)), tdn(`<span class="used">${esc(e.used)}</span>`),
      tdn(`<span class="remaining">${esc(e.remaining)}</span> ${esc(e.unit)}`), td(meter + esc(e.used_percent || "")),
      tdn(esc(e.burn_per_day || "")), td(esc(e.exhausted_at || (pct >= 100 ? "used up" : "not within the period")))];
  });
  const com = d.commitments.map((c) => [td(esc(c.contract)), tdn(esc(c.usage_spend)), tdn(esc(c.minimum_spend || "")),
    tdn(esc(c.true_up)), tdn(esc(c.budget || "")), tdn(esc(c.maximum_spend || "")), tdn(esc(c.credits_used)), td(esc(c.currency))]);
  const inv = d.invoice.map((l) => [td(esc(l.contract)), td(esc(l.line_type)), td(esc(l.sku)), td(esc(l.service_period)),
    tdn(l.events), tdn(esc(l.quantity)),
    tdn(l.sku ? `<button class="num" type="button" data-drill='${esc(JSON.stringify({ kind: "events", customer: d.customer, contract: l.contract, sku: l.sku, service_period: l.service_period }))}'>${esc(l.amount)}</button>` : esc(l.amount)),
    td(esc(l.currency))]);
  const sig = d.signals.map((s) => [td(esc(s.sku)), td(esc(s.period)), td(esc(s.signal)), tdn(s.percent || ""), tdn(esc(s.at_quantity))]);
  const an = d.anomalies.map((a) => [td(esc(a.sku)), td(esc(a.kind)), td(`<span class="sev-${esc(a.severity)}">${esc(a.severity)}</span>`),
    td(esc(a.window_start)), td(esc(a.explanation))]);
  return card(`${d.name} (${d.customer})${d.period ? " · " + d.period : ""}`, `<div class="kpis">
      ${kpi("account-invoice-total", money(d.invoice_total), "invoice total", { kind: "lines", customer: d.customer })}
      ${kpi("account-capture", d.capture.events_rate || "n/a", "events billed of metered")}
    </div>`, true) +
    card("Consumption per SKU", d.usage.map((u, i) => `<div class="sku-chart"><h3>${esc(u.sku)} (${esc(u.unit)} per day)</h3><div class="chart" id="chart-usage-${i}"></div></div>`).join("") +
      table([{ t: "SKU" }, { t: "events", n: 1 }, { t: "quantity", n: 1 }], usage, (i) => `data-sku="${esc(d.usage[i].sku)}"`)) +
    card("Entitlements", table([{ t: "SKU" }, { t: "period" }, { t: "allowance", n: 1 }, { t: "used", n: 1 },
      { t: "remaining", n: 1 }, { t: "used %" }, { t: "burn / day", n: 1 }, { t: "runs out" }], ent,
      (i) => `data-entitlement="${esc(d.entitlements[i].sku)}"`), true) +
    card("Commitments, budgets and credits", table([{ t: "contract" }, { t: "usage spend", n: 1 }, { t: "minimum", n: 1 },
      { t: "true-up", n: 1 }, { t: "budget", n: 1 }, { t: "cap", n: 1 }, { t: "credits used", n: 1 }, { t: "" }], com), true) +
    card("Credit", table([{ t: "contract" }, { t: "grant" }, { t: "granted", n: 1 }, { t: "used", n: 1 }, { t: "balance", n: 1 },
      { t: "" }, { t: "usable from" }, { t: "expires" }, { t: "status" }], d.credits.map((g) => [td(esc(g.contract)),
      td(esc(g.grant) + (g.material_right ? " (material right)" : g.promotional ? " (promotional)" : "")),
      tdn(esc(g.granted)), tdn(esc(g.used)), tdn(`<span class="balance">${esc(g.balance)}</span>`), td(esc(g.currency)),
      td(esc(g.usable_from.slice(0, 10))), td(esc(g.expires ? g.expires.slice(0, 10) : "never")), td(esc(g.status))]),
      (i) => `data-credit="${esc(d.credits[i].grant)}"`), true) +
    card("Signals", table([{ t: "SKU" }, { t: "period" }, { t: "signal" }, { t: "%", n: 1 }, { t: "at", n: 1 }], sig)) +
    card("Invoice preview", table([{ t: "contract" }, { t: "line" }, { t: "SKU" }, { t: "service period" }, { t: "events", n: 1 },
      { t: "quantity", n: 1 }, { t: "amount", n: 1 }, { t: "" }], inv), true) +
    card("Revenue schedule (ASC 606)", d.revenue.length
      ? table([{ t: "contract" }, { t: "obligation" }, { t: "service period" }, { t: "billed", n: 1 }, { t: "recognised", n: 1 },
        { t: "deferred", n: 1 }, { t: "unbilled", n: 1 }, { t: "" }], d.revenue.map((r) => [td(esc(r.contract)), td(esc(r.obligation)),
        td(esc(r.service_period) + (r.catch_up ? " (catch-up)" : "")), tdn(esc(r.billed)), tdn(`<span class="recognised">${esc(r.recognised)}</span>`),
        tdn(esc(r.deferred)), tdn(esc(r.unbilled)), td(esc(r.currency) + (r.balances ? "" : " ⚠ does not balance"))]),
        (i) => `data-revenue="${esc(d.revenue[i].contract + " " + d.revenue[i].obligation + " " + d.revenue[i].service_period)}"`)
      : `<p class="empty" id="account-no-revenue">No revenue schedule for this period: run <code>meterflow revenue</code> over this output.</p>`, true) +
    card("Anomalies", table([{ t: "SKU" }, { t: "kind" }, { t: "severity" }, { t: "window" }, { t: "why" }], an), true);
}
function chartsAccount(d) {
  const days = [...new Set(d.usage.flatMap((u) => u.days.map(([day]) => day)))].sort();
  d.usage.forEach((u, i) => chart($(`chart-usage-${i}`), "", days.map(dayToSeconds), [{
    label: u.unit,
    values: days.map((day) => { const x = u.days.find(([dd]) => dd === day); return x ? parseFloat(x[1]) : 0; }),
  }]));
  if (d.period && state.period !== d.period) { state.period = d.period; $("period").value = d.period; }
}

function renderOps(d) {
  const max = Math.max(1, ...d.rejections.map((r) => r.records));
  const rej = d.rejections.map((r) => [
    td(`<button class="num" type="button" data-drill='${esc(JSON.stringify({ kind: "rejections", reason: r.reason }))}'>${esc(r.reason)}</button>`),
    tdn(`<span class="records">${r.records}</span>`), tdn(`<span class="unresolved">${r.unresolved}</span>`),
    td(`<div class="bar bad" style="width:${(100 * r.records) / max}%"></div>`, "barcell"), td(esc(r.remediation))]);
  const lag = d.lag.map((l) => [td(esc(l.stage)), td(esc(l.source)), tdn(l.events),
    ...[l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms].map((ms) => tdn(`<span title="${ms} ms">${duration(ms)}</span>`))]);
  const t = d.telemetry;
  const alerts = t ? t.alerts.map(([sink, outcome, n]) => [td(esc(sink)), td(esc(outcome)), tdn(n)]) : [];
  const inserts = t ? t.inserts.map(([table, rows, retries, secs]) => [td(esc(table)), tdn(rows), tdn(retries), tdn(secs.toFixed(3))]) : [];
  const an = d.anomalies.map((a) => [td(esc(a.customer_id)), td(esc(a.sku)), td(esc(a.kind)),
    td(`<span class="sev-${esc(a.severity)}">${esc(a.severity)}</span>`), td(esc(a.window_start)), td(esc(a.explanation))]);
  return card("Records", `<div class="kpis">
      ${kpi("ops-accepted", String(d.accepted), "accepted events")}
      ${kpi("ops-rejected", String(d.rejected), "rejected records", { kind: "rejections" })}
      ${kpi("ops-duplicates", String(d.duplicates), "duplicates (retries, not billed)")}
      ${kpi("ops-out-of-order", String(d.out_of_order), "out of order, billed in their own period")}
      ${kpi("ops-late", String(d.late), "late: their period had closed, billed as adjustments")}
      ${kpi("ops-corrections", String(d.corrections), "corrections (amend, void)")}
      ${kpi("ops-non-billable", String(d.non_billable), "non-billable")}
    </div>`, true) +
    card("Rejections by reason", table([{ t: "reason" }, { t: "records", n: 1 }, { t: "unresolved", n: 1 }, { t: "" }, { t: "remediation" }],
      rej, (i) => `data-reason="${esc(d.rejections[i].reason)}"`), true) +
    card("Metering lag (event time → received → committed)", table([{ t: "stage" }, { t: "partition" }, { t: "events", n: 1 }, { t: "p50", n: 1 },
      { t: "p95", n: 1 }, { t: "p99", n: 1 }, { t: "max", n: 1 }], lag), true) +
    card("Pipeline health", t
      ? `<div class="kpis">${kpi("ops-watermark-lag", t.watermark_lag_seconds == null ? "n/a" : t.watermark_lag_seconds + " s", "watermark behind the newest event")}
         ${kpi("ops-in-flight", t.epochs_in_flight == null ? "n/a" : String(t.epochs_in_flight), "epochs in flight")}</div>
         <h2>Alerts</h2>${table([{ t: "sink" }, { t: "outcome" }, { t: "alerts", n: 1 }], alerts)}
         <h2>ClickHouse inserts</h2>${table([{ t: "table" }, { t: "rows", n: 1 }, { t: "retries", n: 1 }, { t: "seconds", n: 1 }], inserts)}
         <p class="empty">from ${esc(t.from)}</p>`
      : `<p class="empty">No pipeline metrics: run with metrics on (an embedded run writes OUT/metrics.prom), or start the dashboard with --metrics-url.</p>`) +
    card(`Anomalies (${d.anomalies_total}${d.anomalies_total > d.anomalies.length ? ", the latest " + d.anomalies.length + " shown" : ""})`,
      table([{ t: "customer" }, { t: "SKU" }, { t: "kind" }, { t: "severity" }, { t: "window" }, { t: "why" }], an), true);
}

const render = { exec: [renderExec, chartsExec], account: [renderAccount, chartsAccount], ops: [renderOps, () => {}] };

async function loadChoices() {
  const r = await getJson("/api/status");
  if (!r.body) return;
  showStatus(r.body.status);
  if (!r.body.data) return;
  const per = $("period");
  const periods = ["all", ...r.body.data.periods];
  if (!periods.includes(state.period)) periods.push(state.period);
  per.innerHTML = periods.map((p) => `<option value="${esc(p)}">${p === "all" ? "all periods" : esc(p)}</option>`).join("");
  per.value = state.period;
  const cus = $("customer");
  const customers = r.body.data.customers;
  if (!state.customer && customers.length) state.customer = customers[0].id;
  const known = customers.some((c) => c.id === state.customer);
  cus.innerHTML = (known ? "" : `<option value="${esc(state.customer)}">${esc(state.customer)} (unknown)</option>`) +
    customers.map((c) => `<option value="${esc(c.id)}">${esc(c.name)}</option>`).join("");
  cus.value = state.customer;
}

async function refresh(force) {
  const params = state.view === "account" ? query() : query({ customer: null });
  const path = `/api/${state.view}${state.view === "account" ? params : (state.period !== "all" ? "?period=" + encodeURIComponent(state.period) : "")}`;
  const r = await getJson(path);
  const text = JSON.stringify(r.body && (r.body.data ?? r.body.empty));
  if (r.body) showStatus(r.body.status);
  if (!force && text === state.shown) return;
  state.shown = text;
  destroyCharts();
  const main = $("view");
  if (!r.body || !r.body.data) {
    const why = r.body && r.body.empty ? r.body.empty : `the dashboard answered ${r.code}`;
    main.innerHTML = `<p class="empty" id="empty-state">${esc(why)}</p>`;
    return;
  }
  const [html, charts] = render[state.view];
  main.innerHTML = html(r.body.data);
  charts(r.body.data);
  main.dataset.loaded = "true";
}

async function drill(spec) {
  let path;
  if (spec.kind === "lines") path = "/api/lines" + query({ customer: spec.customer || null });
  else if (spec.kind === "events") path = "/api/events" + query({ customer: spec.customer, contract: spec.contract, sku: spec.sku, service_period: spec.service_period });
  else path = "/api/rejections" + (spec.reason ? "?reason=" + encodeURIComponent(spec.reason) : "");
  if (spec.kind === "lines" && !spec.customer && state.view !== "account") path = "/api/lines" + (state.period !== "all" ? "?period=" + encodeURIComponent(state.period) : "");
  const r = await getJson(path);
  $("rows").hidden = false;
  $("rows-title").textContent = `${spec.kind}: ${path}`;
  const rows = (r.body && r.body.data) || [];
  if (!rows.length) {
    $("rows-body").innerHTML = `<p class="empty">${esc((r.body && r.body.empty) || "no rows")}</p>`;
    return;
  }
  const cols = Object.keys(rows[0]);
  $("rows-body").innerHTML = table(cols.map((c) => ({ t: c })), rows.map((row) => cols.map((c) => td(esc(row[c])))));
}

function wire() {
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("active", a.dataset.view === state.view);
    a.addEventListener("click", (e) => {
      e.preventDefault();
      state.view = a.dataset.view;
      history.pushState(null, "", "/" + state.view + query(state.view === "account" ? {} : { customer: null }));
      for (const b of document.querySelectorAll("nav a")) b.classList.toggle("active", b.dataset.view === state.view);
      $("customer-picker").hidden = state.view !== "account";
      refresh(true);
    });
  }
  $("customer-picker").hidden = state.view !== "account";
  $("period").addEventListener("change", (e) => { state.period = e.target.value; update(); });
  $("customer").addEventListener("change", (e) => { state.customer = e.target.value; state.period = "all"; $("period").value = "all"; update(); });
  $("rows-close").addEventListener("click", () => { $("rows").hidden = true; });
  document.addEventListener("click", (e) => {
    const t = e.target.closest("[data-drill]");
    if (t) drill(JSON.parse(t.dataset.drill));
  });
}
function update() {
  history.replaceState(null, "", "/" + state.view + query(state.view === "account" ? {} : { customer: null }));
  $("view").dataset.loaded = "false";
  refresh(true);
}

wire();
loadChoices().then(() => refresh(true));
setInterval(() => { loadChoices().then(() => refresh(false)); }, REFRESH_MS);
