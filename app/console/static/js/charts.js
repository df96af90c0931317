// Reports over time: a Chart.js chart (vendored from npm, see web/package-lock.json) with the
// same numbers as a table beside it for screen readers and anyone who prefers numbers.
import { el, fmtTime } from "./api.js";

const charts = new WeakMap();

function label(iso, bucket) {
  const d = new Date(iso);
  return bucket === "hour"
    ? d.toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" })
    : d.toLocaleDateString(undefined, { month: "short", day: "numeric" });
}

/**
 * Draw `report` ({bucket, points}) into `box`: `series` = [{key, label, color}]. A second call
 * on the same box updates the chart in place (no flicker, focus untouched).
 */
export function drawReport(box, report, series, title) {
  const labels = report.points.map((p) => label(p.at, report.bucket));
  const totals = series.map((s) => `${s.label} ${report.points.reduce((n, p) => n + (p[s.key] || 0), 0)}`);
  const summary = `${title}, ${report.points.length} ${report.bucket}s: ${totals.join(", ")}.`;
  const datasets = series.map((s) => ({
    label: s.label,
    data: report.points.map((p) => p[s.key] || 0),
    backgroundColor: s.color,
    borderColor: s.color,
  }));
  const rows = report.points
    .filter((p) => series.some((s) => p[s.key]))
    .map((p) => el("tr", {}, el("th", { scope: "row" }, fmtTime(p.at)), series.map((s) => el("td", { class: "num" }, p[s.key] || 0))));
  const tableNode = el(
    "table",
    { class: "report-table" },
    el("caption", {}, `${title} (${report.bucket}s with activity)`),
    el("thead", {}, el("tr", {}, el("th", { scope: "col" }, report.bucket === "hour" ? "Hour" : "Day"), series.map((s) => el("th", { scope: "col" }, s.label)))),
    el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: series.length + 1, class: "muted" }, "Nothing happened in this period."))),
  );
  let state = charts.get(box);
  if (!state) {
    const canvas = el("canvas", { role: "img" });
    const details = el("details", { class: "report-data" }, el("summary", {}, "Show the numbers as a table"), el("div", { class: "scroll" }));
    box.replaceChildren(el("div", { class: "chart" }, canvas), details);
    const chart = new window.Chart(canvas, {
      type: "bar",
      data: { labels, datasets },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        scales: { x: { stacked: false }, y: { beginAtZero: true, ticks: { precision: 0 } } },
        plugins: { legend: { position: "bottom" } },
      },
    });
    state = { chart, canvas, details };
    charts.set(box, state);
  } else {
    state.chart.data.labels = labels;
    state.chart.data.datasets = datasets;
    state.chart.update("none");
  }
  state.canvas.setAttribute("aria-label", summary);
  state.canvas.textContent = summary;
  state.details.querySelector(".scroll").replaceChildren(tableNode);
  box.dataset.summary = summary;
}
