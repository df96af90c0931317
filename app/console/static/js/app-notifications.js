// /app/notifications: my inbox, live over Server-Sent Events when the stream is available.
import { $, API, actionButton, api, el, fmtTime, money, query, showProblem } from "./api.js";

const list = $("#notifications");
const seen = new Set();
let cursor = null;

function item(n) {
  const li = el(
    "li",
    { class: n.status === "unread" ? "unread" : "", dataset: { notification: n.id } },
    el(
      "article",
      {},
      el("h3", {}, n.title || "A promo near you has started"),
      n.promo_price_cents != null
        ? el(
            "p",
            { class: "offer" },
            el("strong", {}, money(n.promo_price_cents, n.currency)),
            " instead of ",
            el("s", {}, money(n.price_cents, n.currency)),
            n.store_name ? ` at ${n.store_name}` : "",
            n.ends_at ? ` · until ${fmtTime(n.ends_at)}` : "",
          )
        : null,
      el("p", { class: "muted" }, "Sent ", fmtTime(n.created_at)),
      el("p", {}, el("a", { href: `/app/promos#promo-${n.promo_id}` }, `See ${n.title || "this promo"}`)),
    ),
  );
  if (n.status === "unread") {
    li.append(
      actionButton("Mark as read", async () => {
        const read = await api("POST", `/me/notifications/${n.id}/read`);
        const now = item(read);
        li.replaceWith(now);
        // Its button is gone: focus goes to the same notification's link to its promo.
        if (!document.activeElement || document.activeElement === document.body) now.querySelector("a").focus();
      }, $("#n-problem"), { class: "secondary" }),
    );
  }
  return li;
}

function add(n, atTop) {
  const existing = list.querySelector(`[data-notification="${n.id}"]`);
  if (existing) {
    existing.replaceWith(item(n));
    return;
  }
  seen.add(n.id);
  if (atTop) list.prepend(item(n));
  else list.append(item(n));
}

async function load(more = false) {
  try {
    const page = await api("GET", "/me/notifications" + query({ limit: 50, cursor: more ? cursor : null }));
    page.items.forEach((n) => add(n, false));
    cursor = page.next_cursor;
    if (!list.children.length) list.append(el("li", { class: "muted", id: "n-empty" }, "No notifications yet."));
  } catch (err) {
    showProblem($("#n-problem"), err);
  }
  $("#n-more").hidden = !cursor;
}

function live() {
  if (!("EventSource" in window)) return;
  const state = $("#live-state");
  const source = new EventSource(`${API}/me/notifications/stream`, { withCredentials: true });
  let opened = false;
  source.addEventListener("open", () => {
    opened = true;
    state.textContent = "· live";
  });
  source.addEventListener("notification", (event) => {
    $("#n-empty")?.remove();
    add(JSON.parse(event.data), true);
  });
  source.addEventListener("error", () => {
    if (!opened) {
      // No stream here (or no session): keep the list, stop retrying.
      source.close();
      state.textContent = "· refresh to update";
    } else {
      state.textContent = "· reconnecting…";
    }
  });
}

$("#n-more").addEventListener("click", () => load(true));
await load();
live();
