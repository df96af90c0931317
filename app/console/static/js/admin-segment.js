// /admin/segments/{id}: edit, delete, members add/remove.
import { $, actionButton, api, el, flash, focusInList, onSubmit, query, showProblem, table } from "./api.js";
import { fillRules, rulesFrom } from "./segment-rules.js";

const id = $("#segment").dataset.segmentId;
const base = `/segments/${id}`;
let segment = null;
let membersCursor = null;
const members = [];
let usersCursor = null;
const users = [];

async function loadSegment() {
  try {
    segment = await api("GET", base);
  } catch (err) {
    showProblem($("#edit-form .problem"), err);
    return;
  }
  $("#segment-name").textContent = segment.name;
  $("#segment-kind").textContent = segment.kind;
  const form = $("#edit-form");
  form.elements.name.value = segment.name;
  fillRules(form, segment.rules || {});
  $("#rules-box").hidden = segment.kind !== "rule";
  $("#members-area").hidden = segment.kind !== "static";
}

onSubmit($("#edit-form"), async (data) => {
  const body = { name: String(data.get("name")).trim() };
  if (segment && segment.kind === "rule") body.rules = rulesFrom(data);
  segment = await api("PATCH", base, body);
  $("#segment-name").textContent = segment.name;
  flash("Segment saved.");
});

$("#delete").addEventListener("click", async () => {
  if (!confirm("Delete this segment?")) return;
  try {
    await api("DELETE", base);
    location.assign("/admin/segments");
  } catch (err) {
    showProblem($("#edit-form .problem"), err);
  }
});

let membersSeq = 0; // a listing answered after a newer one was asked for is dropped

async function loadMembers(more = false) {
  const box = $("#members-problem");
  const seq = ++membersSeq;
  try {
    const page = await api("GET", `${base}/members` + query({ limit: 100, cursor: more ? membersCursor : null }));
    if (seq !== membersSeq) return;
    if (!more) members.length = 0;
    members.push(...page.items);
    membersCursor = page.next_cursor;
  } catch (err) {
    showProblem(box, err);
    return;
  }
  $("#members").replaceChildren(
    table(
      ["Email", "User id", "Actions"],
      members.map((m) => [
        m.email,
        el("code", {}, m.user_id),
        actionButton("Remove", async () => {
          const at = members.indexOf(m);
          await api("DELETE", `${base}/members/${m.user_id}`);
          await loadMembers();
          // The row is gone: focus goes to the next member's Remove, or to the list's heading.
          focusInList($("#members"), "button[aria-label^='Remove ']", at, $("#members-h"));
        }, box, { class: "secondary", "aria-label": `Remove ${m.email}` }),
      ]),
    ),
  );
  $("#members-more").hidden = !membersCursor;
}

async function addMembers(ids) {
  const r = await api("POST", `${base}/members`, { user_ids: ids });
  flash(`${r.added} members added.`);
  await loadMembers();
}

onSubmit($("#add-form"), async (data) => {
  const ids = String(data.get("user_ids"))
    .split(/[\s,]+/)
    .map((s) => s.trim())
    .filter(Boolean);
  await addMembers(ids);
  $("#add-ids").value = "";
});

async function loadUsers(more = false) {
  try {
    const page = await api("GET", "/users" + query({ limit: 50, cursor: more ? usersCursor : null }));
    users.push(...page.items);
    usersCursor = page.next_cursor;
  } catch (err) {
    showProblem($("#users"), err);
    return;
  }
  const box = $("#members-problem");
  $("#users").replaceChildren(
    table(
      ["Email", "Role", "Actions"],
      users.map((u) => [
        u.email,
        u.role,
        actionButton("Add", () => addMembers([u.id]), box, { class: "secondary", "aria-label": `Add ${u.email}` }),
      ]),
    ),
  );
  $("#users-more").hidden = !usersCursor;
}

$("#members-more").addEventListener("click", () => loadMembers(true));
$("#users-more").addEventListener("click", () => loadUsers(true));

await loadSegment();
if (segment && segment.kind === "static") {
  loadMembers();
  loadUsers();
}
