// /app/promos: set my location, see eligible running promos, reserve → 60 s → purchase.
import { $, actionButton, api, countdown, el, every, flash, fmtTime, money, onSubmit, query, replaceKeepingFocus, showProblem, table } from "./api.js";
import { fmtDistance, here } from "./geo.js";

const holds = new Map(); // promo id → live reservation
const bought = new Map(); // promo id → the caller's latest purchase of it
let timers = [];

function holdPanel(promo, reservation, problem) {
  const panel = el("div", { class: "hold" });
  if (reservation.status === "purchased") {
    panel.append(el("p", { class: "ok", role: "status", "data-focus-after": "" }, "Purchased. Enjoy!"));
    return panel;
  }
  const timer = el("span");
  timers.push(
    countdown(timer, reservation.expires_at, () => {
      holds.delete(promo.id);
      flash("Your hold ended; the unit went back.");
      setTimeout(load, 500);
    }),
  );
  panel.append(
    el("p", {}, "Held for you: ", timer),
    el(
      "div",
      { class: "actions" },
      actionButton("Buy now", async () => {
        const done = await api("POST", `/reservations/${reservation.id}/purchase`);
        holds.set(promo.id, done);
        flash(`Bought: ${promo.title}.`);
        await load();
      }, problem, { "aria-label": `Buy ${promo.title}` }),
      actionButton("Release", async () => {
        await api("POST", `/reservations/${reservation.id}/cancel`);
        holds.delete(promo.id);
        await load();
      }, problem, { class: "secondary", "aria-label": `Release ${promo.title}` }),
    ),
  );
  return panel;
}

function card(promo) {
  const problem = el("div");
  const reservation = holds.get(promo.id);
  const purchase = bought.get(promo.id);
  const body = el(
    "article",
    { id: `promo-${promo.id}`, dataset: { promo: promo.id }, "aria-labelledby": `t-${promo.id}` },
    el("h3", { id: `t-${promo.id}` }, promo.title),
    el("p", { class: "muted" }, `${promo.product_name} at ${promo.store_name} · ${fmtDistance(promo.distance_m)}`),
    el("p", {}, el("strong", {}, money(promo.promo_price_cents, promo.currency)), " ", el("s", { "aria-label": "regular price" }, money(promo.price_cents, promo.currency))),
    el("p", {}, el("span", { class: "units" }, `${promo.units_left} left`), ` · ends ${fmtTime(promo.ends_at)}`),
  );
  if (purchase && !(reservation && reservation.status === "purchased")) {
    body.append(el("p", { class: "ok", dataset: { bought: "" } }, `You bought this on ${fmtTime(purchase.purchased_at)}.`));
  }
  if (reservation) {
    body.append(holdPanel(promo, reservation, problem));
  } else {
    body.append(
      actionButton("Reserve", async () => {
        const r = await api("POST", `/promos/${promo.id}/reserve`);
        holds.set(promo.id, r);
        await load();
      }, problem, { "aria-label": `Reserve ${purchase ? "another " : ""}${promo.title}`, disabled: promo.units_left < 1 }),
    );
  }
  body.append(problem);
  return body;
}

function when(r) {
  if (r.status === "purchased") return `Bought ${fmtTime(r.purchased_at)}`;
  if (r.status === "held") return `Held until ${fmtTime(r.expires_at)}`;
  if (r.status === "expired") return `Hold ended ${fmtTime(r.expires_at)}`;
  return "Released";
}

const STATUS_WORDS = { held: "Held", purchased: "Purchased", expired: "Hold ended", cancelled: "Released" };

async function loadReservations() {
  const page = await api("GET", "/me/reservations" + query({ limit: 50 }));
  const now = Date.now();
  bought.clear();
  for (const r of [...page.items].reverse()) {
    if (r.status === "held" && new Date(r.expires_at).getTime() > now) holds.set(r.promo_id, r);
    if (r.status === "purchased") bought.set(r.promo_id, r);
  }
  replaceKeepingFocus(
    $("#reservations"),
    table(
      ["Promo", "Where", "Price", "Status", "When"],
      page.items.map((r) =>
        el(
          "tr",
          { dataset: { reservation: r.id, status: r.status } },
          el("td", { "data-label": "Promo" }, r.promo_title),
          el("td", { "data-label": "Where" }, `${r.product_name} at ${r.store_name}`),
          el("td", { "data-label": "Price" }, money(r.promo_price_cents, r.currency)),
          el("td", { "data-label": "Status" }, el("span", { class: "status status-" + r.status }, STATUS_WORDS[r.status] || r.status)),
          el("td", { "data-label": "When" }, when(r)),
        ),
      ),
    ),
  );
}

async function load() {
  timers.forEach((stop) => stop());
  timers = [];
  let promos;
  try {
    promos = await api("GET", "/me/promos");
    await loadReservations();
    $("#promos-problem").replaceChildren();
  } catch (err) {
    showProblem($("#promos-problem"), err);
    return;
  }
  // A purchased hold stays visible on its card until the page is left.
  const box = $("#promos");
  replaceKeepingFocus(
    box,
    ...(promos.length
      ? promos.map(card)
      : [el("p", { class: "muted" }, "No running promos near you right now. Set your location above, or check back soon.")]),
  );
  $("#promos-updated").textContent = "· updated " + new Date().toLocaleTimeString();
  // Arriving from a notification: bring its promo into view once.
  if (location.hash && !load.scrolled) {
    const target = document.getElementById(location.hash.slice(1));
    if (target) {
      load.scrolled = true;
      target.classList.add("highlight");
      target.scrollIntoView({ block: "center" });
    }
  }
}

async function setLocation(lat, lng) {
  await api("PUT", "/me/location", { lat, lng });
  await load();
}

onSubmit($("#location-form"), async (data) => {
  await setLocation(Number(data.get("lat")), Number(data.get("lng")));
});

$("#use-location").addEventListener("click", async () => {
  const box = $("#location-form .problem");
  box.replaceChildren();
  try {
    const p = await here();
    $("#loc-lat").value = p.lat.toFixed(6);
    $("#loc-lng").value = p.lng.toFixed(6);
    await setLocation(p.lat, p.lng);
  } catch (err) {
    showProblem(box, err);
  }
});

try {
  const me = await api("GET", "/auth/me");
  if (me.lat != null) {
    $("#loc-lat").value = me.lat;
    $("#loc-lng").value = me.lng;
  }
} catch {
  // The list below shows any problem.
}
// Units left move while promos run; refresh unless a hold is being decided.
every(15000, () => {
  if (![...holds.values()].some((r) => r.status === "held")) load();
});
