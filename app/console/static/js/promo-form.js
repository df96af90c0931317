// The promo form (new and edit): products and segments to choose from, body building.
import { api, el, fromMinor, intOrNull, isoToLocal, localToIso, money, query, toMinor } from "./api.js";

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

/** Products by id, for their currency. */
export const productsById = new Map();

export function currencyOf(productId) {
  const product = productsById.get(productId);
  return product ? product.currency : "EUR";
}

/** Fill the product select and the segment checkboxes; returns {products, stores}. */
export async function prepare(form) {
  const [products, stores, segments] = await Promise.all([all("/products"), all("/stores"), all("/segments")]);
  const storeNames = new Map(stores.map((s) => [s.id, s.name]));
  const select = form.querySelector("[data-products]");
  select.replaceChildren(
    el("option", { value: "" }, products.length ? "Choose a product" : "Add a product under Stores first"),
    ...products.map((p) =>
      el("option", { value: p.id }, `${p.name} · ${storeNames.get(p.store_id) || "?"} · ${money(p.price_cents, p.currency)}`),
    ),
  );
  for (const p of products) productsById.set(p.id, p);
  const showCurrency = () => {
    const product = productsById.get(select.value);
    form.querySelector("[data-currency]").textContent = product
      ? `(in ${product.currency}; regular price ${money(product.price_cents, product.currency)})`
      : "";
  };
  select.addEventListener("change", showCurrency);
  form.showCurrency = showCurrency;
  const box = form.querySelector("[data-segments]");
  box.replaceChildren(
    ...(segments.length
      ? segments.map((s) =>
          el("label", { class: "check" }, el("input", { type: "checkbox", name: "segment_ids", value: s.id }), s.name),
        )
      : [el("span", { class: "muted" }, "No segments yet.")]),
  );
  return { products, stores, segments };
}

export function promoBody(data, form) {
  return {
    product_id: data.get("product_id"),
    title: String(data.get("title")).trim(),
    promo_price_cents: toMinor(data.get("promo_price"), currencyOf(data.get("product_id")), "promo_price_cents"),
    quantity: intOrNull(data.get("quantity")),
    max_per_user: intOrNull(data.get("max_per_user")),
    radius_m: intOrNull(data.get("radius_m")),
    starts_at: localToIso(data.get("starts_at")),
    ends_at: localToIso(data.get("ends_at")),
    segment_ids: data.getAll("segment_ids"),
    active: form.elements.active.checked,
  };
}

export function fillPromo(form, promo) {
  for (const key of ["title", "quantity", "max_per_user", "radius_m", "product_id"]) {
    form.elements[key].value = promo[key] ?? "";
  }
  form.elements.promo_price.value = fromMinor(promo.promo_price_cents, currencyOf(promo.product_id));
  if (form.showCurrency) form.showCurrency();
  form.elements.starts_at.value = isoToLocal(promo.starts_at);
  form.elements.ends_at.value = isoToLocal(promo.ends_at);
  form.elements.active.checked = promo.active;
  const chosen = new Set(promo.segment_ids || []);
  form.querySelectorAll("input[name=segment_ids]").forEach((box) => {
    box.checked = chosen.has(box.value);
  });
}

/** Defaults for a new promo: starting now, for an hour. */
export function defaultWindow(form) {
  const now = new Date();
  form.elements.starts_at.value = isoToLocal(now.toISOString());
  form.elements.ends_at.value = isoToLocal(new Date(now.getTime() + 3600_000).toISOString());
}
