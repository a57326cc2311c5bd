// The service page: pack, thresholds, index and gallery size (GET /v1/info: the default
// collection's), and every collection the key may use with its pack and counts (GET /v1/collections).

import { api, caller } from "./api.js";
import { $, el } from "./dom.js";

const cells = (...texts) => texts.map((text) => el("td", { textContent: String(text) }));

async function showCollections() {
  const { collections } = await api.get("/v1/collections");
  $("#info-collections tbody").replaceChildren(...collections.map((c) => el(
    "tr", { className: c.name === caller.collection ? "current" : "" },
    ...cells(c.name, c.pack_id, c.embedding_size, `${c.threshold.name} = ${c.threshold.value.toFixed(4)}`, c.subjects, c.faces),
  )));
}

export async function showInfo() {
  await showCollections();
  const mayUseDefault = caller.collections.some((c) => c.name === "default");
  $("#info-points").hidden = $("#info-points-title").hidden = !mayUseDefault;
  if (!mayUseDefault) { // GET /v1/info would be refused: it is about the default collection
    const note = "GET /v1/info describes the default collection, which this key may not use";
    $("#info-facts").replaceChildren(el("dt", { textContent: "service" }), el("dd", { textContent: note }));
    return;
  }
  const info = await api.get("/v1/info");
  const gallery = info.gallery;
  const facts = [
    ...(caller.collections.length > 1 ? [["collection", "default (every collection: the table below)"]] : []),
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
    el("tr", {}, ...cells(name, point.threshold.toFixed(4), point.far ?? "—", point.source)),
  );
  $("#info-points tbody").replaceChildren(...rows);
}
