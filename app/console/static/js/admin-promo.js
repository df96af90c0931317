// /admin/promos/{id}: live stats while the promo runs, edit, cancel.
import { $, api, changed, el, every, flash, fmtTime, onSubmit, query, showProblem, tiles } from "./api.js";
import { drawReport } from "./charts.js";
import { fillPromo, prepare, promoBody } from "./promo-form.js";

const id = $("#promo").dataset.promoId;
const form = $("#promo-form");
let promo = null;
let ready = prepare(form).catch((err) => showProblem(form.querySelector(".problem"), err));
let filled = false;
let shown = null; // the form's values as last filled, so PATCH sends only edits

function fill(p) {
  fillPromo(form, p);
  shown = promoBody(new FormData(form), form);
}

function renderPromo(p) {
  promo = p;
  $("#promo-title").textContent = p.title;
  document.title = `${p.title} · Coupon console`;
  $("#promo-status").replaceChildren(el("span", { class: "status status-" + p.status }, p.status));
  $("#promo-window").textContent = `${fmtTime(p.starts_at)} → ${fmtTime(p.ends_at)} · radius ${p.radius_m} m`;
  $("#cancel").disabled = ["cancelled", "ended"].includes(p.status);
}

async function refresh() {
  try {
    const [p, s] = await Promise.all([api("GET", `/promos/${id}`), api("GET", `/promos/${id}/stats`)]);
    renderPromo(p);
    $("#stats").replaceChildren(
      tiles(
        [
          ["Units", s.units, "units"],
          ["Free", s.free, "free"],
          ["Held", s.held, "held"],
          ["Sold", s.sold, "sold"],
          ["Notified", s.notified, "notified"],
          ["Reservations", s.reservations, "reservations"],
        ],
        { id: "promo-stats" },
      ),
    );
    $("#stats-updated").textContent = "· updated " + new Date().toLocaleTimeString();
    if (!filled) {
      await ready;
      fill(p);
      form.elements.product_id.disabled = true;
      filled = true;
    }
  } catch (err) {
    showProblem($("#promo-problem"), err);
  }
}

$("#cancel").addEventListener("click", async () => {
  if (!confirm("Cancel this promo? Held units are released and nobody can buy it any more.")) return;
  try {
    renderPromo(await api("POST", `/promos/${id}/cancel`));
    flash("Promo cancelled.");
    refresh();
  } catch (err) {
    showProblem($("#promo-problem"), err);
  }
});

onSubmit(form, async (data) => {
  // The product of a promo is fixed once created.
  const { product_id: _fixed, ...body } = changed(shown, promoBody(data, form));
  if (!Object.keys(body).length) {
    flash("Nothing changed.");
    return;
  }
  const p = await api("PATCH", `/promos/${id}`, body);
  renderPromo(p);
  fill(p);
  flash("Promo saved.");
});

// Fast while it runs (units move), slow otherwise.
let last = 0;
every(1000, () => {
  const running = promo && ["running", "scheduled"].includes(promo.status);
  const gap = running ? 2000 : 15000;
  if (Date.now() - last >= gap) {
    last = Date.now();
    refresh();
  }
});

// ---- report ----

const PROMO_SERIES = [
  { key: "reserved", label: "Reserved", color: "#3b7dd8" },
  { key: "purchased", label: "Sold", color: "#1d8a3d" },
  { key: "notified", label: "Notified", color: "#6b4fa3" },
  { key: "read", label: "Notifications read", color: "#b36b00" },
];

async function loadReport() {
  try {
    const report = await api("GET", `/promos/${id}/report` + query({ bucket: $("#report-bucket").value }));
    drawReport($("#report"), report, PROMO_SERIES, "Sales and notifications");
    $("#report-problem").replaceChildren();
  } catch (err) {
    showProblem($("#report-problem"), err);
  }
}

$("#report-bucket").addEventListener("change", loadReport);
every(30000, loadReport);
