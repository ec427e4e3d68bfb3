// p2psync dashboard: plain JS, no build step. State arrives as server-sent
// events (/api/v0/events); recipes are read and written through /api/v0/recipes.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);

  const view = {
    me: null,
    digest: null,
    recipes: [],
    filter: "all",
    query: "",
    items: new Map(), // recipe id -> {li, json}
    editing: new Set(),
    firstLoad: true,
    loading: false,
    reloadWanted: false,
  };
  const MAX_SHOWN = 300;

  // ---------------------------------------------------------------- helpers

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key === "on") for (const [ev, fn] of Object.entries(value)) node.addEventListener(ev, fn);
      else if (key === "data") for (const [k, v] of Object.entries(value)) node.dataset[k] = v;
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const fmt = (n) => (typeof n === "number" ? Math.round(n).toLocaleString() : "–");
  const shortId = (id) => (id && id.length > 18 ? `${id.slice(0, 10)}…${id.slice(-6)}` : id || "");
  const pct = (held, known) => (known > 0 ? Math.min(100, (100 * held) / known) : 100);

  function ago(iso) {
    if (!iso) return "never";
    const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    if (seconds < 5) return "just now";
    if (seconds < 60) return `${Math.floor(seconds)} s ago`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
    if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
    return new Date(iso).toLocaleString();
  }

  function setText(node, text) {
    if (node.textContent !== text) {
      node.textContent = text;
      node.classList.remove("flash");
      void node.offsetWidth; // restart the animation
      node.classList.add("flash");
    }
  }

  let toastTimer = null;
  function toast(message, isError) {
    const box = $("toast");
    box.textContent = message;
    box.className = `toast show${isError ? " error" : ""}`;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { box.className = "toast"; }, isError ? 5000 : 2200);
  }

  async function api(method, path, body) {
    const init = { method, headers: {} };
    if (body !== undefined) {
      init.headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    if (response.status === 204) return null;
    let data = null;
    try { data = await response.json(); } catch (_) { /* no body */ }
    if (!response.ok) throw new Error((data && data.error) || `HTTP ${response.status}`);
    return data;
  }

  // ---------------------------------------------------------------- state

  function applyState(state) {
    const s = state.status;
    view.me = s.peer_id;
    $("peer-id").textContent = s.peer_id;
    $("peer-id").title = s.peer_id;
    $("network").textContent = s.network;
    $("profile").textContent = s.profile || s.data_dir;
    $("profile").title = s.data_dir;
    setText($("stat-peers"), fmt(s.peers));
    setText($("stat-entries"), fmt(s.entries));
    setText($("stat-recipes"), fmt(s.recipes));
    setText($("stat-digest"), s.digest);
    renderPeers(state.peers, state.progress.peers);
    renderProgress(state.progress);
    renderCounters(state.counters, s);
    if (s.digest !== view.digest) {
      view.digest = s.digest;
      loadRecipes();
    }
  }

  function stateBadge(state) {
    const kind = { connected: "ok", connecting: "warn", backing_off: "warn", failed: "bad" }[state] || "";
    return el("span", { class: `badge ${kind}`, text: state.replace("_", " ") });
  }

  function renderPeers(peers, holdings) {
    const body = $("peers");
    body.replaceChildren();
    const connected = peers.filter((p) => p.connected).length;
    $("peers-note").textContent = `${connected} connected · ${peers.length} known`;
    if (!peers.length) {
      body.append(el("tr", {}, el("td", { class: "empty", colspan: "6", text: "No peers yet" })));
      return;
    }
    const order = { connected: 0, connecting: 1, backing_off: 2, known: 3, failed: 4 };
    peers = [...peers].sort((a, b) => (order[a.state] ?? 9) - (order[b.state] ?? 9) || a.peer_id.localeCompare(b.peer_id));
    for (const peer of peers) {
      const holds = holdings[peer.peer_id];
      const avg = peer.avg_sync_ms === null ? "" : `avg ${peer.avg_sync_ms.toFixed(0)} ms`;
      body.append(
        el("tr", { data: { peer: peer.peer_id } },
          el("td", { title: [peer.peer_id, ...peer.addrs].join("\n") },
            el("code", { text: shortId(peer.peer_id) }),
            peer.relayed ? el("span", { class: "badge accent", text: "relayed" }) : null,
            el("div", { class: "sub", text: peer.addrs[0] || "" })),
          el("td", {}, el("span", { class: "badge accent", text: peer.source })),
          el("td", {}, stateBadge(peer.state)),
          el("td", {}, el("span", { text: `${peer.syncs_ok} ok` }),
            peer.syncs_failed ? el("span", { class: "sub", text: ` · ${peer.syncs_failed} failed` }) : null),
          el("td", { title: peer.last_sync || "" }, ago(peer.last_sync), el("div", { class: "sub", text: avg })),
          el("td", {}, holds ? `${pct(holds.held, holds.known).toFixed(0)} %` : "–",
            holds ? el("div", { class: "sub", text: `${fmt(holds.held)}/${fmt(holds.known)}` }) : null),
        ),
      );
    }
  }

  function bar(held, known, big) {
    const fill = el("div", { class: "fill" });
    const p = pct(held, known);
    fill.style.width = `${p}%`;
    if (held >= known) fill.classList.add("done");
    return el("div", { class: `bar${big ? " big" : ""}` }, fill);
  }

  function renderProgress(progress) {
    const overall = $("overall-fill");
    const p = pct(progress.held_total, progress.known_total);
    overall.style.width = `${p}%`;
    overall.classList.toggle("done", progress.held_total >= progress.known_total);
    $("overall-text").textContent =
      `${fmt(progress.held_total)} of ${fmt(progress.known_total)} entries held (${p.toFixed(1)} %)`;
    $("progress-note").textContent = `${progress.origins_total} origin${progress.origins_total === 1 ? "" : "s"}`;
    const list = $("origins");
    const rows = progress.origins.map((o) =>
      el("li", { data: { origin: o.origin } },
        el("div", { class: "origin-head" },
          el("span", {},
            el("code", { title: o.origin, text: shortId(o.origin) }), " ",
            o.origin === view.me ? el("span", { class: "badge accent", text: "you" }) : null,
            o.forked_at !== null && o.forked_at !== undefined
              ? el("span", { class: "badge bad", text: `forked at ${o.forked_at}` }) : null),
          el("span", { class: "origin-count", text: `${fmt(o.held)} / ${fmt(o.known)}` })),
        bar(o.held, o.known)));
    if (!rows.length) rows.push(el("li", { class: "empty", text: "No entries yet" }));
    if (progress.origins_total > progress.origins.length) {
      rows.push(el("li", { class: "note", text: `and ${progress.origins_total - progress.origins.length} more origins` }));
    }
    // Keep the bars' elements when the list keeps its shape, so widths animate.
    const same = list.children.length === rows.length &&
      rows.every((row, i) => list.children[i].dataset.origin === row.dataset.origin);
    if (!same) { list.replaceChildren(...rows); return; }
    rows.forEach((row, i) => {
      const old = list.children[i];
      if (!row.dataset.origin) return;
      old.querySelector(".origin-head").replaceWith(row.querySelector(".origin-head"));
      const fill = old.querySelector(".fill");
      const next = row.querySelector(".fill");
      fill.style.width = next.style.width;
      fill.classList.toggle("done", next.classList.contains("done"));
    });
  }

  const COUNTER_LABELS = [
    ["entries_applied", "entries applied"],
    ["live_ops_received", "live ops received"],
    ["backfill_entries_received", "backfill entries"],
    ["sync_rounds_ok", "sync rounds ok"],
    ["sync_rounds_failed", "sync rounds failed"],
    ["entries_rejected", "entries rejected"],
    ["messages_dropped", "messages dropped"],
    ["forks_detected", "forks detected"],
  ];

  function renderCounters(counters, status) {
    const rows = COUNTER_LABELS.map(([key, label]) =>
      el("div", {}, el("dt", { text: label }), el("dd", { data: { counter: key }, text: fmt(counters[key]) })));
    if (status.store_bytes !== null && status.store_bytes !== undefined) {
      const mib = (status.store_bytes / 1048576).toFixed(1);
      const limit = status.max_store_bytes ? ` / ${(status.max_store_bytes / 1048576).toFixed(0)}` : "";
      rows.push(el("div", {}, el("dt", { text: "store MiB" }),
        el("dd", { class: status.store_budget_hit ? "badge bad" : "", text: `${mib}${limit}` })));
    }
    $("counters").replaceChildren(...rows);
  }

  // ---------------------------------------------------------------- recipes

  async function loadRecipes() {
    if (view.loading) { view.reloadWanted = true; return; }
    view.loading = true;
    try {
      do {
        view.reloadWanted = false;
        view.recipes = await api("GET", "/api/v0/recipes");
        renderRecipes();
      } while (view.reloadWanted);
    } catch (err) {
      toast(`could not load recipes: ${err.message}`, true);
    } finally {
      view.loading = false;
    }
  }

  function matches(recipe) {
    if (view.filter === "mine" && recipe.author !== view.me) return false;
    if (view.filter === "published" && !recipe.published) return false;
    if (!view.query) return true;
    const haystack = `${recipe.name}\n${recipe.ingredients}\n${recipe.instructions}\n${recipe.id}`.toLowerCase();
    return view.query.split(/\s+/).every((word) => haystack.includes(word));
  }

  function renderRecipes() {
    const list = $("recipes");
    const all = view.recipes.filter(matches)
      .sort((a, b) => b.updated - a.updated || a.name.localeCompare(b.name));
    const shown = all.slice(0, MAX_SHOWN);
    const total = view.recipes.length;
    $("recipes-note").textContent = all.length === total
      ? `${total} recipe${total === 1 ? "" : "s"}`
      : `${all.length} of ${total} recipes match`;
    if (all.length > shown.length) $("recipes-note").textContent += ` · showing the newest ${shown.length}`;
    const keep = new Set(shown.map((r) => r.id));
    for (const [id, item] of view.items) {
      if (!keep.has(id)) { item.li.remove(); view.items.delete(id); view.editing.delete(id); }
    }
    shown.forEach((recipe, index) => {
      const json = JSON.stringify(recipe);
      let item = view.items.get(recipe.id);
      if (!item) {
        item = { li: el("li", { class: "recipe", data: { recipeId: recipe.id } }), json: "" };
        view.items.set(recipe.id, item);
      }
      if (item.json !== json) {
        const changed = item.json !== "" || !view.firstLoad;
        item.json = json;
        fillRecipe(item.li, recipe);
        if (changed) {
          item.li.classList.add("fresh");
          setTimeout(() => item.li.classList.remove("fresh"), 1200);
        }
      }
      if (list.children[index] !== item.li) list.insertBefore(item.li, list.children[index] || null);
    });
    if (!shown.length && !list.querySelector(".empty")) {
      list.append(el("li", { class: "empty", text: total ? "No recipe matches" : "No recipes yet: create one above" }));
    } else if (shown.length) {
      list.querySelectorAll(".empty").forEach((n) => n.remove());
    }
    view.firstLoad = false;
  }

  function fillRecipe(li, recipe) {
    const mine = recipe.author === view.me;
    li.classList.toggle("mine", mine);
    const actions = mine ? el("div", { class: "actions" },
      el("button", { type: "button", class: "btn edit-btn", text: "Edit", on: { click: () => openEdit(li, recipe.id) } }),
      recipe.published
        ? el("button", { type: "button", class: "btn unpublish-btn", text: "Unpublish", on: { click: (e) => act(e.target, "POST", `/api/v0/recipes/${recipe.id}/unpublish`, "Unpublished") } })
        : el("button", { type: "button", class: "btn publish-btn", text: "Publish", on: { click: (e) => act(e.target, "POST", `/api/v0/recipes/${recipe.id}/publish`, "Published") } }),
      el("button", { type: "button", class: "btn danger delete-btn", text: "Delete", on: { click: (e) => confirmDelete(e.target, recipe.id) } }),
    ) : null;
    const viewPart = el("div", { class: "recipe-view" },
      el("div", { class: "recipe-top" },
        el("div", {},
          el("div", { class: "recipe-name", text: recipe.name }),
          el("div", { class: "recipe-meta" },
            el("span", { class: `badge ${recipe.published ? "ok" : ""} published-badge`, text: recipe.published ? "published" : "draft" }),
            mine ? el("span", { class: "badge accent", text: "yours" })
              : el("span", { title: recipe.author, text: `by ${shortId(recipe.author)}` }),
            el("code", { title: "recipe id", text: recipe.id }))),
        actions),
      el("div", { class: "recipe-body" },
        el("div", {}, el("h3", { text: "Ingredients" }), el("p", { class: "recipe-ingredients", text: recipe.ingredients || "—" })),
        el("div", {}, el("h3", { text: "Instructions" }), el("p", { class: "recipe-instructions", text: recipe.instructions || "—" }))));
    const old = li.querySelector(".recipe-view");
    if (old) old.replaceWith(viewPart); else li.prepend(viewPart);
    const form = li.querySelector(".edit");
    if (form && !mine) form.remove();
  }

  function openEdit(li, id) {
    if (li.querySelector(".edit")) return;
    const recipe = view.recipes.find((r) => r.id === id);
    if (!recipe) return;
    const name = el("input", { class: "edit-name", maxlength: "200", value: recipe.name, "aria-label": "name" });
    const ingredients = el("textarea", { class: "edit-ingredients", rows: "2", "aria-label": "ingredients" });
    ingredients.value = recipe.ingredients;
    const instructions = el("textarea", { class: "edit-instructions", rows: "3", "aria-label": "instructions" });
    instructions.value = recipe.instructions;
    const form = el("form", { class: "edit" }, name, ingredients, instructions,
      el("div", { class: "actions" },
        el("button", { type: "button", class: "btn cancel-btn", text: "Cancel", on: { click: () => { form.remove(); view.editing.delete(id); } } }),
        el("button", { type: "submit", class: "btn primary save-btn", text: "Save" })));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const current = view.recipes.find((r) => r.id === id) || recipe;
      const changes = {};
      if (name.value !== current.name) changes.name = name.value;
      if (ingredients.value !== current.ingredients) changes.ingredients = ingredients.value;
      if (instructions.value !== current.instructions) changes.instructions = instructions.value;
      if (!Object.keys(changes).length) { form.remove(); view.editing.delete(id); return; }
      const ok = await act(form.querySelector(".save-btn"), "PATCH", `/api/v0/recipes/${id}`, "Saved", changes);
      if (ok) { form.remove(); view.editing.delete(id); }
    });
    view.editing.add(id);
    li.append(form);
    name.focus();
  }

  function confirmDelete(button, id) {
    if (button.classList.contains("confirm")) {
      act(button, "DELETE", `/api/v0/recipes/${id}`, "Deleted");
      return;
    }
    button.classList.add("confirm", "confirm-delete-btn");
    button.textContent = "Really delete?";
    setTimeout(() => {
      if (!button.isConnected) return;
      button.classList.remove("confirm", "confirm-delete-btn");
      button.textContent = "Delete";
    }, 4000);
  }

  async function act(button, method, path, done, body) {
    button.disabled = true;
    try {
      await api(method, path, body);
      toast(done);
      loadRecipes();
      return true;
    } catch (err) {
      toast(err.message, true);
      return false;
    } finally {
      button.disabled = false;
    }
  }

  // ---------------------------------------------------------------- wiring

  function wire() {
    $("create-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const form = event.target;
      const body = {
        name: $("new-name").value,
        ingredients: $("new-ingredients").value,
        instructions: $("new-instructions").value,
      };
      if (await act($("create-btn"), "POST", "/api/v0/recipes", "Created", body)) form.reset();
    });
    $("search").addEventListener("input", (event) => {
      view.query = event.target.value.trim().toLowerCase();
      renderRecipes();
    });
    for (const button of document.querySelectorAll(".seg-btn")) {
      button.addEventListener("click", () => {
        document.querySelectorAll(".seg-btn").forEach((b) => b.classList.toggle("active", b === button));
        view.filter = button.dataset.filter;
        renderRecipes();
      });
    }
  }

  function connect() {
    const live = $("live");
    const events = new EventSource("/api/v0/events");
    events.addEventListener("state", (event) => applyState(JSON.parse(event.data)));
    events.addEventListener("open", () => {
      live.className = "live on";
      $("live-text").textContent = "live";
    });
    events.addEventListener("error", () => {
      live.className = "live off";
      $("live-text").textContent = "reconnecting";
    });
  }

  wire();
  connect();
})();
