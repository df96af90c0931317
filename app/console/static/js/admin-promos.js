// /admin/promos: every promo with its status, and the "new promo" form.
import { $, api, el, every, fmtTime, money, onSubmit, query, replaceKeepingFocus, showProblem, table } from "./api.js";
import { currencyOf, defaultWindow, prepare, promoBody } from "./promo-form.js";

const form = $("#promo-form");
let pages = 1;
let nextCursor = null;

// Prices show in their product's currency: the products are read first.
const ready = prepare(form).catch((err) => showProblem(form.querySelector(".problem"), err));

async function load() {
  await ready;
  const promos = [];
  let cursor = null;
  try {
    for (let i = 0; i < pages; i++) {
      const page = await api("GET", "/promos" + query({ limit: 100, cursor }));
      promos.push(...page.items);
      cursor = page.next_cursor;
      if (!cursor) break;
    }
    nextCursor = cursor;
    $("#promos-problem").replaceChildren();
  } catch (err) {
    showProblem($("#promos-problem"), err);
    return;
  }
  // A refresh keeps keyboard focus on the promo it was on.
  replaceKeepingFocus(
    $("#promos"),
    table(
      ["Title", "Status", "Price", "Units", "Starts", "Ends"],
      promos.map((p) =>
        el(
          "tr",
          { dataset: { promo: p.id } },
          el("td", {}, el("a", { href: `/admin/promos/${p.id}` }, p.title)),
          el("td", {}, el("span", { class: "status status-" + p.status }, p.status)),
          el("td", {}, money(p.promo_price_cents, currencyOf(p.product_id))),
          el("td", { class: "num" }, p.quantity),
          el("td", {}, fmtTime(p.starts_at)),
          el("td", {}, fmtTime(p.ends_at)),
        ),
      ),
    ),
  );
  $("#promos-more").hidden = !nextCursor;
  $("#promos-updated").textContent = "· updated " + new Date().toLocaleTimeString();
}

$("#promos-more").addEventListener("click", () => {
  pages += 1;
  load();
});

onSubmit(form, async (data) => {
  const promo = await api("POST", "/promos", promoBody(data, form));
  location.assign(`/admin/promos/${promo.id}`);
});

defaultWindow(form);
every(10000, load);
