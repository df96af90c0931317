// /admin/stores: stores and products (list/create/edit/delete) and a distance table.
import { $, actionButton, api, el, flash, fromMinor, money, onSubmit, query, showProblem, table, toMinor } from "./api.js";
import { distanceM, fmtDistance, here } from "./geo.js";

let stores = [];
let products = [];

async function all(path) {
  const items = [];
  let cursor = null;
  do {
    const page = await api("GET", path + query({ limit: 500, cursor }));
    items.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor);
  return items;
}

/** A create form that also edits: "Edit" fills it and the next submit PATCHes. */
function editable(form, heading, noun) {
  const reset = form.querySelector("[data-reset]");
  const done = () => {
    form.reset();
    form.elements.id.value = "";
    heading.textContent = `New ${noun}`;
    reset.hidden = true;
  };
  reset.addEventListener("click", () => {
    done();
    // The button hid itself: focus goes to the form's first field, ready for a new one.
    form.elements[1].focus();
  });
  return {
    done,
    edit(values) {
      for (const [k, v] of Object.entries(values)) {
        if (form.elements[k]) form.elements[k].value = v ?? "";
      }
      heading.textContent = `Edit ${noun}`;
      reset.hidden = false;
      form.elements[1].focus();
    },
  };
}

const storeForm = editable($("#store-form"), $("#store-form-h"), "store");
const productForm = editable($("#product-form"), $("#product-form-h"), "product");

function renderStores() {
  const box = $("#stores-problem");
  $("#stores").replaceChildren(
    table(
      ["Name", "Latitude", "Longitude", "Address", "Actions"],
      stores.map((s) => [
        s.name,
        s.lat,
        s.lng,
        s.address || "—",
        el(
          "div",
          { class: "actions" },
          el("button", { type: "button", class: "secondary", "aria-label": `Edit ${s.name}`, onclick: () => storeForm.edit(s) }, "Edit"),
          actionButton("Delete", async () => {
            if (!confirm(`Delete ${s.name}?`)) return;
            await api("DELETE", `/stores/${s.id}`);
            await load();
          }, box, { class: "secondary", "aria-label": `Delete ${s.name}` }),
        ),
      ]),
    ),
  );
  $("#product-store").replaceChildren(
    el("option", { value: "" }, stores.length ? "Choose a store" : "Add a store first"),
    ...stores.map((s) => el("option", { value: s.id }, s.name)),
  );
}

function renderProducts() {
  const box = $("#products-problem");
  const names = new Map(stores.map((s) => [s.id, s.name]));
  $("#products").replaceChildren(
    table(
      ["Name", "Store", "Price", "Actions"],
      products.map((p) => [
        p.name,
        names.get(p.store_id) || p.store_id,
        money(p.price_cents, p.currency),
        el(
          "div",
          { class: "actions" },
          el("button", { type: "button", class: "secondary", "aria-label": `Edit ${p.name}`, onclick: () => productForm.edit({ ...p, price: fromMinor(p.price_cents, p.currency) }) }, "Edit"),
          actionButton("Delete", async () => {
            if (!confirm(`Delete ${p.name}?`)) return;
            await api("DELETE", `/products/${p.id}`);
            await load();
          }, box, { class: "secondary", "aria-label": `Delete ${p.name}` }),
        ),
      ]),
    ),
  );
}

async function load() {
  try {
    [stores, products] = await Promise.all([all("/stores"), all("/products")]);
  } catch (err) {
    showProblem($("#stores-problem"), err);
    return;
  }
  renderStores();
  renderProducts();
}

onSubmit($("#store-form"), async (data) => {
  const id = data.get("id");
  const address = String(data.get("address") || "").trim();
  const body = { name: String(data.get("name")).trim(), lat: Number(data.get("lat")), lng: Number(data.get("lng")) };
  if (address || id) body.address = address || null;
  await api(id ? "PATCH" : "POST", id ? `/stores/${id}` : "/stores", body);
  flash(id ? "Store saved." : "Store created.");
  storeForm.done();
  await load();
});

onSubmit($("#product-form"), async (data) => {
  const id = data.get("id");
  const body = {
    store_id: data.get("store_id"),
    name: String(data.get("name")).trim(),
    currency: String(data.get("currency")).trim().toUpperCase(),
  };
  body.price_cents = toMinor(data.get("price"), body.currency, "price_cents");
  await api(id ? "PATCH" : "POST", id ? `/products/${id}` : "/products", body);
  flash(id ? "Product saved." : "Product created.");
  productForm.done();
  await load();
});

function showDistances(lat, lng) {
  const rows = stores
    .map((s) => ({ s, d: distanceM(lat, lng, s.lat, s.lng) }))
    .sort((a, b) => a.d - b.d)
    .map(({ s, d }) => [s.name, s.address || "—", fmtDistance(d)]);
  $("#distances").replaceChildren(table(["Store", "Address", "Distance"], rows, `From ${lat}, ${lng}`));
}

onSubmit($("#distance-form"), async (data) => {
  showDistances(Number(data.get("lat")), Number(data.get("lng")));
});

$("#from-here").addEventListener("click", async () => {
  try {
    const p = await here();
    $("#from-lat").value = p.lat.toFixed(6);
    $("#from-lng").value = p.lng.toFixed(6);
    showDistances(p.lat, p.lng);
  } catch (err) {
    showProblem($("#distance-form .problem"), err);
  }
});

load();
