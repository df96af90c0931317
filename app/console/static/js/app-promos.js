// /app/promos: set my location, see eligible running promos, reserve → 60 s → purchase.
import { $, actionButton, api, countdown, el, every, flash, fmtTime, money, onSubmit, query, showProblem, shortId, table } from "./api.js";
import { fmtDistance, here } from "./geo.js";

const holds = new Map(); // promo id → live reservation
const titles = new Map(); // promo id → title
let timers = [];

function holdPanel(promo, reservation, problem) {
  const panel = el("div", { class: "hold" });
  if (reservation.status === "purchased") {
    panel.append(el("p", { class: "ok", role: "status" }, "Purchased. Enjoy!"));
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
  const body = el(
    "article",
    { dataset: { promo: promo.id }, "aria-labelledby": `t-${promo.id}` },
    el("h3", { id: `t-${promo.id}` }, promo.title),
    el("p", { class: "muted" }, `${promo.product_name} at ${promo.store_name} · ${fmtDistance(promo.distance_m)}`),
    el("p", {}, el("strong", {}, money(promo.promo_price_cents, promo.currency)), " ", el("s", { "aria-label": "regular price" }, money(promo.price_cents, promo.currency))),
    el("p", {}, el("span", { class: "units" }, `${promo.units_left} left`), ` · ends ${fmtTime(promo.ends_at)}`),
  );
  if (reservation) {
    body.append(holdPanel(promo, reservation, problem));
  } else {
    body.append(
      actionButton("Reserve", async () => {
        const r = await api("POST", `/promos/${promo.id}/reserve`);
        holds.set(promo.id, r);
        await load();
      }, problem, { "aria-label": `Reserve ${promo.title}`, disabled: promo.units_left < 1 }),
    );
  }
  body.append(problem);
  return body;
}

async function loadReservations() {
  const page = await api("GET", "/me/reservations" + query({ limit: 50 }));
  const now = Date.now();
  for (const r of page.items) {
    if (r.status === "held" && new Date(r.expires_at).getTime() > now) holds.set(r.promo_id, r);
  }
  $("#reservations").replaceChildren(
    table(
      ["Promo", "Status", "Expires"],
      page.items.map((r) => [
        titles.get(r.promo_id) || shortId(r.promo_id),
        el("span", { class: "status status-" + r.status }, r.status),
        fmtTime(r.expires_at),
      ]),
    ),
  );
}

async function load() {
  timers.forEach((stop) => stop());
  timers = [];
  let promos;
  try {
    promos = await api("GET", "/me/promos");
    promos.forEach((p) => titles.set(p.id, p.title));
    await loadReservations();
    $("#promos-problem").replaceChildren();
  } catch (err) {
    showProblem($("#promos-problem"), err);
    return;
  }
  // A purchased hold stays visible on its card until the page is left.
  const box = $("#promos");
  box.replaceChildren(
    ...(promos.length
      ? promos.map(card)
      : [el("p", { class: "muted" }, "No running promos near you right now. Set your location above, or check back soon.")]),
  );
  $("#promos-updated").textContent = "· updated " + new Date().toLocaleTimeString();
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
