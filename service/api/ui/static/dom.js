// Small DOM helpers. Text always goes in as textContent: names and metadata never become markup.

export const $ = (selector) => document.querySelector(selector);

export function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

// A refusal as its detail plus one line per field the API named (e.g. "images[1]: no face found").
export function showError(target, error) {
  const lines = [error.message, ...(error.errors || []).map((e) => `${e.field}: ${e.reason}`)];
  target.textContent = lines.join("\n");
}

export function clearError(target) {
  target.textContent = "";
}

// Runs an action from a form or button: default prevented, a form's submit button disabled
// meanwhile (a button's own state is the action's: the pager disables itself), any refusal shown
// in `errorTarget`.
export function onAction(node, event, errorTarget, action) {
  node.addEventListener(event, async (e) => {
    e.preventDefault();
    const button = node.tagName === "FORM" ? node.querySelector("button[type=submit]") : null;
    clearError(errorTarget);
    if (button) button.disabled = true;
    try {
      await action(e);
    } catch (error) {
      showError(errorTarget, error);
    } finally {
      if (button) button.disabled = false;
    }
  });
}
