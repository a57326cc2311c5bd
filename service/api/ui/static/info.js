// The service page: pack, thresholds, index and gallery size (GET /v1/info).

import { api } from "./api.js";
import { $, el } from "./dom.js";

export async function showInfo() {
  const info = await api.get("/v1/info");
  const gallery = info.gallery;
  const facts = [
    ["pack", `${info.pack_id} — ${info.pack_description}`],
    ["embedding", `${info.embedding_size} floats from ${info.embedder_input_size.join("×")} chips` +
      (info.flip_augmentation ? ", flip TTA" : "")],
    ["providers", Object.entries(info.providers).map(([role, list]) => `${role}: ${list.join(", ")}`).join("; ")],
    ["threshold", `${info.threshold.name} = ${info.threshold.value.toFixed(4)} (used when a request names none)`],
    ["subject score", info.subject_score],
    ["gallery", `${gallery.subjects} subject(s), ${gallery.faces} face(s)`],
    ["index", `${gallery.index_type} on ${gallery.backend}`],
    ["authentication", info.auth_enabled ? "on" : "off"],
  ];
  if (gallery.replication) {
    facts.push(["replication", `${gallery.replication.lag_changes} changes behind (${gallery.replication.lag_s} s)`]);
  }
  $("#info-facts").replaceChildren(...facts.flatMap(([name, value]) => [el("dt", { textContent: name }), el("dd", { textContent: value })]));
  const rows = Object.entries(info.operating_points).map(([name, point]) =>
    el("tr", {}, ...[name, point.threshold.toFixed(4), point.far ?? "—", point.source].map((text) => el("td", { textContent: String(text) }))),
  );
  $("#info-points tbody").replaceChildren(...rows);
}
