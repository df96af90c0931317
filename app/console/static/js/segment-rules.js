// Segment rules <-> form fields.
import { intOrNull } from "./api.js";

export function rulesFrom(data) {
  const rules = {};
  const tags = String(data.get("tags_any") || "")
    .split(",")
    .map((t) => t.trim())
    .filter(Boolean);
  if (tags.length) rules.tags_any = tags;
  for (const key of ["age_min", "age_max", "purchased_within_days"]) {
    const v = intOrNull(data.get(key));
    if (v !== null) rules[key] = v;
  }
  return rules;
}

export function fillRules(form, rules) {
  form.elements.tags_any.value = (rules.tags_any || []).join(", ");
  for (const key of ["age_min", "age_max", "purchased_within_days"]) {
    form.elements[key].value = rules[key] ?? "";
  }
}

export function describeRules(rules) {
  const parts = [];
  if (rules.tags_any) parts.push("tags: " + rules.tags_any.join(", "));
  if (rules.age_min != null) parts.push("age ≥ " + rules.age_min);
  if (rules.age_max != null) parts.push("age ≤ " + rules.age_max);
  if (rules.purchased_within_days != null) parts.push(`bought within ${rules.purchased_within_days} days`);
  return parts.join("; ") || "—";
}
