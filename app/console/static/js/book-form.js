// The book settings form, shared by "new book" and "edit book".
import { ApiError, intOrNull, isoToLocal, localToIso } from "./api.js";

/** The request body for POST/PATCH /books from the form; `patch` sends cleared fields as null. */
export function bookBody(data, patch = false) {
  const body = {
    name: String(data.get("name") || "").trim(),
    max_codes_per_user: intOrNull(data.get("max_codes_per_user")),
    max_redemptions_per_code: intOrNull(data.get("max_redemptions_per_code")) ?? 1,
    max_redemptions_per_user: intOrNull(data.get("max_redemptions_per_user")),
    lock_ttl_seconds: intOrNull(data.get("lock_ttl_seconds")) ?? 300,
  };
  const description = String(data.get("description") || "").trim();
  const startsAt = localToIso(data.get("starts_at"));
  const expiresAt = localToIso(data.get("expires_at"));
  const raw = String(data.get("metadata") || "").trim();
  let metadata = {};
  if (raw) {
    try {
      metadata = JSON.parse(raw);
    } catch {
      metadata = null;
    }
    if (!metadata || typeof metadata !== "object" || Array.isArray(metadata)) {
      throw new ApiError(422, {
        detail: "Metadata must be a JSON object.",
        errors: [{ loc: ["metadata"], msg: "Metadata must be a JSON object, like {\"key\": \"value\"}." }],
      });
    }
  }
  if (patch) {
    return { ...body, description: description || null, starts_at: startsAt, expires_at: expiresAt, metadata };
  }
  if (description) body.description = description;
  if (startsAt) body.starts_at = startsAt;
  if (expiresAt) body.expires_at = expiresAt;
  if (raw) body.metadata = metadata;
  return body;
}

export function fillBookForm(form, book) {
  const set = (name, value) => {
    form.elements[name].value = value ?? "";
  };
  set("name", book.name);
  set("description", book.description);
  set("max_codes_per_user", book.max_codes_per_user);
  set("max_redemptions_per_code", book.max_redemptions_per_code);
  set("max_redemptions_per_user", book.max_redemptions_per_user);
  set("lock_ttl_seconds", book.lock_ttl_seconds);
  set("starts_at", isoToLocal(book.starts_at));
  set("expires_at", isoToLocal(book.expires_at));
  const meta = book.metadata || {};
  set("metadata", Object.keys(meta).length ? JSON.stringify(meta, null, 2) : "");
}
