// Entry point: sign-in, the caller's scopes and collections, and the hash routes (#/subjects,
// #/subjects/<id>, #/identify, #/verify, #/info).

import { api, caller, releaseViewUrls, session } from "./api.js";
import { $, clearError, el, onAction, showError } from "./dom.js";
import { showInfo } from "./info.js";
import { clearResults, setupRecognition, stopCamera } from "./recognize.js";
import { resetListing, setupSubjects, showSubject, showSubjects } from "./subjects.js";

const ROUTES = {
  subjects: (id) => (id ? showSubject(id) : showSubjects()),
  identify: async () => {},
  verify: async () => {},
  info: showInfo,
};

function showView(name) {
  document.querySelectorAll(".view").forEach((view) => (view.hidden = view.id !== `view-${name}`));
  document.querySelectorAll("#nav a").forEach((link) => {
    link.classList.toggle("active", link.getAttribute("href") === `#/${name}`);
  });
}

// Who the key is, once per sign-in: what it may not do is not offered.
async function loadCaller() {
  const me = await api.get("/v1/keys/me");
  const canRead = me.scopes.includes("read") || me.scopes.includes("admin");
  // The collections this key may use (GET /v1/collections lists only those; it needs `read`).
  const listed = canRead ? (await api.get("/v1/collections")).collections : [];
  caller.collections = listed.length ? listed : (me.collections || ["default"]).map((name) => ({ name }));
  caller.id = me.id;
  caller.canEnroll = me.scopes.includes("enroll") || me.scopes.includes("admin");
  const limited = me.collections ? ` · ${me.collections.join(", ")}` : "";
  $("#who-name").textContent = `${me.name || me.id} (${me.scopes.join(", ")})${limited}`;
  document.querySelectorAll(".needs-enroll").forEach((node) => (node.hidden = !caller.canEnroll));
  // The tab's last choice when the key may still use it, else default, else the key's first one:
  // a key limited to other collections never starts on a gallery it is refused.
  const names = caller.collections.map((c) => c.name);
  const stored = session.collection();
  useCollection(names.includes(stored) ? stored : names.includes("default") ? "default" : names[0]);
  $("#collection").replaceChildren(...names.map((name) => el("option", { value: name, textContent: name })));
  $("#collection").value = caller.collection;
  $("#collection-label").hidden = names.length < 2;
}

function useCollection(name) {
  caller.collection = name;
  session.chooseCollection(name);
  const chosen = caller.collections.find((c) => c.name === name);
  $("#collection-pack").textContent = chosen?.pack_id ? `pack ${chosen.pack_id}` : "";
}

function signedOut(error) {
  session.signOut();
  caller.id = null;
  $("#nav").hidden = $("#who").hidden = $("#collection-bar").hidden = true;
  showView("sign-in");
  if (error) showError($("#sign-in-error"), error);
}

async function route() {
  releaseViewUrls();
  stopCamera();
  if (!session.key()) return signedOut();
  try {
    if (!caller.id) await loadCaller();
    $("#nav").hidden = $("#who").hidden = $("#collection-bar").hidden = false;
    const [name, id] = location.hash.replace(/^#\/?/, "").split("/");
    const view = ROUTES[name] ? name : "subjects";
    showView(view === "subjects" && id ? "subject" : view);
    await ROUTES[view](id && decodeURIComponent(id));
  } catch (error) {
    if (error.status === 401) return signedOut(error); // a revoked or mistyped key
    const view = document.querySelector(".view:not([hidden]) .error");
    showError(view || $("#sign-in-error"), error);
  }
}

onAction($("#sign-in-form"), "submit", $("#sign-in-error"), async () => {
  session.signIn($("#api-key").value.trim());
  $("#api-key").value = "";
  clearError($("#sign-in-error"));
  await route();
});
$("#sign-out").addEventListener("click", () => {
  signedOut();
  location.hash = "";
});

// Another collection is another gallery: the current view again, for it. A subject page goes back
// to the list (that subject is not in this gallery); searches and answers from the previous one go.
$("#collection").addEventListener("change", () => {
  useCollection($("#collection").value);
  resetListing();
  clearResults();
  if (/^#\/?subjects\/./.test(location.hash)) location.hash = "#/subjects";
  else route();
});

setupSubjects();
setupRecognition();
window.addEventListener("hashchange", route);
route();
