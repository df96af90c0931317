// /admin/segments: list and create.
import { $, api, el, onSubmit, query, showProblem, table } from "./api.js";
import { describeRules, rulesFrom } from "./segment-rules.js";

let cursor = null;
const rows = [];

async function load(more = false) {
  try {
    const page = await api("GET", "/segments" + query({ limit: 100, cursor: more ? cursor : null }));
    if (!more) rows.length = 0;
    rows.push(...page.items);
    cursor = page.next_cursor;
  } catch (err) {
    showProblem($("#segments"), err);
    return;
  }
  $("#segments").replaceChildren(
    table(
      ["Name", "Kind", "Rules"],
      rows.map((s) => [el("a", { href: `/admin/segments/${s.id}` }, s.name), s.kind, describeRules(s.rules || {})]),
    ),
  );
  $("#segments-more").hidden = !cursor;
}

$("#segments-more").addEventListener("click", () => load(true));

onSubmit($("#segment-form"), async (data) => {
  const body = { name: String(data.get("name")).trim(), kind: data.get("kind") };
  if (body.kind === "rule") body.rules = rulesFrom(data);
  const segment = await api("POST", "/segments", body);
  location.assign(`/admin/segments/${segment.id}`);
});

load();
