// /admin/dead-letters: failed notification jobs, with replay.
import { $, actionButton, allPages, api, el, flash, fmtTime, focusInList, named, query, showProblem, table } from "./api.js";

let cursor = null;
const rows = [];
let promoNames = null;

// Promos by name; the id stays second.
async function promoName(id) {
  if (!promoNames) {
    promoNames = new Map((await allPages("/promos")).map((p) => [p.id, p.title ?? p.name]));
  }
  return promoNames.get(id);
}

async function load(more = false) {
  const box = $("#dl-problem");
  try {
    const page = await api("GET", "/notifications/dead-letters" + query({ limit: 100, cursor: more ? cursor : null }));
    if (!more) rows.length = 0;
    rows.push(...page.items);
    cursor = page.next_cursor;
    for (const d of rows) if (d.promo_id) d.promo_name = await promoName(d.promo_id);
    box.replaceChildren();
  } catch (err) {
    showProblem(box, err);
    return;
  }
  $("#dead-letters").replaceChildren(
    table(
      ["Job", "Topic", "Promo", "Notifications", "Attempts", "Last error", "Updated", "Actions"],
      rows.map((d) => [
        d.id,
        d.topic,
        d.promo_id ? named(d.promo_name ?? "Promo", d.promo_id, "promo id") : "—",
        d.notifications,
        `${d.attempts} / ${d.max_attempts}`,
        d.last_error || "—",
        fmtTime(d.updated_at || d.run_at),
        actionButton("Replay", async () => {
          const at = rows.indexOf(d);
          await api("POST", `/notifications/dead-letters/${d.id}/retry`);
          flash(`Job ${d.id} queued again.`);
          await load();
          // The replayed job left the list: focus goes to the next one's Replay.
          focusInList($("#dead-letters"), "button[aria-label^='Replay job']", at, $("#dl-h"));
        }, box, { "aria-label": `Replay job ${d.id}` }),
      ]),
    ),
  );
  $("#dl-more").hidden = !cursor;
}

$("#dl-more").addEventListener("click", () => load(true));
load();
