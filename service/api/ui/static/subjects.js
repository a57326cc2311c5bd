// The subjects list (search by name prefix, cursor pages, thumbnails) and one subject's page
// (rename, metadata, faces, add photos, merge, delete).

import { api, caller, gallery, track } from "./api.js";
import { $, el, onAction } from "./dom.js";

const PAGE_SIZE = 24;
const MERGE_CHOICES = 500; // the API's largest page: the targets offered in the merge list
// cursors[i] opens page i (null: the first); a new search starts over.
const listing = { prefix: "", cursors: [null], page: 0 };

// Another collection: its own subjects, so the search and the pages start over.
export function resetListing() {
  Object.assign(listing, { prefix: "", cursors: [null], page: 0 });
  $("#search").value = "";
}
let current = null; // the subject shown on the subject page

async function cropUrl(faceId, collection) {
  try {
    return track(await api.imageUrl(gallery(`/faces/${encodeURIComponent(faceId)}/crop`, collection)));
  } catch {
    return null; // enrolled without a stored crop: the grey placeholder stays
  }
}

async function fillThumb(img, subjectId) {
  const collection = caller.collection;
  const { faces } = await api.get(gallery(`/subjects/${encodeURIComponent(subjectId)}/faces`, collection));
  if (faces.length) img.src = (await cropUrl(faces[0].id, collection)) || "";
}

export async function showSubjects() {
  const query = { limit: PAGE_SIZE };
  const cursor = listing.cursors[listing.page];
  if (cursor) query.cursor = cursor;
  if (listing.prefix) query.name_prefix = listing.prefix;
  const collection = caller.collection;
  const page = await api.get(gallery("/subjects", collection), query);
  if (collection !== caller.collection) return; // the picker changed meanwhile: the new list wins
  listing.cursors.length = listing.page + 1;
  if (page.next_cursor) listing.cursors.push(page.next_cursor);
  const items = page.subjects.map((subject) => {
    const img = el("img", { className: "thumb", alt: "" });
    if (subject.face_count) fillThumb(img, subject.id).catch(() => {});
    const link = el("a", { href: `#/subjects/${encodeURIComponent(subject.id)}` }, img,
      el("strong", { className: "subject-name", textContent: subject.name }));
    return el("li", {}, link, el("div", { className: "muted", textContent: `${subject.face_count} face(s)` }));
  });
  const empty = el("li", { textContent: listing.prefix ? `No subject name starts with “${listing.prefix}”.` : "No subjects yet." });
  $("#subject-list").replaceChildren(...(items.length ? items : [empty]));
  $("#prev-page").disabled = listing.page === 0;
  $("#next-page").disabled = !page.next_cursor;
  $("#page-label").textContent = `Page ${listing.page + 1}`;
}

function faceItem(face, collection) {
  const img = el("img", { className: "thumb", alt: `face ${face.id}` });
  cropUrl(face.id, collection).then((url) => url && (img.src = url));
  const item = el("li", { className: "face" }, img,
    el("div", { className: "muted", textContent: `detector ${face.det_score.toFixed(2)}` }));
  if (caller.canEnroll) {
    const remove = el("button", { type: "button", className: "danger delete-face", textContent: "Delete face" });
    onAction(remove, "click", $("#subject-error"), async () => {
      if (!confirm("Delete this face from the gallery?")) return;
      await api.remove(gallery(`/faces/${encodeURIComponent(face.id)}`));
      await showSubject(current.id, { keepResults: true });
    });
    item.append(remove);
  }
  return item;
}

async function fillMergeChoices(subjectId, collection) {
  const { subjects } = await api.get(gallery("/subjects", collection), { limit: MERGE_CHOICES });
  const options = subjects.filter((s) => s.id !== subjectId)
    .map((s) => el("option", { value: s.id, textContent: `${s.name} (${s.face_count} faces, ${s.id.slice(0, 8)})` }));
  $("#merge-into").replaceChildren(el("option", { value: "", textContent: "choose a subject…" }), ...options);
}

export async function showSubject(id, { keepResults = false } = {}) {
  const collection = caller.collection;
  const path = gallery(`/subjects/${encodeURIComponent(id)}`, collection);
  const [subject, { faces }] = await Promise.all([api.get(path), api.get(`${path}/faces`)]);
  if (collection !== caller.collection) return;
  current = subject;
  $("#subject-name").textContent = subject.name;
  $("#subject-facts").textContent = `${subject.face_count} face(s) · id ${subject.id} · updated ${subject.updated_at}`;
  $("#rename-name").value = subject.name;
  $("#metadata").value = JSON.stringify(subject.metadata, null, 2);
  $("#metadata").readOnly = !caller.canEnroll;
  $("#face-list").replaceChildren(...faces.map((face) => faceItem(face, collection)));
  if (!keepResults) $("#enroll-results").replaceChildren();
  if (caller.canEnroll) await fillMergeChoices(subject.id, collection);
}

// One line per uploaded image: accepted, or why not (the enroll API's reasons, or a 422's fields).
function enrollResults(files, results) {
  return files.map((file, index) => {
    const result = results.find((r) => r.index === index);
    const text = result.accepted ? `${file.name}: accepted` : `${file.name}: rejected — ${result.code}: ${result.detail}`;
    return el("li", { className: result.accepted ? "accepted" : "rejected", textContent: text });
  });
}

async function enroll() {
  const files = [...$("#enroll-files").files];
  const form = new FormData();
  files.forEach((file) => form.append("images", file, file.name));
  let results;
  try {
    const answer = await api.upload(gallery(`/subjects/${encodeURIComponent(current.id)}/faces`), form);
    results = answer.results.map((r) => ({ index: r.index, accepted: r.accepted, ...(r.rejection || {}) }));
  } catch (error) {
    if (error.code !== "no_face_accepted") throw error;
    // Nothing enrolled: the problem's errors name each image ("images[2]") and why it was refused.
    results = files.map((_, index) => {
      const refusal = error.errors.find((e) => e.field === `images[${index}]`) || { code: "rejected", reason: error.message };
      return { index, accepted: false, code: refusal.code, detail: refusal.reason };
    });
  }
  $("#enroll-files").value = "";
  await showSubject(current.id, { keepResults: true });
  $("#enroll-results").replaceChildren(...enrollResults(files, results));
}

export function setupSubjects() {
  onAction($("#search-form"), "submit", $("#subjects-error"), async () => {
    Object.assign(listing, { prefix: $("#search").value.trim(), cursors: [null], page: 0 });
    await showSubjects();
  });
  onAction($("#next-page"), "click", $("#subjects-error"), async () => {
    listing.page += 1;
    await showSubjects();
  });
  onAction($("#prev-page"), "click", $("#subjects-error"), async () => {
    listing.page -= 1;
    await showSubjects();
  });
  onAction($("#create-form"), "submit", $("#subjects-error"), async () => {
    const created = await api.post(gallery("/subjects"), { name: $("#create-name").value.trim() });
    $("#create-name").value = "";
    location.hash = `#/subjects/${encodeURIComponent(created.id)}`;
  });
  const errors = $("#subject-error");
  onAction($("#rename-form"), "submit", errors, async () => {
    await api.patch(gallery(`/subjects/${encodeURIComponent(current.id)}`), { name: $("#rename-name").value.trim() });
    await showSubject(current.id);
  });
  onAction($("#metadata-form"), "submit", errors, async () => {
    let metadata;
    try {
      metadata = JSON.parse($("#metadata").value || "{}");
    } catch (error) {
      throw new Error(`metadata is not valid JSON: ${error.message}`);
    }
    if (metadata === null || typeof metadata !== "object" || Array.isArray(metadata)) {
      throw new Error("metadata must be a JSON object ({...})");
    }
    await api.patch(gallery(`/subjects/${encodeURIComponent(current.id)}`), { metadata });
    await showSubject(current.id);
  });
  onAction($("#enroll-form"), "submit", errors, enroll);
  onAction($("#merge-form"), "submit", errors, async () => {
    const select = $("#merge-into");
    const target = select.selectedOptions[0];
    if (!select.value || !confirm(`Merge “${current.name}” into ${target.textContent}? This subject is then deleted.`)) return;
    const merged = await api.post(gallery(`/subjects/${encodeURIComponent(current.id)}/merge`), { into: select.value });
    location.hash = `#/subjects/${encodeURIComponent(merged.id)}`;
  });
  onAction($("#delete-subject"), "click", errors, async () => {
    if (!confirm(`Delete “${current.name}” and all its faces?`)) return;
    await api.remove(gallery(`/subjects/${encodeURIComponent(current.id)}`));
    location.hash = "#/subjects";
  });
}
