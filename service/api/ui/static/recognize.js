// Identify (a photo, or a webcam frame when the browser offers one) and verify two photos. The
// photos go to this service only; they are shown from blob: URLs with the answer's boxes over them.

import { api, gallery, track } from "./api.js";
import { $, el, onAction } from "./dom.js";

let stream = null; // the webcam, while it is on

// Boxes are in the image's pixels: placed in percent, they follow the <img> however it is scaled.
function drawBoxes(figure, img, boxes) {
  figure.querySelectorAll(".box").forEach((box) => box.remove());
  const [w, h] = [img.naturalWidth, img.naturalHeight];
  for (const { box, label, unknown } of boxes) {
    const node = el("div", { className: unknown ? "box unknown" : "box" }, el("span", { textContent: label }));
    Object.assign(node.style, {
      left: `${(100 * box.x1) / w}%`, top: `${(100 * box.y1) / h}%`,
      width: `${(100 * (box.x2 - box.x1)) / w}%`, height: `${(100 * (box.y2 - box.y1)) / h}%`,
    });
    figure.append(node);
  }
}

async function showPhoto(figure, img, blob) {
  img.src = track(URL.createObjectURL(blob));
  await img.decode();
  figure.hidden = false;
}

const similarity = (value) => value.toFixed(3);

async function identify(blob, filename) {
  const form = new FormData();
  form.append("image", blob, filename);
  const threshold = $("#identify-threshold").value.trim();
  if (threshold) form.append("threshold", threshold);
  const answer = await api.upload(gallery("/identify"), form);
  const figure = $("#identify-result");
  await showPhoto(figure, $("#identify-photo"), blob);
  const boxes = answer.faces.map((face) => {
    const best = face.candidates[0];
    return { box: face.box, unknown: face.unknown, label: best ? `${best.name} ${similarity(best.similarity)}` : "unknown" };
  });
  drawBoxes(figure, $("#identify-photo"), boxes);
  const t = answer.threshold;
  $("#identify-caption").textContent = `threshold ${t.name} = ${similarity(t.value)} · ${answer.faces.length} face(s)`;
  $("#identify-list").replaceChildren(...answer.faces.map((face, i) => {
    const names = face.candidates.map((c) => `${c.name} (${similarity(c.similarity)})`).join(", ");
    const text = `Face ${i + 1}: ${face.unknown ? `unknown — no subject reached ${similarity(t.value)}` : names}`;
    return el("li", { className: face.unknown ? "rejected" : "accepted", textContent: text });
  }));
}

async function verify() {
  const [a, b] = [$("#verify-a").files[0], $("#verify-b").files[0]];
  const form = new FormData();
  form.append("image_a", a, a.name);
  form.append("image_b", b, b.name);
  const answer = await api.upload(gallery("/verify"), form);
  const t = answer.threshold;
  const sign = answer.match ? "≥" : "<";
  $("#verify-verdict").textContent = `${answer.match ? "Same person" : "Different people"}: similarity ` +
    `${similarity(answer.similarity)} ${sign} threshold ${t.name} = ${similarity(t.value)}`;
  $("#verify-verdict").className = `verdict ${answer.match ? "accepted" : "rejected"}`;
  for (const [side, file, face] of [["a", a, answer.face_a], ["b", b, answer.face_b]]) {
    const figure = $(`#verify-fig-${side}`);
    const img = $(`#verify-photo-${side}`);
    await showPhoto(figure, img, file);
    drawBoxes(figure, img, [{ box: face.box, label: `face ${face.face_index + 1} of ${face.faces_in_image}`, unknown: !answer.match }]);
  }
}

// Another collection: answers from the previous one's gallery are not left on show.
export function clearResults() {
  $("#identify-result").hidden = $("#verify-fig-a").hidden = $("#verify-fig-b").hidden = true;
  $("#identify-list").replaceChildren();
  $("#verify-verdict").textContent = "";
}

export function stopCamera() {
  if (stream) stream.getTracks().forEach((t) => t.stop());
  stream = null;
  $("#camera").hidden = $("#camera-shot").hidden = true;
}

function webcamFrame() {
  const video = $("#camera");
  const canvas = el("canvas", { width: video.videoWidth, height: video.videoHeight });
  canvas.getContext("2d").drawImage(video, 0, 0);
  return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}

export function setupRecognition() {
  const errors = $("#identify-error");
  onAction($("#identify-form"), "submit", errors, async () => {
    const file = $("#identify-file").files[0];
    if (!file) throw new Error("choose a photo first");
    await identify(file, file.name);
  });
  onAction($("#verify-form"), "submit", $("#verify-error"), verify);
  if (!navigator.mediaDevices?.getUserMedia) return; // no webcam offered (e.g. not a secure context)
  $("#camera-start").hidden = false;
  onAction($("#camera-start"), "click", errors, async () => {
    stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
    $("#camera").srcObject = stream;
    $("#camera").hidden = $("#camera-shot").hidden = false;
  });
  onAction($("#camera-shot"), "click", errors, async () => identify(await webcamFrame(), "webcam.png"));
}
