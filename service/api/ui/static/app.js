// Entry point: sign-in, the caller's scopes, and the hash routes (#/subjects, #/subjects/<id>,
// #/identify, #/verify, #/info).

import { api, caller, releaseViewUrls, session } from "./api.js";
import { $, clearError, onAction, showError } from "./dom.js";
import { showInfo } from "./info.js";
import { setupRecognition, stopCamera } from "./recognize.js";
import { setupSubjects, showSubject, showSubjects } from "./subjects.js";

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
  caller.id = me.id;
  caller.canEnroll = me.scopes.includes("enroll") || me.scopes.includes("admin");
  $("#who-name").textContent = `${me.name || me.id} (${me.scopes.join(", ")})`;
  document.querySelectorAll(".needs-enroll").forEach((node) => (node.hidden = !caller.canEnroll));
}

function signedOut(error) {
  session.signOut();
  caller.id = null;
  $("#nav").hidden = $("#who").hidden = true;
  showView("sign-in");
  if (error) showError($("#sign-in-error"), error);
}

async function route() {
  releaseViewUrls();
  stopCamera();
  if (!session.key()) return signedOut();
  try {
    if (!caller.id) await loadCaller();
    $("#nav").hidden = $("#who").hidden = false;
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

setupSubjects();
setupRecognition();
window.addEventListener("hashchange", route);
route();
